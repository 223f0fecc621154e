"""Batched beam search with the key/value-cached decoder and the GNMT length penalty.

Each sentence of a padded batch has k beam slots, stored as rows ``b * k .. b * k + k - 1`` of every
(B * k, ...) tensor, the decoder cache included. One step, for every sentence at once:

1. Extend each live hypothesis by every token and keep the k extensions with the highest log-probability.
   All extensions have the same length, so this is also the ranking by length-penalized score.
2. An extension that ends in EOS moves to the sentence's finished list with score log P / lp(|Y|). Its
   slot stays empty for the rest of the step, and the next step refills the beam from the extensions of
   the live hypotheses. Live hypotheses therefore never contain EOS, and finished ones end with exactly one.
3. Reorder each layer's self-attention cache to follow the surviving slots. Slots of one sentence share
   the same encoder-decoder keys and values, so that cache only changes when finished sentences leave.

A sentence stops when one of these holds:

- it has no live hypothesis (every kept extension ended in EOS);
- its hypotheses reached its output limit: the live ones then join the finished list without EOS;
- it has at least ``n_best`` finished hypotheses and the ``n_best``-th best finished score is at least the
  best score a live hypothesis can still reach. Log-probabilities only fall as tokens are added, so a
  live hypothesis with log-probability s <= 0 at length t ends with a score of at most
  s / max(lp(t + 1), lp(limit)): the length penalty is monotone in the length, and the output has between
  t + 1 and ``limit`` tokens. This bound holds for any alpha, so stopping never discards an output that
  could still win. It is looser than the usual rule of stopping once k hypotheses have finished
  (fairseq's default), so decoding runs more steps with alpha > 0.

With beam size 1 this is greedy decoding: the one kept extension is the argmax token, and choosing EOS
leaves no live hypothesis. Padding and the start token are never candidates (see ``FORBIDDEN_OUTPUT_IDS``).
"""

from __future__ import annotations

import heapq
import math

import torch

from nmt.decoding.common import Hypothesis, as_output_limits, length_penalty, output_log_probs
from nmt.model.attention import select_cache_rows as select_attention_rows
from nmt.tokenizer import BOS_ID, EOS_ID


def _select_cache_rows(cache: list[dict], rows: torch.Tensor, attention: str) -> None:
    """Replace the ``attention`` ("self" or "cross") keys and values of every layer by the given rows."""
    for layer_cache in cache:
        select_attention_rows(layer_cache[attention], rows)


def _live_bound(best_live_log_prob: float, length: int, limit: int, alpha: float) -> float:
    """Return the highest score that a live hypothesis of ``length`` tokens can still reach."""
    if best_live_log_prob == -math.inf:
        return -math.inf
    largest_penalty = max(length_penalty(length + 1, alpha), length_penalty(limit, alpha))
    return best_live_log_prob / largest_penalty


@torch.inference_mode()
def beam_search(
    model,
    src_ids: torch.Tensor,
    max_len: int | torch.Tensor,
    beam_size: int = 5,
    alpha: float = 1.0,
    n_best: int = 1,
) -> list[list[Hypothesis]]:
    """Decode a padded source batch (B, N) and return, per sentence, up to ``n_best`` hypotheses, best first.

    ``max_len`` is the output limit in tokens (EOS included), one int for the batch or a (B,) tensor with
    one per sentence. ``alpha`` is the exponent of the GNMT length penalty; hypotheses are sorted by
    score = log-probability / ((5 + length) / 6) ** alpha, and equal scores keep the order in which the
    hypotheses finished. Fewer than ``n_best`` come back only when the search found fewer.
    """
    if beam_size < 1:
        raise ValueError(f"beam_size={beam_size} must be at least 1")
    if not 1 <= n_best <= beam_size:
        raise ValueError(f"n_best={n_best} must be between 1 and beam_size={beam_size}")

    batch = src_ids.shape[0]
    device = src_ids.device
    k = beam_size
    limits = as_output_limits(max_len, batch, device).tolist()

    # The first step runs once per sentence, before the k slots exist.
    memory, src_key_padding_mask = model.encode(src_ids)
    cache = model.new_cache()
    start = torch.full((batch, 1), BOS_ID, dtype=torch.long, device=device)
    hidden, _ = model.decode(start, memory, src_key_padding_mask, cache)
    log_probs = output_log_probs(model.output(hidden[:, -1]))                # (B, V)

    slots = torch.arange(batch, device=device).repeat_interleave(k)
    _select_cache_rows(cache, slots, "self")
    _select_cache_rows(cache, slots, "cross")
    memory, src_key_padding_mask, log_probs = memory[slots], src_key_padding_mask[slots], log_probs[slots]

    # Only slot 0 contains a hypothesis at first, so the first top-k picks k different tokens.
    beam_log_probs = torch.full((batch, k), -math.inf, device=device)
    beam_log_probs[:, 0] = 0.0
    prefixes = torch.empty((batch * k, 0), dtype=torch.long, device=device)
    active = list(range(batch))                # batch row of each sentence still decoding
    finished: list[list[Hypothesis]] = [[] for _ in range(batch)]
    vocab_size = log_probs.shape[-1]

    length = 0
    while True:
        length += 1
        n_active = len(active)

        # 1. The k best extensions of each sentence's live hypotheses, best first.
        candidates = (beam_log_probs.view(-1, 1) + log_probs).view(n_active, k * vocab_size)
        top_log_probs, top_index = candidates.topk(k, dim=1)                  # (A, k)
        parent_slot = top_index.div(vocab_size, rounding_mode="floor")
        tokens = top_index.remainder(vocab_size)
        parent_rows = (torch.arange(n_active, device=device)[:, None] * k + parent_slot).view(-1)
        prefixes = torch.cat([prefixes[parent_rows], tokens.view(-1, 1)], dim=1)

        # 2. Extensions ending in EOS finish. At the output limit the live ones finish without EOS.
        valid = torch.isfinite(top_log_probs)
        ends = valid & tokens.eq(EOS_ID)
        at_limit = torch.tensor([length >= limits[row] for row in active], device=device)
        finishing = ends | (valid & at_limit[:, None])
        live = valid & ~finishing
        _record_finished(finished, active, finishing, prefixes, top_log_probs, alpha, k)
        beam_log_probs = top_log_probs.masked_fill(~live, -math.inf)

        # 3. Decide which sentences stop, then drop them from every batched tensor.
        best_live = beam_log_probs.max(dim=1).values.tolist()
        no_live = (~live.any(dim=1)).tolist()
        stop = []
        for index, row in enumerate(active):
            bound = _live_bound(best_live[index], length, limits[row], alpha)
            stop.append(no_live[index] or _cannot_improve(finished[row], n_best, bound))
        if all(stop):
            break

        self_rows = parent_rows
        if any(stop):
            keep = torch.tensor([not s for s in stop], device=device)
            kept_rows = (torch.arange(n_active, device=device)[keep][:, None] * k + torch.arange(k, device=device))
            kept_rows = kept_rows.view(-1)
            self_rows = parent_rows[kept_rows]
            _select_cache_rows(cache, kept_rows, "cross")
            memory, src_key_padding_mask = memory[kept_rows], src_key_padding_mask[kept_rows]
            prefixes, tokens = prefixes[kept_rows], tokens.view(-1)[kept_rows]
            beam_log_probs = beam_log_probs[keep]
            active = [row for row, s in zip(active, stop) if not s]
        _select_cache_rows(cache, self_rows, "self")

        hidden, _ = model.decode(tokens.reshape(-1, 1), memory, src_key_padding_mask, cache)
        log_probs = output_log_probs(model.output(hidden[:, -1]))

    return [sorted(hypotheses, key=lambda h: -h.score)[:n_best] for hypotheses in finished]


def _record_finished(
    finished: list[list[Hypothesis]],
    active: list[int],
    finishing: torch.Tensor,
    prefixes: torch.Tensor,
    top_log_probs: torch.Tensor,
    alpha: float,
    beam_size: int,
) -> None:
    """Append the hypotheses marked in ``finishing`` (A, k) to their sentence's finished list."""
    positions = finishing.nonzero().tolist()
    if not positions:
        return
    flat = torch.tensor([index * beam_size + slot for index, slot in positions], device=prefixes.device)
    outputs = prefixes[flat].tolist()
    log_probs = top_log_probs.view(-1)[flat].tolist()
    for (index, _), output, log_prob in zip(positions, outputs, log_probs):
        score = log_prob / length_penalty(len(output), alpha)
        finished[active[index]].append(Hypothesis(output, log_prob, score))


def _cannot_improve(hypotheses: list[Hypothesis], n_best: int, live_bound: float) -> bool:
    """Return True when the ``n_best`` best finished hypotheses all score at least ``live_bound``."""
    if len(hypotheses) < n_best:
        return False
    nth_best = heapq.nlargest(n_best, (h.score for h in hypotheses))[-1]
    return nth_best >= live_bound
