"""Pieces shared by greedy decoding and beam search: output limits, next-token log-probabilities, scores.

Every search here scores a finished output Y (ids after the start token, the end token included when
produced) with the GNMT length penalty of Wu et al. (2016), "Google's Neural Machine Translation System":

    lp(Y) = ((5 + |Y|) / 6) ** alpha        score(Y) = log P(Y | X) / lp(Y)

alpha = 0 ranks outputs by plain log-probability, and larger alpha favours longer outputs.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from nmt.tokenizer import BOS_ID, PAD_ID

# Ids that are never a valid next token: padding and the start token. Both searches exclude them, so
# their log-probabilities are a softmax over the remaining ids.
FORBIDDEN_OUTPUT_IDS = (PAD_ID, BOS_ID)


@dataclass(frozen=True)
class Hypothesis:
    """One decoded output: ``tokens`` without the start token, ending with EOS unless cut at the length limit."""

    tokens: list[int]
    log_prob: float
    score: float


def length_penalty(length: int, alpha: float) -> float:
    """Return the GNMT length penalty ((5 + length) / 6) ** alpha."""
    return ((5.0 + length) / 6.0) ** alpha


def max_output_lengths(
    src_lengths: torch.Tensor, max_len_a: float, max_len_b: int, max_positions: int
) -> torch.Tensor:
    """Return each sentence's output limit (B,): a * source length + b, at least 1, at most max_positions - 1.

    ``src_lengths`` counts the source ids of each sentence, its end token included. The limit counts output
    tokens, the end token included, so the decoder never reads more than ``max_positions - 1`` positions.
    """
    limits = torch.floor(max_len_a * src_lengths.double() + max_len_b).long()
    return limits.clamp(min=1, max=max_positions - 1)


def as_output_limits(max_len: int | torch.Tensor, batch: int, device: torch.device) -> torch.Tensor:
    """Return per-sentence output limits (B,) as a long tensor, from one int or a (B,) tensor."""
    if isinstance(max_len, torch.Tensor):
        if max_len.shape != (batch,):
            raise ValueError(f"max_len has shape {tuple(max_len.shape)}, expected ({batch},) or an int")
        return max_len.to(device=device, dtype=torch.long)
    return torch.full((batch,), int(max_len), dtype=torch.long, device=device)


def output_log_probs(logits: torch.Tensor) -> torch.Tensor:
    """Return float32 log-probabilities (B, V) of the next token from output-layer logits (B, V).

    The ids in ``FORBIDDEN_OUTPUT_IDS`` get -inf, so greedy argmax and beam candidates never pick them.
    ``logits`` is not modified.
    """
    logits = logits.float().clone()
    logits[:, list(FORBIDDEN_OUTPUT_IDS)] = float("-inf")
    return torch.log_softmax(logits, dim=-1)
