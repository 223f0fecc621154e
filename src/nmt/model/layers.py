"""Position-wise feed-forward network and the encoder and decoder layers.

Each sub-layer (attention or feed-forward) is wrapped in a residual connection and layer normalization.
``dropout`` is the residual dropout on each sub-layer's output; attention and activation dropout are separate.
Post-LN, as in the original paper: x = LayerNorm(x + Dropout(Sublayer(x))).
Pre-LN (``norm_first``): x = x + Dropout(Sublayer(LayerNorm(x))), with a final LayerNorm after the stack.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from nmt.model.attention import MultiHeadAttention
from nmt.model.dropout import Dropout


class FeedForward(nn.Module):
    """FFN(x) = max(0, x W_1 + b_1) W_2 + b_2, applied to every position separately."""

    def __init__(self, d_model: int, d_ff: int, dropout: float = 0.0) -> None:
        """``dropout`` applies to the hidden activations (activation dropout)."""
        super().__init__()
        self.W_1 = nn.Parameter(torch.empty(d_model, d_ff))
        self.b_1 = nn.Parameter(torch.zeros(d_ff))
        self.W_2 = nn.Parameter(torch.empty(d_ff, d_model))
        self.b_2 = nn.Parameter(torch.zeros(d_model))
        nn.init.xavier_uniform_(self.W_1)
        nn.init.xavier_uniform_(self.W_2)
        self.dropout = Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # F.linear fuses each bias add into the matmul and keeps bf16 autocast in bf16.
        hidden = F.relu(F.linear(x, self.W_1.t(), self.b_1))    # (B, L, d_ff)
        return F.linear(self.dropout(hidden), self.W_2.t(), self.b_2)


class EncoderLayer(nn.Module):
    """Self-attention over the source, then the feed-forward network."""

    def __init__(
        self, d_model: int, n_heads: int, d_ff: int, dropout: float, norm_first: bool,
        attention_dropout: float = 0.0, activation_dropout: float = 0.0,
    ) -> None:
        super().__init__()
        self.self_attn = MultiHeadAttention(d_model, n_heads, attention_dropout)
        self.ffn = FeedForward(d_model, d_ff, activation_dropout)
        self.norm1 = nn.LayerNorm(d_model)
        self.norm2 = nn.LayerNorm(d_model)
        self.dropout = Dropout(dropout)
        self.norm_first = norm_first

    def forward(self, x: torch.Tensor, src_attn_mask: torch.Tensor) -> torch.Tensor:
        if self.norm_first:
            h = self.norm1(x)
            x = x + self.dropout(self.self_attn(h, attn_mask=src_attn_mask)[0])
            return x + self.dropout(self.ffn(self.norm2(x)))

        x = self.norm1(x + self.dropout(self.self_attn(x, attn_mask=src_attn_mask)[0]))
        return self.norm2(x + self.dropout(self.ffn(x)))


class DecoderLayer(nn.Module):
    """Masked self-attention over the target prefix, encoder-decoder attention, then the feed-forward network."""

    def __init__(
        self, d_model: int, n_heads: int, d_ff: int, dropout: float, norm_first: bool,
        attention_dropout: float = 0.0, activation_dropout: float = 0.0,
    ) -> None:
        super().__init__()
        self.self_attn = MultiHeadAttention(d_model, n_heads, attention_dropout)
        self.cross_attn = MultiHeadAttention(d_model, n_heads, attention_dropout)
        self.ffn = FeedForward(d_model, d_ff, activation_dropout)
        self.norm1 = nn.LayerNorm(d_model)
        self.norm2 = nn.LayerNorm(d_model)
        self.norm3 = nn.LayerNorm(d_model)
        self.dropout = Dropout(dropout)
        self.norm_first = norm_first

    def forward(
        self,
        y: torch.Tensor,
        memory: torch.Tensor,
        self_attn_mask: torch.Tensor | None,
        cross_attn_mask: torch.Tensor,
        cache: dict | None = None,
        need_weights: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Return the new target states (B, M, d) and, with ``need_weights``, the cross-attention weights."""
        self_cache = cache.setdefault("self", {}) if cache is not None else None
        cross_cache = cache.setdefault("cross", {}) if cache is not None else None

        if self.norm_first:
            h = self.norm1(y)
            y = y + self.dropout(self.self_attn(h, attn_mask=self_attn_mask, cache=self_cache)[0])
            context, weights = self.cross_attn(self.norm2(y), memory, cross_attn_mask, cross_cache, need_weights)
            y = y + self.dropout(context)
            return y + self.dropout(self.ffn(self.norm3(y))), weights

        y = self.norm1(y + self.dropout(self.self_attn(y, attn_mask=self_attn_mask, cache=self_cache)[0]))
        context, weights = self.cross_attn(y, memory, cross_attn_mask, cross_cache, need_weights)
        y = self.norm2(y + self.dropout(context))
        return self.norm3(y + self.dropout(self.ffn(y))), weights
