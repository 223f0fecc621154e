"""Token-level cross-entropy over the real (non-padding) target tokens, with optional label smoothing.

For T real target tokens y_t with predicted distributions p_t:

    loss = -(1/T) * sum_t [ (1 - eps) * log p_t(y_t) + (eps / V) * sum_v log p_t(v) ]

which is -(1/T) * sum_t log p_t(y_t) when eps = 0. Padding positions are dropped before the output layer,
so they contribute nothing to the loss, its gradient, or the log-softmax work.

The output layer and the loss run over chunks of about ``LOSS_CHUNK_ELEMENTS`` logits. One (T, V) tensor
for a whole batch is tens of MB. Measured on CPU (2,000 tokens, vocabulary 8,000, one thread), the output
layer with its loss took 270 ms forward and backward in one piece and 107 ms in chunks of 256 rows. The likely
cause is that glibc's malloc returns such large blocks as fresh ``mmap`` pages, which fault on first touch.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

LOSS_CHUNK_ELEMENTS = 2**21     # logits per chunk: 8 MB in float32


def token_cross_entropy(logits: torch.Tensor, targets: torch.Tensor, label_smoothing: float = 0.0) -> torch.Tensor:
    """Mean cross-entropy of ``logits`` (T, V) against ``targets`` (T,), both real tokens only.

    bf16 and fp16 logits are upcast to float32 first; float64 logits stay float64.
    """
    dtype = torch.promote_types(logits.dtype, torch.float32)
    return F.cross_entropy(logits.to(dtype), targets, label_smoothing=label_smoothing)


def sequence_loss(
    model,
    src_ids: torch.Tensor,
    tgt_in: torch.Tensor,
    tgt_out: torch.Tensor,
    pad_id: int,
    label_smoothing: float = 0.0,
) -> tuple[torch.Tensor, int]:
    """Teacher-forced loss of a batch: return (mean loss over real target tokens, number of real tokens).

    ``tgt_in`` is the target shifted right (start token first); ``tgt_out`` is the target followed by the
    end token, padded with ``pad_id``. Both are (B, M).
    """
    memory, src_key_padding_mask = model.encode(src_ids)
    hidden, _ = model.decode(tgt_in, memory, src_key_padding_mask)     # (B, M, d)

    real = tgt_out.ne(pad_id)                                           # (B, M)
    hidden, targets = hidden[real], tgt_out[real]                       # (T, d), (T,)
    n_tokens = len(targets)

    if n_tokens == 0:
        return hidden.sum() * 0.0, 0                                    # zero, and still part of the graph

    rows = max(1, LOSS_CHUNK_ELEMENTS // model.output.b_out.numel())
    loss_sum = 0.0
    for hidden_chunk, target_chunk in zip(hidden.split(rows), targets.split(rows)):
        logits = model.output(hidden_chunk)                             # (rows, V)
        loss_sum = loss_sum + token_cross_entropy(logits, target_chunk, label_smoothing) * len(target_chunk)
    return loss_sum / n_tokens, n_tokens
