"""Stage ``tokenizer``: train SentencePiece on the training split.

Output: ``data/tokenizer/``. With ``tokenizer.joint`` (the default) it contains one model trained on both sides,
``spm.model`` and ``spm.vocab``; otherwise one model per side trained on that side only, ``spm.src.model``
and ``spm.tgt.model`` (each with its ``.vocab``), each with at most ``tokenizer.vocab_size`` pieces. With
``tokenizer.lowercase`` the models are trained on lowercased text and the folder also gets ``tokenizer.json``,
which makes every later use of them lowercase its input.
"""

from __future__ import annotations

import logging
from pathlib import Path

from nmt.config import Paths
from nmt.data.parallel import read_lines
from nmt.io import atomic_dir
from nmt.stages.common import run_stage
from nmt.tokenizer import JOINT_MODEL, SOURCE_MODEL, TARGET_MODEL, Tokenizer, train_sentencepiece, write_settings

log = logging.getLogger(__name__)


def train_model(tok, sentences: list[str], model_path: Path) -> None:
    """Train one SentencePiece model with the ``tokenizer`` settings and write it to ``model_path``."""
    prefix = model_path.with_suffix("")
    train_sentencepiece(
        sentences,
        prefix,
        vocab_size=tok.vocab_size,
        model_type=tok.model_type,
        character_coverage=tok.character_coverage,
        byte_fallback=tok.byte_fallback,
    )
    log.info("trained %s with %d pieces on %d sentences", model_path.name, Tokenizer(model_path).vocab_size,
             len(sentences))


def run(cfg, paths: Paths) -> None:
    tok = cfg.tokenizer
    source = read_lines(paths.split_file("train", cfg.data.src_lang))
    target = read_lines(paths.split_file("train", cfg.data.tgt_lang))
    if tok.lowercase:
        source = [line.lower() for line in source]
        target = [line.lower() for line in target]

    with atomic_dir(paths.tokenizer_dir) as out:
        write_settings(out, tok.lowercase)
        if tok.joint:
            train_model(tok, source + target, out / JOINT_MODEL)
        else:
            train_model(tok, source, out / SOURCE_MODEL)
            train_model(tok, target, out / TARGET_MODEL)


def main() -> None:
    run_stage(run)


if __name__ == "__main__":
    main()
