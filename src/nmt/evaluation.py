"""Scores: cased, detokenized sacrebleu BLEU and chrF, and the lowercased tokenized BLEU that papers report.

Papers on Multi30k score lowercased, punctuation-normalized, Moses-tokenized hypotheses against the
dataset's official tokenized references (``tok/<split>.lc.norm.tok.<lang>``); ``paper_bleu`` reproduces that
preprocessing with sacremoses. The two BLEU figures are not comparable with each other.
"""

from __future__ import annotations

import sacrebleu


def score(hypotheses: list[str], references: list[str], lowercase: bool = False) -> dict:
    """Return corpus BLEU, chrF and the BLEU signature for one test set (one reference per sentence).

    Both are cased unless ``lowercase``, which lowercases hypotheses and references first (``case:lc`` in the
    signature).
    """
    _check_aligned(hypotheses, references)
    bleu = sacrebleu.metrics.BLEU(lowercase=lowercase)
    chrf = sacrebleu.metrics.CHRF(lowercase=lowercase)
    bleu_score = bleu.corpus_score(hypotheses, [references])
    return {
        "bleu": round(bleu_score.score, 2),
        "chrf": round(chrf.corpus_score(hypotheses, [references]).score, 2),
        "bleu_signature": str(bleu.get_signature()),
        "sentences": len(hypotheses),
    }


def moses_tokenize(sentences: list[str], lang: str) -> list[str]:
    """Lowercase, normalize punctuation and tokenize like the official Multi30k ``*.lc.norm.tok.*`` files."""
    from sacremoses import MosesPunctNormalizer, MosesTokenizer

    normalizer = MosesPunctNormalizer(lang)
    tokenizer = MosesTokenizer(lang)
    return [tokenizer.tokenize(normalizer.normalize(s.lower()), escape=True, return_str=True) for s in sentences]


def paper_bleu(hypotheses: list[str], tokenized_references: list[str], lang: str) -> float:
    """Return BLEU of Moses-tokenized lowercased hypotheses against already tokenized references."""
    _check_aligned(hypotheses, tokenized_references)
    bleu = sacrebleu.metrics.BLEU(tokenize="none", force=True)
    return round(bleu.corpus_score(moses_tokenize(hypotheses, lang), [tokenized_references]).score, 2)


def _check_aligned(hypotheses: list[str], references: list[str]) -> None:
    if len(hypotheses) != len(references):
        raise ValueError(f"{len(hypotheses)} hypotheses for {len(references)} references; they must align")
