"""Greedy autoregressive decoding.

Decoding starts from the start-of-sequence token and appends the most probable token one step at a time,
until every sentence has produced the end-of-sequence token or reached its output limit. The causal
mask grows with the prefix. Padding and the start token are never chosen (see ``FORBIDDEN_OUTPUT_IDS``).

Two methods give the same tokens:
- ``cached`` (default) keeps each decoder layer's self-attention keys and values and the encoder-decoder
  keys and values between steps, so each step computes only the newest position;
- ``textbook`` re-runs the decoder on the whole prefix at every step. It is the reference in tests.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import torch

from nmt.data.batching import pad
from nmt.decoding.common import Hypothesis, as_output_limits, length_penalty, max_output_lengths, output_log_probs
from nmt.model.attention import select_cache_rows as select_attention_rows
from nmt.tokenizer import BOS_ID, EOS_ID, PAD_ID, as_pair

METHODS = ("cached", "textbook")


def max_output_length(src_lengths: torch.Tensor, max_len_a: float, max_len_b: int, max_positions: int) -> int:
    """Return one step limit for a batch: a * longest source + b, capped by the model's positions.

    Kept for callers that want one limit per batch. ``max_output_lengths`` gives one limit per sentence,
    which makes an output independent of the other sentences in its batch.
    """
    return min(int(max_len_a * int(src_lengths.max()) + max_len_b), max_positions - 1)


@dataclass
class GreedyStep:
    """One greedy step of a batch: the decoder input, the newest logits and the chosen tokens.

    Only the ``rows`` still in the decoded batch are computed. ``logits`` and ``log_probs`` expand them to
    the whole batch, with zeros for sentences that have finished, when a caller reads them.
    """

    prefix: torch.Tensor            # (B, t) decoder input of this step: start token, then the earlier choices
    tokens: torch.Tensor            # (B,) chosen ids, PAD for sentences that had already finished
    rows: torch.Tensor              # (R,) batch rows decoded at this step
    row_logits: torch.Tensor        # (R, V) output-layer logits at the newest position
    row_log_probs: torch.Tensor     # (R, V) float32 log-probabilities, -inf at the forbidden ids
    finished: torch.Tensor          # (B,) True for sentences that had finished before this step

    @property
    def logits(self) -> torch.Tensor:
        """(B, V) logits of every sentence, zeros where it had already finished."""
        return self._expand(self.row_logits)

    @property
    def log_probs(self) -> torch.Tensor:
        """(B, V) log-probabilities of every sentence, zeros where it had already finished."""
        return self._expand(self.row_log_probs)

    def chosen_log_probs(self) -> torch.Tensor:
        """(B,) log-probability of each chosen token, 0 for sentences that had already finished."""
        chosen = torch.zeros(self.tokens.shape, dtype=self.row_log_probs.dtype, device=self.tokens.device)
        picked = self.row_log_probs.gather(1, self.tokens[self.rows, None])[:, 0]
        chosen[self.rows] = picked.masked_fill(self.finished[self.rows], 0.0)
        return chosen

    def _expand(self, row_values: torch.Tensor) -> torch.Tensor:
        values = row_values.new_zeros(self.tokens.shape[0], row_values.shape[-1])
        values[self.rows] = row_values
        values[self.finished] = 0.0
        return values


@torch.inference_mode()
def greedy_steps(
    model,
    src_ids: torch.Tensor,
    max_len: int | torch.Tensor,
    method: str = "cached",
) -> Iterator[GreedyStep]:
    """Yield each greedy step for a padded source batch (B, N) until every sentence has finished.

    ``max_len`` is the output limit, one int for the batch or a (B,) tensor with one per sentence. A
    sentence finishes when it chooses EOS or when it has ``max_len`` output tokens. In its later steps it has
    PAD as the token and zeros as logits and log-probabilities. The cached method also drops finished
    sentences from the decoded batch (their rows of the memory and cache), so later steps cost less. The
    textbook method stays the plain reference: the whole batch and prefix run at every step.
    """
    if method not in METHODS:
        raise ValueError(f"unknown decoding method {method!r}; use 'cached' or 'textbook'")
    batch = src_ids.shape[0]
    device = src_ids.device
    limits = as_output_limits(max_len, batch, device)
    memory, src_key_padding_mask = model.encode(src_ids)

    prefix = torch.full((batch, 1), BOS_ID, dtype=torch.long, device=device)
    active = torch.arange(batch, device=device)                   # rows still in the decoded batch
    finished = torch.zeros(batch, dtype=torch.bool, device=device)
    cache = model.new_cache() if method == "cached" else None

    for step in range(1, int(limits.max()) + 1):
        step_input = prefix[active, -1:] if cache is not None else prefix[active]
        hidden, _ = model.decode(step_input, memory, src_key_padding_mask, cache)
        active_logits = model.output(hidden[:, -1])               # (active rows, V), newest position only
        active_log_probs = output_log_probs(active_logits)
        active_finished = finished[active]
        active_tokens = active_log_probs.argmax(dim=-1).masked_fill(active_finished, PAD_ID)  # textbook keeps them

        next_token = torch.full((batch,), PAD_ID, dtype=torch.long, device=device)
        next_token[active] = active_tokens
        yield GreedyStep(prefix, next_token, active, active_logits, active_log_probs, finished.clone())

        prefix = torch.cat([prefix, next_token[:, None]], dim=1)
        now_finished = active_finished | active_tokens.eq(EOS_ID) | limits[active].le(step)
        finished[active] = now_finished
        if bool(now_finished.all()):
            break
        if cache is not None and bool(now_finished.any()):
            keep = ~now_finished
            active = active[keep]
            memory, src_key_padding_mask = memory[keep], src_key_padding_mask[keep]
            select_cache_rows(cache, keep)


def select_cache_rows(cache: list[dict], rows: torch.Tensor) -> None:
    """Keep only ``rows`` (a boolean mask or index tensor) of every layer's cached keys and values, in place."""
    for layer_cache in cache:
        for attention_cache in layer_cache.values():
            select_attention_rows(attention_cache, rows)


def greedy_search(
    model,
    src_ids: torch.Tensor,
    max_len: int | torch.Tensor,
    method: str = "cached",
    alpha: float = 1.0,
) -> list[Hypothesis]:
    """Decode a padded source batch (B, N) greedily and return each output with its log-probability and score.

    The score is the log-probability divided by the GNMT length penalty with exponent ``alpha``.
    """
    tokens, log_probs = [], []
    for step in greedy_steps(model, src_ids, max_len, method):
        tokens.append(step.tokens)
        log_probs.append(step.chosen_log_probs())

    outputs = _outputs(tokens, src_ids.shape[0])
    totals = torch.stack(log_probs, dim=1).sum(dim=1).tolist() if log_probs else [0.0] * len(outputs)
    return [
        Hypothesis(output, log_prob, log_prob / length_penalty(len(output), alpha))
        for output, log_prob in zip(outputs, totals)
    ]


def _outputs(step_tokens: list[torch.Tensor], batch: int) -> list[list[int]]:
    """Turn the (B,) tokens of each step into each sentence's output ids, dropping the PAD after it finished."""
    if not step_tokens:
        return [[] for _ in range(batch)]
    rows = torch.stack(step_tokens, dim=1).tolist()                # (B, steps)
    return [[token for token in row if token != PAD_ID] for row in rows]


def greedy_decode(
    model,
    src_ids: torch.Tensor,
    max_len: int | torch.Tensor,
    method: str = "cached",
) -> list[list[int]]:
    """Decode a padded source batch (B, N) and return each output's ids, ending at (and including) EOS if produced.

    ``max_len`` is the output limit, one int for the batch or a (B,) tensor with one per sentence.
    """
    return _outputs([step.tokens for step in greedy_steps(model, src_ids, max_len, method)], src_ids.shape[0])


def translate_sentences(
    model,
    tokenizers,
    sentences: list[str],
    batch_size: int = 64,
    max_len_a: float = 1.5,
    max_len_b: int = 10,
    method: str = "cached",
) -> list[str]:
    """Translate sentences with greedy decoding, in batches of similar length, and return detokenized text.

    ``tokenizers`` is a ``TokenizerPair`` or one joint ``Tokenizer``. Each sentence's output limit is
    a * its source length + b (end token included), so an output does not depend on the batch it is decoded in.
    """
    from nmt.data.batching import make_examples

    tokenizers = as_pair(tokenizers)
    model.eval()
    max_positions = model.config.max_positions
    ids = tokenizers.source.encode(sentences)
    examples = make_examples(ids, ids, max_positions)
    order = sorted(range(len(examples)), key=lambda i: len(examples[i].src))

    hypotheses: list[list[int]] = [[] for _ in sentences]
    device = next(model.parameters()).device
    for start in range(0, len(order), batch_size):
        chunk = order[start : start + batch_size]
        src = pad([examples[i].src for i in chunk]).to(device)
        src_lengths = src.ne(PAD_ID).sum(dim=1)
        limits = max_output_lengths(src_lengths, max_len_a, max_len_b, max_positions)
        for i, output in zip(chunk, greedy_decode(model, src, limits, method)):
            hypotheses[i] = output
    return tokenizers.target.decode(hypotheses)
