"""Stage ``prepare``: fetch and verify the raw Multi30k files, validate and normalize them, write the splits.

Outputs: ``data/prepared/<split>.<lang>`` (one sentence per line) and ``reports/data.json`` (pair counts per
split before and after each validation and filtering step).
"""

from __future__ import annotations

import logging
from pathlib import Path

from nmt.config import Paths
from nmt.data.multi30k import DataError, fetch_files, raw_name, resolve_local_dir
from nmt.data.parallel import (
    ParallelText,
    drop_long_pairs,
    drop_unbalanced_pairs,
    load_parallel,
    take_first,
    write_lines,
)
from nmt.io import atomic_dir, write_json_atomic
from nmt.stages.common import run_stage

log = logging.getLogger(__name__)


def run(cfg, paths: Paths) -> None:
    """Write the prepared splits and ``reports/data.json``; on any error neither output is left behind.

    The training split loses pairs with an empty side and, where configured, pairs over ``data.max_length``
    words or ``data.max_length_ratio``. Validation and test splits are never filtered, so an empty side there
    is an error. ``data.json`` records, per split, the number of pairs before and after each step.
    """
    src_lang, tgt_lang = cfg.data.src_lang, cfg.data.tgt_lang
    if "train" not in cfg.data.splits or "val" not in cfg.data.splits:
        raise DataError(f"data.splits={list(cfg.data.splits)} must include 'train' and 'val'")
    names = [raw_name(split, lang) for split in cfg.data.splits for lang in (src_lang, tgt_lang)]
    files = fetch_files(names, resolve_local_dir(cfg.data.local_dir), paths.raw)

    report = {"pair": f"{src_lang}-{tgt_lang}", "splits": {}}
    with atomic_dir(paths.prepared) as out:
        for split in cfg.data.splits:
            text = prepare_split(cfg.data, split, files[raw_name(split, src_lang)], files[raw_name(split, tgt_lang)])
            write_lines(out / f"{split}.{src_lang}", text.source)
            write_lines(out / f"{split}.{tgt_lang}", text.target)
            report["splits"][split] = {**text.counts, "steps": text.steps, "written": len(text.source)}
            log.info("%s: %d pairs read, %d written", split, text.counts["read"], len(text.source))

        # Written inside the prepared folder's transaction: if this fails, data/prepared is not replaced either.
        write_json_atomic(paths.reports / "data.json", report)


def prepare_split(data_cfg, split: str, src_path: Path, tgt_path: Path) -> ParallelText:
    """Read, validate and filter one split; every step keeps source and target aligned."""
    is_train = split == "train"
    # Empty training pairs are dropped and counted; evaluation splits must stay complete.
    text = load_parallel(src_path, tgt_path, drop_empty=is_train)
    if is_train:
        text = drop_long_pairs(text, data_cfg.max_length)
        text = drop_unbalanced_pairs(text, data_cfg.max_length_ratio)
        return take_first(text, "max_train_pairs", data_cfg.max_train_pairs)
    return take_first(text, "max_eval_pairs", data_cfg.max_eval_pairs)


def main() -> None:
    run_stage(run)


if __name__ == "__main__":
    main()
