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

    ``drop_self_hits``: whether a hit whose id equals the query id is removed (BEIR's
    ``ignore_identical_ids``). True where the queries are documents of the corpus (ArguAna, Quora, and
    SCIDOCS, whose queries are papers of the corpus's id space); False where query and document ids are
    separate spaces, including Cranfield, whose small integer ids coincide by accident, so a relevant
    document whose id equals the query id must stay. None (a collection sbmoe does not know): decided
    from the data by ``self_hits.decide_self_hits`` when the queries are loaded.
    """

    name: str
    url: str | None
    drop_self_hits: bool | None = None
    default_split: str = "test"


def _beir(name: str, drop_self_hits: bool, split: str = "test") -> DatasetInfo:
    return DatasetInfo(name=name, url=BEIR_ZIP_URL.format(name=name), drop_self_hits=drop_self_hits,
                       default_split=split)


KNOWN_DATASETS: dict[str, DatasetInfo] = {
    info.name: info
    for info in [
        _beir("scifact", False),  # claim ids vs abstract ids: no id is both (checked on the shared copy)
        _beir("nfcorpus", False),  # PLAIN-* queries, MED-* documents
        _beir("arguana", True),  # every query is an argument of the corpus, under its own id
        _beir("scidocs", True),
        _beir("fiqa", False),  # question and answer numbers are separate spaces
        _beir("trec-covid", False),
        _beir("webis-touche2020", False),
        _beir("quora", True),  # questions are corpus entries under their own id
        _beir("nq", False),
        _beir("hotpotqa", False),
        _beir("dbpedia-entity", False),
        _beir("fever", False),
        _beir("climate-fever", False),
        _beir("msmarco", False, split="dev"),  # query and passage numbers are separate spaces
        DatasetInfo(name="cranfield", url=None, drop_self_hits=False),
        DatasetInfo(name="cacm", url=None, drop_self_hits=False),
        DatasetInfo(name="msmarco-dl19-mini", url=None, drop_self_hits=False),
    ]
}


def dataset_info(name: str) -> DatasetInfo:
    """Registry entry for ``name``; an unknown name gets no download URL and self-hits decided from its data."""
    return KNOWN_DATASETS.get(name, DatasetInfo(name=name, url=None))


def _is_beir_folder(path: Path) -> bool:
    return (path / "corpus.jsonl").is_file()


def local_datasets(split: str | None = None) -> list[str]:
    """Names of the BEIR folders under the data roots with qrels for ``split`` (default: each one's own
    split), sorted; a name found under several roots counts once, as ``resolve_dataset`` reads the first."""
    names: set[str] = set()
    for root in search_roots():
        if not root.is_dir():
            continue
        for folder in root.iterdir():
            qrels = folder / "qrels" / f"{split or dataset_info(folder.name).default_split}.tsv"
            if _is_beir_folder(folder) and qrels.is_file():
                names.add(folder.name)
    return sorted(names)


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
