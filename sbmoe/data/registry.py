"""Dataset names -> folders on disk, downloading the official BEIR zip when a name is nowhere local.

Lookup order for a name: an existing directory path as given, then the data roots of ``roots.py``
(``$SBMOE_DATA``, ``./data``, ``../shared/data``, the download cache), then the official download.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import urllib.error
import urllib.request
import zipfile
from dataclasses import dataclass
from pathlib import Path

from .roots import cache_root, search_roots

BEIR_ZIP_URL = "https://public.ukp.informatik.tu-darmstadt.de/thakur/BEIR/datasets/{name}.zip"


class DatasetNotFoundError(FileNotFoundError):
    """A dataset name that is neither on disk nor downloadable."""


@dataclass(frozen=True)
class DatasetInfo:
    """What sbmoe knows about a dataset before opening it.

    ``drop_self_hits`` follows BEIR: in collections where queries are also documents (ArguAna, Quora,
    SciFact's shared id space) a hit whose id equals the query id is removed. Cranfield's query and
    document ids overlap by accident, so its hits are kept; CACM and the MS MARCO DL19 pool (query and
    passage ids are separate number spaces) keep theirs too.
    """

    name: str
    url: str | None
    drop_self_hits: bool = True
    default_split: str = "test"


def _beir(name: str, split: str = "test") -> DatasetInfo:
    return DatasetInfo(name=name, url=BEIR_ZIP_URL.format(name=name), default_split=split)


KNOWN_DATASETS: dict[str, DatasetInfo] = {
    info.name: info
    for info in [
        _beir("scifact"),
        _beir("nfcorpus"),
        _beir("arguana"),
        _beir("scidocs"),
        _beir("fiqa"),
        _beir("trec-covid"),
        _beir("webis-touche2020"),
        _beir("quora"),
        _beir("nq"),
        _beir("hotpotqa"),
        _beir("dbpedia-entity"),
        _beir("fever"),
        _beir("climate-fever"),
        _beir("msmarco", split="dev"),
        DatasetInfo(name="cranfield", url=None, drop_self_hits=False),
        DatasetInfo(name="cacm", url=None, drop_self_hits=False),
        DatasetInfo(name="msmarco-dl19-mini", url=None, drop_self_hits=False),
    ]
}


def dataset_info(name: str) -> DatasetInfo:
    """Registry entry for ``name``; unknown names get BEIR defaults and no download URL."""
    return KNOWN_DATASETS.get(name, DatasetInfo(name=name, url=None))


def _is_beir_folder(path: Path) -> bool:
    return (path / "corpus.jsonl").is_file()


def resolve_dataset(name_or_path: str | os.PathLike, download: bool = True) -> Path:
    """Return the folder holding ``corpus.jsonl`` for a dataset name or path."""
    direct = Path(name_or_path)
    if direct.is_dir():
        if not _is_beir_folder(direct):
            raise DatasetNotFoundError(f"{direct}: not a BEIR dataset folder (no corpus.jsonl)")
        return direct
    name = str(name_or_path)
    for root in search_roots():
        candidate = root / name
        if _is_beir_folder(candidate):
            return candidate
    info = dataset_info(name)
    looked = ", ".join(str(r) for r in search_roots())
    if not download or info.url is None:
        reason = "downloads disabled" if not download else "no official download for this name"
        raise DatasetNotFoundError(f"dataset {name!r} not found ({reason}); looked in: {looked}")
    return download_dataset(info, cache_root() / "datasets")


def download_dataset(info: DatasetInfo, dest_root: Path) -> Path:
    """Download and unpack ``info.url`` into ``dest_root/<name>``; atomic: a failed run leaves nothing."""
    assert info.url is not None
    dest_root.mkdir(parents=True, exist_ok=True)
    final = dest_root / info.name
    with tempfile.TemporaryDirectory(dir=dest_root, prefix=f".{info.name}-") as tmp:
        zip_path = Path(tmp) / f"{info.name}.zip"
        try:
            with urllib.request.urlopen(info.url, timeout=60) as response, open(zip_path, "wb") as out:
                shutil.copyfileobj(response, out, length=1 << 20)
        except (urllib.error.URLError, OSError) as exc:
            raise DatasetNotFoundError(
                f"dataset {info.name!r} is not on disk and downloading {info.url} failed: {exc}. "
                f"Offline? Put the BEIR folder under $SBMOE_DATA/{info.name} or ./data/{info.name}."
            ) from exc
        unpacked = Path(tmp) / "unpacked"
        try:
            with zipfile.ZipFile(zip_path) as archive:
                archive.extractall(unpacked)
        except zipfile.BadZipFile as exc:
            raise DatasetNotFoundError(f"{info.url}: downloaded file is not a zip archive") from exc
        folders = [p.parent for p in unpacked.rglob("corpus.jsonl")]
        if not folders:
            raise DatasetNotFoundError(f"{info.url}: archive has no corpus.jsonl")
        if final.exists():  # another process finished first
            return final
        folders[0].rename(final)
    return final
