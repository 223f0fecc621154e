"""Sentence-level translation with greedy decoding or beam search, n-best lists and scores."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

from nmt.data.batching import pad
from nmt.data.parallel import normalize_whitespace
from nmt.decoding.beam import beam_search
from nmt.decoding.common import Hypothesis, max_output_lengths
from nmt.decoding.greedy import METHODS, greedy_search
from nmt.tokenizer import EOS_ID, PAD_ID, UNK_ID, Tokenizer, as_pair

log = logging.getLogger(__name__)

# Sentences named one by one in warnings before the rest are only counted.
MAX_WARNINGS_PER_KIND = 10


@dataclass(frozen=True)
class Translation:
    """One output of a sentence: detokenized text, output ids (EOS included if produced) and scores."""

    text: str
    tokens: list[int]
    log_prob: float
    score: float


def encode_sources(tokenizer: Tokenizer, sentences: list[str], max_positions: int) -> list[list[int] | None]:
    """Encode sentences as source ids ending with EOS, or None for a sentence that is empty after normalization.

    ``tokenizer`` is the source side's tokenizer. Whitespace is normalized as in the training data. A
    sentence with more than ``max_positions - 1`` pieces is truncated to that many, and characters that the
    tokenizer never saw become ``<unk>``. Both cases are logged as warnings naming the sentence by its
    1-based position in ``sentences`` ("line N"), which is its line number when ``sentences`` are the lines
    of a file.
    """
    normalized = [normalize_whitespace(sentence) for sentence in sentences]
    encoded = tokenizer.encode(normalized)
    longest = max_positions - 1

    sources: list[list[int] | None] = []
    truncated, unknown = 0, 0
    for number, (text, ids) in enumerate(zip(normalized, encoded), start=1):
        if not text:
            sources.append(None)
            continue

        if UNK_ID in ids:
            unknown += 1
            if unknown <= MAX_WARNINGS_PER_KIND:
                pieces = tokenizer.sp.encode(text, out_type=str)
                unseen = sorted({piece for piece, i in zip(pieces, ids) if i == UNK_ID})
                log.warning("line %d: %s not in the tokenizer vocabulary, encoded as <unk>", number,
                            ", ".join(repr(piece) for piece in unseen))
        if len(ids) > longest:
            truncated += 1
            if truncated <= MAX_WARNINGS_PER_KIND:
                log.warning("line %d: %d pieces exceed the model's %d source positions; translating only the "
                            "first %d pieces", number, len(ids), max_positions, longest)
            ids = ids[:longest]
        sources.append(ids + [EOS_ID])

    if unknown > MAX_WARNINGS_PER_KIND:
        log.warning("%d sentences in all contained characters encoded as <unk>", unknown)
    if truncated > MAX_WARNINGS_PER_KIND:
        log.warning("%d sentences in all were truncated to %d pieces", truncated, longest)
    return sources


def translate(
    model,
    tokenizers,
    sentences: list[str],
    beam_size: int = 5,
    length_penalty: float = 1.0,
    n_best: int = 1,
    batch_size: int = 64,
    max_len_a: float = 1.5,
    max_len_b: int = 10,
    method: str = "cached",
    progress: Callable[[int], None] | None = None,
) -> list[list[Translation]]:
    """Translate sentences and return, for each, up to ``n_best`` translations sorted by score, best first.

    ``tokenizers`` is a ``TokenizerPair`` (source side encodes, target side decodes) or one joint ``Tokenizer``.
    ``beam_size`` 1 runs greedy decoding with ``method`` ("cached" or "textbook"); greedy decoding gives the
    same tokens as beam search with beam size 1. Larger beams run ``beam_search`` on the cached decoder.
    ``length_penalty`` is the GNMT exponent alpha of the score log P / ((5 + |Y|) / 6) ** alpha.
    An output has at most a * (source pieces + 1) + b tokens, capped by the model's positions.
    Sentences that are empty after whitespace normalization get an empty list and are not decoded.
    ``progress``, if given, is called with the number of sentences finished: once for the empty ones, then
    after each batch.
    """
    if method not in METHODS:
        raise ValueError(f"unknown decoding method {method!r}; use 'cached' or 'textbook'")
    if beam_size > 1 and method != "cached":
        raise ValueError(f"beam search uses the cached decoder; method={method!r} needs beam_size=1")
    if n_best > beam_size:
        raise ValueError(f"n_best={n_best} exceeds beam_size={beam_size}; raise the beam size")

    tokenizers = as_pair(tokenizers)
    model.eval()
    max_positions = model.config.max_positions
    device = next(model.parameters()).device
    sources = encode_sources(tokenizers.source, sentences, max_positions)
    results: list[list[Translation]] = [[] for _ in sentences]

    # Batches of similar length waste little work on padding.
    order = sorted((i for i, src in enumerate(sources) if src is not None), key=lambda i: len(sources[i]))
    if progress is not None and len(order) < len(sentences):
        progress(len(sentences) - len(order))          # empty sentences are done already
    for start in range(0, len(order), batch_size):
        chunk = order[start : start + batch_size]
        src = pad([sources[i] for i in chunk]).to(device)
        limits = max_output_lengths(src.ne(PAD_ID).sum(dim=1), max_len_a, max_len_b, max_positions)

        if beam_size == 1:
            nbest_lists = [[h] for h in greedy_search(model, src, limits, method, length_penalty)]
        else:
            nbest_lists = beam_search(model, src, limits, beam_size, length_penalty, n_best)
        for i, hypotheses in zip(chunk, nbest_lists):
            results[i] = _to_translations(tokenizers.target, hypotheses)
        if progress is not None:
            progress(len(chunk))
    return results


def _to_translations(tokenizer: Tokenizer, hypotheses: list[Hypothesis]) -> list[Translation]:
    texts = tokenizer.decode([h.tokens for h in hypotheses])
    return [Translation(text, h.tokens, h.log_prob, h.score) for text, h in zip(texts, hypotheses)]

