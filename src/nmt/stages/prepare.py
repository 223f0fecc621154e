"""Stage ``prepare``: fetch and verify the raw Multi30k files, validate and normalize them, write the splits.

Outputs: ``data/prepared/<split>.<lang>`` (one sentence per line) and ``reports/data.json`` (counts).
"""

from __future__ import annotations

import logging

from nmt.config import Paths
from nmt.data.multi30k import DataError, fetch_files, raw_name, resolve_local_dir
from nmt.data.parallel import load_parallel, write_lines
from nmt.io import atomic_dir, write_json_atomic
from nmt.stages.common import run_stage

log = logging.getLogger(__name__)


def run(cfg, paths: Paths) -> None:
    src_lang, tgt_lang = cfg.data.src_lang, cfg.data.tgt_lang
    if "train" not in cfg.data.splits or "val" not in cfg.data.splits:
        raise DataError(f"data.splits={list(cfg.data.splits)} must include 'train' and 'val'")
    names = [raw_name(split, lang) for split in cfg.data.splits for lang in (src_lang, tgt_lang)]
    files = fetch_files(names, resolve_local_dir(cfg.data.local_dir), paths.raw)

    report = {"pair": f"{src_lang}-{tgt_lang}", "splits": {}}
    with atomic_dir(paths.prepared) as out:
        for split in cfg.data.splits:
            # Empty training pairs are dropped and counted; evaluation splits must stay complete.
            text = load_parallel(
                files[raw_name(split, src_lang)], files[raw_name(split, tgt_lang)], drop_empty=split == "train"
            )
            limit = cfg.data.max_train_pairs if split == "train" else cfg.data.max_eval_pairs
            source, target = text.source, text.target
            if limit is not None:
                source, target = source[:limit], target[:limit]

            write_lines(out / f"{split}.{src_lang}", source)
            write_lines(out / f"{split}.{tgt_lang}", target)
            report["splits"][split] = {**text.counts, "written": len(source)}
            log.info("%s: %d pairs read, %d written", split, text.counts["read"], len(source))

    write_json_atomic(paths.reports / "data.json", report)


def main() -> None:
    run_stage(run)


if __name__ == "__main__":
    main()
