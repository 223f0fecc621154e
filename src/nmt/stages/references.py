"""Stage ``references``: fetch the official lowercased, tokenized Multi30k references of the test sets.

Output: ``data/references/<test set>.<target language>``, used by ``evaluate`` for the paper-style
``bleu_lc_tok`` score. Files come from the same local folder or download as the raw data, checksum-verified.
"""

from __future__ import annotations

import shutil

from nmt.config import Paths
from nmt.data.multi30k import fetch_files, resolve_local_dir, tok_name
from nmt.io import atomic_dir
from nmt.stages.common import run_stage


def references_dir(paths: Paths):
    return paths.root / "data" / "references"


def run(cfg, paths: Paths) -> None:
    lang = cfg.data.tgt_lang
    names = {test_set: tok_name(test_set, lang) for test_set in cfg.evaluate.test_sets}
    files = fetch_files(list(names.values()), resolve_local_dir(cfg.data.local_dir), paths.raw)
    with atomic_dir(references_dir(paths)) as out:
        for test_set, name in names.items():
            shutil.copyfile(files[name], out / f"{test_set}.{lang}")


def main() -> None:
    run_stage(run)


if __name__ == "__main__":
    main()
