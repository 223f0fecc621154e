"""Greedy autoregressive decoding.

Decoding starts from the start-of-sequence token and appends the most probable token one step at a time,
until every sentence has produced the end-of-sequence token or the maximum length is reached. The causal
mask grows with the prefix.

Two methods give the same tokens:
- ``cached`` (default) keeps each decoder layer's self-attention keys and values and the encoder-decoder
  keys and values between steps, so each step computes only the newest position;
- ``textbook`` re-runs the decoder on the whole prefix at every step. It is the reference in tests.
"""

from __future__ import annotations

import torch

from nmt.data.batching import pad
from nmt.tokenizer import BOS_ID, EOS_ID, PAD_ID


def max_output_length(src_lengths: torch.Tensor, max_len_a: float, max_len_b: int, max_positions: int) -> int:
    """Return the decoding step limit: a * longest source + b, capped by the model's positions."""
    return min(int(max_len_a * int(src_lengths.max()) + max_len_b), max_positions - 1)


@torch.inference_mode()
def greedy_decode(
    model,
    src_ids: torch.Tensor,
    max_len: int,
    method: str = "cached",
) -> list[list[int]]:
    """Decode a padded source batch (B, N) and return each output's ids, ending at (and including) EOS if produced."""
    if method not in ("cached", "textbook"):
        raise ValueError(f"unknown decoding method {method!r}; use 'cached' or 'textbook'")
    batch = src_ids.shape[0]
    memory, src_key_padding_mask = model.encode(src_ids)

    prefix = torch.full((batch, 1), BOS_ID, dtype=torch.long, device=src_ids.device)
    finished = torch.zeros(batch, dtype=torch.bool, device=src_ids.device)
    cache = model.new_cache() if method == "cached" else None

    for _ in range(max_len):
        step_input = prefix[:, -1:] if cache is not None else prefix
        hidden, _ = model.decode(step_input, memory, src_key_padding_mask, cache)
        logits = model.output(hidden[:, -1])                      # (B, V), newest position only
        next_token = logits.argmax(dim=-1)
        next_token = next_token.masked_fill(finished, PAD_ID)     # finished rows only pad
        prefix = torch.cat([prefix, next_token[:, None]], dim=1)
        finished |= next_token.eq(EOS_ID)
        if bool(finished.all()):
            break

    outputs = []
    for row in prefix[:, 1:].tolist():
        tokens = [t for t in row if t != PAD_ID]
        if EOS_ID in tokens:
            tokens = tokens[: tokens.index(EOS_ID) + 1]
        outputs.append(tokens)
    return outputs


def translate_sentences(
    model,
    tokenizer,
    sentences: list[str],
    batch_size: int = 64,
    max_len_a: float = 1.5,
    max_len_b: int = 10,
    method: str = "cached",
) -> list[str]:
    """Translate sentences with greedy decoding, in batches of similar length, and return detokenized text."""
    from nmt.data.batching import make_examples

    model.eval()
    max_positions = model.config.max_positions
    ids = tokenizer.encode(sentences)
    examples = make_examples(ids, ids, max_positions)
    order = sorted(range(len(examples)), key=lambda i: len(examples[i].src))

    hypotheses: list[list[int]] = [[] for _ in sentences]
    device = next(model.parameters()).device
    for start in range(0, len(order), batch_size):
        chunk = order[start : start + batch_size]
        src = pad([examples[i].src for i in chunk]).to(device)
        src_lengths = src.ne(PAD_ID).sum(dim=1)
        max_len = max_output_length(src_lengths, max_len_a, max_len_b, max_positions)
        for i, output in zip(chunk, greedy_decode(model, src, max_len, method)):
            hypotheses[i] = output
    return tokenizer.decode(hypotheses)
