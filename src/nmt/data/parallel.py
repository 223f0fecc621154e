"""Read, validate and normalize parallel text (one sentence per line, source and target aligned by line)."""

from __future__ import annotations

import gzip
import logging
import re
from dataclasses import dataclass, field
from pathlib import Path

from nmt.data.multi30k import DataError

log = logging.getLogger(__name__)

_WHITESPACE = re.compile(r"\s+")


def read_lines(path: Path) -> list[str]:
    """Read a UTF-8 text file (gzip if it ends in .gz) into lines without their line endings.

    Raises DataError naming the file and the 1-based line number of the first invalid UTF-8 byte.
    """
    if path.suffix == ".gz":
        with gzip.open(path, "rb") as handle:
            raw = handle.read()
    else:
        raw = path.read_bytes()
    lines = raw.split(b"\n")
    if lines and lines[-1] == b"":
        lines.pop()

    decoded = []
    for number, line in enumerate(lines, start=1):
        try:
            decoded.append(line.decode("utf-8").rstrip("\r"))
        except UnicodeDecodeError as error:
            raise DataError(
                f"{path}, line {number}: invalid UTF-8 ({error.reason} at byte {error.start}); "
                "re-encode the file as UTF-8"
            ) from error
    return decoded


def normalize_whitespace(text: str) -> str:
    """Collapse runs of whitespace (tabs, non-breaking spaces, ...) into one space and strip the ends."""
    return _WHITESPACE.sub(" ", text).strip()


@dataclass
class ParallelText:
    """Aligned source and target sentences of one split, and what validation did to them."""

    source: list[str]
    target: list[str]
    counts: dict = field(default_factory=dict)


def load_parallel(src_path: Path, tgt_path: Path, drop_empty: bool = False) -> ParallelText:
    """Read and normalize an aligned pair of files.

    Raises DataError if the line counts differ (naming both files and counts) or, unless ``drop_empty``,
    if a side is empty after normalization (naming the file and line).
    """
    source = [normalize_whitespace(line) for line in read_lines(src_path)]
    target = [normalize_whitespace(line) for line in read_lines(tgt_path)]
    if len(source) != len(target):
        raise DataError(
            f"line counts differ: {src_path} has {len(source)} lines, {tgt_path} has {len(target)}; "
            "the files of a parallel pair must be aligned line by line"
        )

    kept_source, kept_target, dropped = [], [], 0
    for number, (src, tgt) in enumerate(zip(source, target), start=1):
        if not src or not tgt:
            if not drop_empty:
                empty = src_path if not src else tgt_path
                raise DataError(f"{empty}, line {number}: empty sentence; every pair needs text on both sides")
            dropped += 1
            continue
        kept_source.append(src)
        kept_target.append(tgt)

    counts = {"read": len(source), "empty_dropped": dropped, "kept": len(kept_source)}
    return ParallelText(kept_source, kept_target, counts)


def write_lines(path: Path, lines: list[str]) -> None:
    """Write one sentence per line; the caller makes it atomic."""
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
