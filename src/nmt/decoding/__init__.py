"""Autoregressive decoding: greedy (textbook and key/value-cached) and batched beam search."""

from nmt.decoding.beam import beam_search
from nmt.decoding.common import Hypothesis, length_penalty, max_output_lengths
from nmt.decoding.greedy import greedy_decode, greedy_search, greedy_steps, translate_sentences
from nmt.decoding.translation import Translation, translate

__all__ = [
    "Hypothesis",
    "Translation",
    "beam_search",
    "greedy_decode",
    "greedy_search",
    "greedy_steps",
    "length_penalty",
    "max_output_lengths",
    "translate",
    "translate_sentences",
]
