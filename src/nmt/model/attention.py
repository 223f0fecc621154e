"""Multi-head scaled dot-product attention, with the projections named as in "Attention Is All You Need".

For queries X_q (B, M, d) and keys/values X_kv (B, N, d), each head h computes

    Q = X_q W_Q,  K = X_kv W_K,  V = X_kv W_V          (split into heads of size d_k = d / n_heads)
    A = softmax(Q K^T / sqrt(d_k) + mask)              (B, heads, M, N)
    head outputs = A V, concatenated, then projected by W_O.

Weights are stored as (d_in, d_out) matrices and applied as ``x @ W`` so the code reads like the math.
The projections have no biases, as in "Attention Is All You Need".
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


class MultiHeadAttention(nn.Module):
    """Multi-head attention with W_Q, W_K, W_V, W_O, usable as self- or encoder-decoder attention."""

    def __init__(self, d_model: int, n_heads: int, dropout: float = 0.0) -> None:
        """``dropout`` applies to the attention weights (attention dropout)."""
        super().__init__()
        if d_model % n_heads != 0:
            raise ValueError(f"d_model={d_model} is not divisible by n_heads={n_heads}; pick sizes with d_model % n_heads == 0")
        self.d_model = d_model
        self.n_heads = n_heads
        self.d_k = d_model // n_heads
        self.dropout = dropout

        self.W_Q = nn.Parameter(torch.empty(d_model, d_model))
        self.W_K = nn.Parameter(torch.empty(d_model, d_model))
        self.W_V = nn.Parameter(torch.empty(d_model, d_model))
        self.W_O = nn.Parameter(torch.empty(d_model, d_model))
        for weight in (self.W_Q, self.W_K, self.W_V, self.W_O):
            nn.init.xavier_uniform_(weight)

    def split_heads(self, x: torch.Tensor) -> torch.Tensor:
        """Reshape (B, L, d) into (B, heads, L, d_k)."""
        batch, length, _ = x.shape
        return x.view(batch, length, self.n_heads, self.d_k).transpose(1, 2)

    def project_keys_values(self, x_kv: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Return the per-head keys and values (B, heads, N, d_k) of ``x_kv``."""
        kv = x_kv @ torch.cat((self.W_K, self.W_V), dim=1)                       # (B, N, 2d)
        k, v = kv.split(self.d_model, dim=-1)
        return self.split_heads(k), self.split_heads(v)

    def qkv_weight(self, cache: dict | None) -> torch.Tensor:
        """Return [W_Q | W_K | W_V] (d, 3d). With a decoding cache, it is concatenated once and kept there."""
        if cache is None:
            return torch.cat((self.W_Q, self.W_K, self.W_V), dim=1)
        if "W_QKV" not in cache:
            cache["W_QKV"] = torch.cat((self.W_Q, self.W_K, self.W_V), dim=1)
        return cache["W_QKV"]

    def forward(
        self,
        x_q: torch.Tensor,
        x_kv: torch.Tensor | None = None,
        attn_mask: torch.Tensor | None = None,
        cache: dict | None = None,
        need_weights: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Attend from ``x_q`` (B, M, d) to ``x_kv`` (B, N, d) and return (output (B, M, d), weights or None).

        ``attn_mask`` is boolean and broadcastable to (B, heads, M, N): True where a query may attend to a key.
        ``cache`` stores keys and values between decoding steps: for self-attention (``x_kv`` None) the new
        keys/values are appended to ``cache["k"]``/``cache["v"]`` (see ``append_keys_values``); for
        encoder-decoder attention they are computed from ``x_kv`` on the first call and reused afterwards.
        ``need_weights`` returns the attention weights (B, heads, M, N), computed without dropout fusion.
        """
        if x_kv is None:
            # Self-attention: one matmul with [W_Q | W_K | W_V] gives the queries, keys and values.
            qkv = x_q @ self.qkv_weight(cache)                                  # (B, M, 3d)
            q, k, v = (self.split_heads(part) for part in qkv.split(self.d_model, dim=-1))
            if cache is not None:
                k, v = append_keys_values(cache, k, v)
        else:
            if cache is not None and "k" in cache:
                k, v = cache["k"], cache["v"]
            else:
                k, v = self.project_keys_values(x_kv)
                if cache is not None:
                    cache["k"], cache["v"] = k, v
            q = self.split_heads(x_q @ self.W_Q)                                  # (B, heads, M, d_k)

        dropout_p = self.dropout if self.training else 0.0

        # Training uses the explicit softmax(Q K^T / sqrt(d_k)) V, because the fused CPU kernel's backward pass
        # is slow for small heads (measured on torch 2.13). Inference uses the fused kernel.
        if need_weights or self.training:
            scores = q @ k.transpose(-2, -1) / math.sqrt(self.d_k)  # (B, heads, M, N)
            if attn_mask is not None:
                scores = scores.masked_fill(~attn_mask, float("-inf"))
            weights = torch.softmax(scores, dim=-1)
            context = F.dropout(weights, dropout_p, self.training) @ v
        else:
            weights = None
            context = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask)

        if not need_weights:
            weights = None
        batch, _, length, _ = context.shape
        context = context.transpose(1, 2).reshape(batch, length, self.d_model)  # concatenate heads
        return context @ self.W_O, weights


def padding_mask_to_attn_mask(key_padding_mask: torch.Tensor) -> torch.Tensor:
    """Turn a key padding mask (B, N), True at padding, into an attention mask (B, 1, 1, N), True where allowed."""
    return ~key_padding_mask[:, None, None, :]


def causal_mask(length: int, device: torch.device | None = None) -> torch.Tensor:
    """Return the (length, length) boolean mask that lets position i attend to position j exactly when j <= i."""
    return torch.ones(length, length, dtype=torch.bool, device=device).tril()


# Positions a self-attention cache makes room for at first; it doubles whenever it is full.
MIN_CACHE_CAPACITY = 16


def append_keys_values(cache: dict, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Append new keys and values (B, heads, L, d_k) to a self-attention cache and return all of them.

    The cache keeps them in preallocated buffers with spare positions, so a decoding step copies only its new
    positions. ``cache["k"]`` and ``cache["v"]`` are views of the filled part (B, heads, length, d_k).
    """
    length = cache["k"].shape[2] if "k" in cache else 0
    new_length = length + k.shape[2]
    buffers = cache.get("buffers")
    if buffers is None or buffers[0].shape[2] < new_length:
        capacity = max(2 * new_length, MIN_CACHE_CAPACITY)
        grown = tuple(x.new_empty(x.shape[0], x.shape[1], capacity, x.shape[3]) for x in (k, v))
        if length:
            grown[0][:, :, :length] = cache["k"]
            grown[1][:, :, :length] = cache["v"]
        buffers = cache["buffers"] = grown

    buffers[0][:, :, length:new_length] = k
    buffers[1][:, :, length:new_length] = v
    cache["k"], cache["v"] = buffers[0][:, :, :new_length], buffers[1][:, :, :new_length]
    return cache["k"], cache["v"]


def select_cache_rows(cache: dict, rows: torch.Tensor) -> None:
    """Keep only ``rows`` (a boolean mask or an index tensor) of one attention cache's keys and values, in place."""
    if "k" not in cache:
        return
    if "buffers" in cache:
        length = cache["k"].shape[2]
        cache["buffers"] = tuple(buffer[rows] for buffer in cache["buffers"])
        cache["k"], cache["v"] = (buffer[:, :, :length] for buffer in cache["buffers"])
    else:
        cache["k"], cache["v"] = cache["k"][rows], cache["v"][rows]
