"""Locate or download the raw Multi30k files and verify them against the recorded SHA-256 checksums.

The files come from the ``multi30k/dataset`` repository on GitHub, pinned to one commit, in
``data/task1/raw/<split>.<lang>.gz`` and ``data/task1/tok/<split>.lc.norm.tok.<lang>``.
A local folder laid out the same way (``*.gz`` files and a ``tok/`` folder) can be used instead: set
``data.local_dir`` in the config or the ``NMT_DATA_DIR`` environment variable.
"""

from __future__ import annotations

import hashlib
import logging
import os
import urllib.request
from importlib import resources
from pathlib import Path

from nmt.io import atomic_path

log = logging.getLogger(__name__)

DATA_DIR_ENV = "NMT_DATA_DIR"
COMMIT = "a3d2e0d26b56f3846f66a952536ffed4e401d05a"
BASE_URL = f"https://github.com/multi30k/dataset/raw/{COMMIT}/data/task1"


class DataError(RuntimeError):
    """Raised when input data is missing, corrupt or malformed."""


def load_checksums() -> dict[str, str]:
    """Return {relative file name: sha256} for every Multi30k file with a recorded checksum."""
    text = resources.files("nmt.data").joinpath("multi30k.sha256").read_text(encoding="utf-8")
    checksums = {}
    for line in text.splitlines():
        if line.strip():
            digest, name = line.split()
            checksums[name] = digest
    return checksums


def raw_name(split: str, lang: str) -> str:
    return f"{split}.{lang}.gz"


def tok_name(split: str, lang: str) -> str:
    return f"tok/{split}.lc.norm.tok.{lang}"


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def resolve_local_dir(configured: str | None) -> Path | None:
    """Return the local data folder: ``NMT_DATA_DIR`` if set, else the configured ``data.local_dir``, else None."""
    value = os.environ.get(DATA_DIR_ENV) or configured
    return Path(value).expanduser() if value else None


def fetch_files(names: list[str], local_dir: Path | None, cache_dir: Path) -> dict[str, Path]:
    """Return {name: path} for each Multi30k file in ``names``, verified against its checksum.

    With ``local_dir`` the files are read from there and nothing is downloaded; otherwise they are
    downloaded into ``cache_dir`` once. Raises DataError naming every missing or corrupt file.
    """
    checksums = load_checksums()
    unknown = [name for name in names if name not in checksums]
    if unknown:
        raise DataError(f"no recorded checksum for {unknown}; known Multi30k files are listed in nmt/data/multi30k.sha256")

    if local_dir is not None:
        return _verify_local(names, local_dir, checksums)

    paths = {}
    for name in names:
        path = cache_dir / name
        if not path.exists() or sha256_of(path) != checksums[name]:
            _download(f"{BASE_URL}/{_remote_path(name)}", path, checksums[name])
        paths[name] = path
    return paths


def _remote_path(name: str) -> str:
    return name if name.startswith("tok/") else f"raw/{name}"


def _verify_local(names: list[str], local_dir: Path, checksums: dict[str, str]) -> dict[str, Path]:
    if not local_dir.is_dir():
        raise DataError(
            f"Multi30k folder {local_dir} does not exist. Point {DATA_DIR_ENV} (or data.local_dir) at a folder "
            f"holding the raw files, or unset both to download them from {BASE_URL}."
        )
    missing = [name for name in names if not (local_dir / name).is_file()]
    if missing:
        raise DataError(
            f"Multi30k folder {local_dir} is missing {len(missing)} file(s): {', '.join(missing)}. "
            f"Copy them from {BASE_URL}/raw (and /tok), point {DATA_DIR_ENV} (or data.local_dir) at a complete "
            "folder, or unset both to download them."
        )
    corrupt = [name for name in names if sha256_of(local_dir / name) != checksums[name]]
    if corrupt:
        raise DataError(
            f"checksum mismatch in {local_dir} for: {', '.join(corrupt)}. The files differ from the pinned "
            f"Multi30k commit {COMMIT[:10]}; replace them with fresh copies from {BASE_URL}."
        )
    return {name: local_dir / name for name in names}


def _download(url: str, path: Path, expected_sha256: str) -> None:
    log.info("downloading %s", url)
    try:
        with atomic_path(path) as tmp:
            with urllib.request.urlopen(url, timeout=60) as response, open(tmp, "wb") as out:
                out.write(response.read())
            actual = sha256_of(tmp)
            if actual != expected_sha256:
                raise DataError(f"checksum mismatch for {url}: expected {expected_sha256}, got {actual}")
    except OSError as error:
        raise DataError(
            f"download of {url} failed ({error}). Without internet, set {DATA_DIR_ENV} to a local Multi30k folder."
        ) from error
