"""Autoregressive decoding: greedy (textbook and key/value-cached)."""

from nmt.decoding.greedy import greedy_decode, translate_sentences

__all__ = ["greedy_decode", "translate_sentences"]
