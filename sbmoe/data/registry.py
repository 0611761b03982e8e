"""Dataset names -> folders on disk, downloading the official BEIR zip when a name is nowhere local.

Lookup order for a name: an existing directory path as given, then the data roots of ``roots.py``
(``$SBMOE_DATA``, ``./data``, ``../shared/data``, the download cache), then the official download.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
import urllib.error
import urllib.request
import zipfile
from dataclasses import dataclass
from pathlib import Path

from ..atomic import guarded_write
from .roots import cache_root, search_roots

BEIR_ZIP_URL = "https://public.ukp.informatik.tu-darmstadt.de/thakur/BEIR/datasets/{name}.zip"


class DatasetNotFoundError(FileNotFoundError):
    """A dataset name that is neither on disk nor downloadable."""


class DownloadMismatchError(DatasetNotFoundError):
    """A downloaded archive whose md5 or length is not the published one: refused, nothing unpacked."""


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
    md5: str | None = None  # of the archive at ``url`` as its publisher lists it; None: only its length is checked


def _beir(name: str, drop_self_hits: bool, md5: str, split: str = "test") -> DatasetInfo:
    return DatasetInfo(name=name, url=BEIR_ZIP_URL.format(name=name), drop_self_hits=drop_self_hits,
                       default_split=split, md5=md5)


# The md5 sums are those of the datasets table in the BEIR repository's README (beir-cellar/beir).
KNOWN_DATASETS: dict[str, DatasetInfo] = {
    info.name: info
    for info in [
        # claim ids vs abstract ids: no id is both (checked on the shared copy)
        _beir("scifact", False, "5f7d1de60b170fc8027bb7898e2efca1"),
        _beir("nfcorpus", False, "a89dba18a62ef92f7d323ec890a0d38d"),  # PLAIN-* queries, MED-* documents
        # every query is an argument of the corpus, under its own id
        _beir("arguana", True, "8ad3e3c2a5867cdced806d6503f29b99"),
        _beir("scidocs", True, "38121350fc3a4d2f48850f6aff52e4a9"),
        _beir("fiqa", False, "17918ed23cd04fb15047f73e6c3bd9d9"),  # question and answer numbers: separate spaces
        _beir("trec-covid", False, "ce62140cb23feb9becf6270d0d1fe6d1"),
        _beir("webis-touche2020", False, "46f650ba5a527fc69e0a6521c5a23563"),
        _beir("quora", True, "18fb154900ba42a600f84b839c173167"),  # questions are corpus entries under their own id
        _beir("nq", False, "d4d3d2e48787a744b6f6e691ff534307"),
        _beir("hotpotqa", False, "f412724f78b0d91183a0e86805e16114"),
        _beir("dbpedia-entity", False, "c2a39eb420a3164af735795df012ac2c"),
        _beir("fever", False, "5a818580227bfb4b35bb6fa46d9b6c03"),
        _beir("climate-fever", False, "8b66f0a9126c521bae2bde127b4dc99d"),
        # query and passage numbers are separate spaces
        _beir("msmarco", False, "444067daf65d982533ea17ebd59501e4", split="dev"),
        DatasetInfo(name="cranfield", url=None, drop_self_hits=False),
        DatasetInfo(name="cacm", url=None, drop_self_hits=False),
        DatasetInfo(name="msmarco-dl19-mini", url=None, drop_self_hits=False),
        # SQuAD v1.1 as paragraph retrieval (test = the official dev questions) and MedQuAD split by focus:
        # BEIR-layout builds with train and test qrels; question and document ids are separate spaces
        DatasetInfo(name="squad", url=None, drop_self_hits=False),
        DatasetInfo(name="medquad", url=None, drop_self_hits=False),
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


def _fetch(info: DatasetInfo, zip_path: Path, final: Path) -> tuple[int, int | None, str]:
    """Stream ``info.url`` into ``zip_path``; returns the bytes received, the announced length and their md5."""
    assert info.url is not None
    digest, received = hashlib.md5(usedforsecurity=False), 0
    try:
        with urllib.request.urlopen(info.url, timeout=60) as response:
            length = response.headers.get("Content-Length")
            announced = int(length) if length and length.isdigit() else None
            with guarded_write(final, announced), open(zip_path, "wb") as out:
                while block := response.read(1 << 20):
                    digest.update(block)
                    out.write(block)
                    received += len(block)
    except (urllib.error.URLError, OSError) as exc:
        raise DatasetNotFoundError(
            f"dataset {info.name!r} is not on disk and downloading {info.url} failed: {exc}. "
            f"Offline? Put the BEIR folder under $SBMOE_DATA/{info.name} or ./data/{info.name}."
        ) from exc
    return received, announced, digest.hexdigest()


def download_dataset(info: DatasetInfo, dest_root: Path) -> Path:
    """Download ``info.url``, check it against the published md5 (else against its announced length), and only
    then unpack it into ``dest_root/<name>``; atomic: a failed or refused download leaves nothing."""
    assert info.url is not None
    final = dest_root / info.name
    with guarded_write(final):
        dest_root.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=dest_root, prefix=f".{info.name}-") as tmp:
        zip_path = Path(tmp) / f"{info.name}.zip"
        received, announced, md5 = _fetch(info, zip_path, final)
        if info.md5 is not None and md5 != info.md5:
            raise DownloadMismatchError(f"{info.url}: md5 {md5} differs from the published {info.md5} "
                                        f"({received:,} bytes received): refused, nothing was written")
        if announced is not None and received != announced:
            raise DownloadMismatchError(f"{info.url}: {received:,} of {announced:,} bytes received (truncated): "
                                        "refused, nothing was written")
        unpacked = Path(tmp) / "unpacked"
        try:
            with guarded_write(final), zipfile.ZipFile(zip_path) as archive:
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
