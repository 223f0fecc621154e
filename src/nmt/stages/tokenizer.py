"""Stage ``tokenizer``: train the joint SentencePiece model on both sides of the training split.

Output: ``data/tokenizer/spm.model`` and ``spm.vocab``.
"""

from __future__ import annotations

import logging

from nmt.config import ConfigError, Paths
from nmt.data.parallel import read_lines
from nmt.io import atomic_dir
from nmt.stages.common import run_stage
from nmt.tokenizer import Tokenizer, train_sentencepiece

log = logging.getLogger(__name__)


def run(cfg, paths: Paths) -> None:
    tok = cfg.tokenizer
    if not tok.joint:
        # TODO: separate source and target vocabularies (two models, untied embeddings).
        raise ConfigError("tokenizer.joint=false is not supported yet; use one joint vocabulary (tokenizer.joint=true)")

    sentences = read_lines(paths.split_file("train", cfg.data.src_lang)) + read_lines(
        paths.split_file("train", cfg.data.tgt_lang)
    )
    with atomic_dir(paths.tokenizer_dir) as out:
        model_path = train_sentencepiece(
            sentences,
            out / "spm",
            vocab_size=tok.vocab_size,
            model_type=tok.model_type,
            character_coverage=tok.character_coverage,
            byte_fallback=tok.byte_fallback,
        )
        log.info("trained %s with %d pieces on %d sentences", model_path.name, Tokenizer(model_path).vocab_size,
                 len(sentences))


def main() -> None:
    run_stage(run)


if __name__ == "__main__":
    main()
