"""Scores: cased, detokenized sacrebleu BLEU and chrF."""

from __future__ import annotations

import sacrebleu


def score(hypotheses: list[str], references: list[str]) -> dict:
    """Return corpus BLEU, chrF and the BLEU signature for one test set (one reference per sentence)."""
    if len(hypotheses) != len(references):
        raise ValueError(f"{len(hypotheses)} hypotheses for {len(references)} references; they must align")
    bleu = sacrebleu.metrics.BLEU()
    chrf = sacrebleu.metrics.CHRF()
    bleu_score = bleu.corpus_score(hypotheses, [references])
    return {
        "bleu": round(bleu_score.score, 2),
        "chrf": round(chrf.corpus_score(hypotheses, [references]).score, 2),
        "bleu_signature": str(bleu.get_signature()),
        "sentences": len(hypotheses),
    }
