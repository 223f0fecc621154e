"""Read, validate and normalize parallel text (one sentence per line, source and target aligned by line)."""

from __future__ import annotations

import gzip
import logging
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

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
    return decode_utf8_lines(raw, str(path))


def decode_utf8_lines(raw: bytes, name: str) -> list[str]:
    """Split UTF-8 bytes into lines without line endings.

    Raises DataError naming ``name`` and the 1-based line number of the first invalid UTF-8 byte.
    """
    lines = raw.split(b"\n")
    if lines and lines[-1] == b"":
        lines.pop()

    decoded = []
    for number, line in enumerate(lines, start=1):
        try:
            decoded.append(line.decode("utf-8").rstrip("\r"))
        except UnicodeDecodeError as error:
            raise DataError(
                f"{name}, line {number}: invalid UTF-8 ({error.reason} at byte {error.start}); "
                "re-encode the file as UTF-8"
            ) from error
    return decoded


def normalize_whitespace(text: str) -> str:
    """Collapse runs of whitespace (tabs, non-breaking spaces, ...) into one space and strip the ends."""
    return _WHITESPACE.sub(" ", text).strip()


@dataclass
class ParallelText:
    """Aligned source and target sentences of one split, and what validation and filtering did to them.

    ``counts`` contains the totals of ``load_parallel`` (read, empty_dropped, kept). ``steps`` contains one record
    per processing step, in order: its name, its limit (None where the step is disabled) and the number of
    pairs before and after it.
    """

    source: list[str]
    target: list[str]
    counts: dict = field(default_factory=dict)
    steps: list[dict] = field(default_factory=list)
    names: tuple[str, str] = ("source", "target")


def check_aligned(step: str, source: list[str], target: list[str], names: tuple[str, str]) -> None:
    """Raise DataError unless ``source`` and ``target`` still have one line each per pair after ``step``."""
    if len(source) != len(target):
        raise DataError(
            f"after {step}, {names[0]} has {len(source)} lines but {names[1]} has {len(target)}; "
            "source and target must stay aligned line by line"
        )


def load_parallel(src_path: Path, tgt_path: Path, drop_empty: bool = False) -> ParallelText:
    """Read and normalize an aligned pair of files.

    Raises DataError if the line counts differ (naming both files and counts) or, unless ``drop_empty``,
    if a side is empty after normalization (naming the file and line). With ``drop_empty`` such pairs are
    dropped and counted in ``counts["empty_dropped"]`` and in a ``drop_empty`` step.
    """
    names = (str(src_path), str(tgt_path))
    source = read_lines(src_path)
    target = read_lines(tgt_path)
    if len(source) != len(target):
        raise DataError(
            f"line counts differ: {src_path} has {len(source)} lines, {tgt_path} has {len(target)}; "
            "the files of a parallel pair must be aligned line by line"
        )
    source = [normalize_whitespace(line) for line in source]
    target = [normalize_whitespace(line) for line in target]
    check_aligned("whitespace normalization", source, target, names)

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
    check_aligned("dropping empty pairs", kept_source, kept_target, names)

    counts = {"read": len(source), "empty_dropped": dropped, "kept": len(kept_source)}
    steps = []
    if drop_empty:
        steps.append({"step": "drop_empty", "limit": None, "before": len(source), "after": len(kept_source)})
    return ParallelText(kept_source, kept_target, counts, steps, names)


def word_count(sentence: str) -> int:
    """Count the space-separated words of a whitespace-normalized sentence."""
    return len(sentence.split(" ")) if sentence else 0


def filter_pairs(text: ParallelText, step: str, limit, keep: Callable[[str, str], bool]) -> ParallelText:
    """Keep the pairs for which ``keep(source, target)`` is true; record the step and its counts.

    With ``limit`` None the step is disabled: every pair is kept and the step is still recorded.
    """
    if limit is None:
        source, target = list(text.source), list(text.target)
    else:
        pairs = [(src, tgt) for src, tgt in zip(text.source, text.target) if keep(src, tgt)]
        source = [src for src, _ in pairs]
        target = [tgt for _, tgt in pairs]
    check_aligned(step, source, target, text.names)

    record = {"step": step, "limit": limit, "before": len(text.source), "after": len(source)}
    if record["after"] < record["before"]:
        log.info("%s (limit %s): dropped %d of %d pairs", step, limit, record["before"] - record["after"],
                 record["before"])
    return ParallelText(source, target, dict(text.counts), text.steps + [record], text.names)


def drop_long_pairs(text: ParallelText, max_length: int | None) -> ParallelText:
    """Drop pairs with a side of more than ``max_length`` words; None keeps every pair."""
    return filter_pairs(
        text, "max_length", max_length,
        lambda src, tgt: word_count(src) <= max_length and word_count(tgt) <= max_length,
    )


def drop_unbalanced_pairs(text: ParallelText, max_ratio: float | None) -> ParallelText:
    """Drop pairs whose longer side has more than ``max_ratio`` times the words of the shorter side.

    Both sides must be non-empty (``load_parallel`` drops or rejects empty sides). None keeps every pair.
    """
    def balanced(src: str, tgt: str) -> bool:
        lengths = (word_count(src), word_count(tgt))
        return max(lengths) <= max_ratio * min(lengths)

    return filter_pairs(text, "max_length_ratio", max_ratio, balanced)


def take_first(text: ParallelText, step: str, limit: int | None) -> ParallelText:
    """Keep only the first ``limit`` pairs (quick runs and tests); None keeps every pair."""
    if limit is None:
        return filter_pairs(text, step, None, lambda src, tgt: True)
    source, target = text.source[:limit], text.target[:limit]
    check_aligned(step, source, target, text.names)
    record = {"step": step, "limit": limit, "before": len(text.source), "after": len(source)}
    return ParallelText(source, target, dict(text.counts), text.steps + [record], text.names)


def write_lines(path: Path, lines: list[str]) -> None:
    """Write one sentence per line; the caller makes it atomic."""
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
