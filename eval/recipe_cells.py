"""Storage of the recipe grid's cells (eval/sbmoe_recipe.py, eval/sbmoe_recipe_encoder.py): where a cell
lives, per-query tables packed against one query-id file per dataset, compact rendering, a commit per cell."""

from __future__ import annotations

import json
import re
import subprocess
import time
from pathlib import Path

from sbmoe.atomic import atomic_file, write_json

HERE = Path(__file__).resolve().parent
FT_LRS = (1e-6, 1e-5, 3e-5, 1e-4)  # tier E's fine-tuning lr search: cells E-ft@<lr>, seed 0


def ft_arm(lr: float) -> str:
    return f"ft@{lr:g}"


def pack(record: dict, out: Path) -> dict:
    """The cell with each per-query table as a list in the order of its dataset's query ids, which are
    written once to ``out/qids/<dataset>.json``: a SQuAD cell shrinks about fivefold. A table whose ids
    differ from that file's stays a dict."""
    for results in record.get("modes", {}).values():
        for name, result in results.items():
            table = result.get("per_query")
            if not isinstance(table, dict):
                continue
            qids, path = sorted(table), out / "qids" / f"{name}.json"
            if not path.exists():
                write_json(path, qids)
            if json.loads(path.read_text(encoding="utf-8")) == qids:
                result["per_query"] = [table[q] for q in qids]
    return record


def render(record: dict) -> str:
    """Pretty JSON with each list of numbers on one line (per-query tables, expert usage)."""
    text = json.dumps(record, indent=2)
    return re.sub(r"\[[-\d\s.,eE+]*\]", lambda m: json.dumps(json.loads(m.group(0))), text) + "\n"


def write_cell(path: Path, record: dict) -> None:
    with atomic_file(path, "w") as handle:
        handle.write(render(record))


def unpack(record: dict, out: Path) -> dict:
    """The inverse of ``pack``: every per-query table as {qid: nDCG@10}."""
    for results in record.get("modes", {}).values():
        for name, result in results.items():
            if isinstance(result.get("per_query"), list):
                qids = json.loads((out / "qids" / f"{name}.json").read_text(encoding="utf-8"))
                result["per_query"] = dict(zip(qids, result["per_query"], strict=True))
    return record


def pack_cells(out: Path) -> int:
    """Rewrite the cells not yet in packed, rendered form (each checked to unpack to what it held)."""
    count = 0
    for path in sorted((out / "cells").glob("*.json")):
        text = path.read_text(encoding="utf-8")
        record = unpack(json.loads(text), out)
        packed = pack(json.loads(json.dumps(record)), out)
        if unpack(json.loads(json.dumps(packed)), out) != record:
            raise SystemExit(f"{path}: packing does not round-trip")
        if render(packed) != text:
            write_cell(path, packed)
            count += 1
    return count


def cell_path(out: Path, encoder: str, train_set: str | None, arm: str, seed: int | None) -> Path:
    name = "__".join(p for p in (encoder, train_set, arm, None if seed is None else f"s{seed}") if p)
    return out / "cells" / f"{name}.json"


def commit(path: Path, message: str, tries: int = 10) -> None:
    """Commit one finished cell at once (only that file, whatever else is staged); retried while another
    process holds the git index."""
    for _ in range(tries):
        added = subprocess.run(["git", "add", "--", str(path)], cwd=HERE, capture_output=True)
        done = added.returncode == 0 and subprocess.run(["git", "commit", "-q", "-m", message, "--", str(path)],
                                                        cwd=HERE, capture_output=True).returncode == 0
        if done:
            return
        time.sleep(3)
    print(f"could not commit {path}; commit it by hand", flush=True)


def finish_cell(path: Path, record: dict, out: Path, minutes: float, commit_label: str | None) -> None:
    """Stamp a finished cell's minutes, write it packed, commit it when asked, print its in-domain nDCG@10."""
    record["minutes"] = round(minutes, 2)
    write_cell(path, pack(record, out))
    if commit_label is not None:
        commit(path, f"{commit_label}: {path.stem} ({minutes:.1f} min)")
    means = {m: round(next(iter(r.values()))["nDCG@10"], 4) for m, r in record["modes"].items()}
    print(f"{path.stem}: {minutes:.1f} min, in-domain nDCG@10 {means}", flush=True)
