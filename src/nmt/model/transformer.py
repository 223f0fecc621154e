"""The Transformer encoder-decoder: embeddings, sinusoidal positions, encoder, decoder, output layer.

Shapes: B = batch, N = source length, M = target length, d = d_model, V = vocabulary size.
Training (teacher forcing) runs the decoder on the whole shifted target at once under a causal mask and
returns logits of shape (B, M, V). Inference calls ``encode`` once and ``decode`` once per output token,
with an optional key/value cache so that each step only computes the newest position.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields

import torch
from torch import nn

from nmt.model.attention import causal_mask, padding_mask_to_attn_mask
from nmt.model.dropout import Dropout
from nmt.model.layers import DecoderLayer, EncoderLayer


@dataclass
class ModelConfig:
    """Sizes and options of the encoder-decoder; mirrors the ``model`` group of the Hydra config."""

    src_vocab_size: int
    tgt_vocab_size: int
    d_model: int = 256
    n_heads: int = 4
    n_encoder_layers: int = 3
    n_decoder_layers: int = 3
    d_ff: int = 1024
    dropout: float = 0.1
    attention_dropout: float = 0.0
    activation_dropout: float = 0.0
    norm_first: bool = False
    tie_embeddings: bool = False
    max_positions: int = 256
    pad_id: int = 0

    @classmethod
    def from_dict(cls, values: dict, **overrides) -> "ModelConfig":
        """Build from a config mapping, ignoring keys that are not model sizes (such as ``name``)."""
        known = {f.name for f in fields(cls)}
        merged = {k: v for k, v in {**values, **overrides}.items() if k in known}
        return cls(**merged)

    def to_dict(self) -> dict:
        return asdict(self)


def sinusoidal_positions(max_positions: int, d_model: int) -> torch.Tensor:
    """Return the (max_positions, d_model) table PE[pos, 2i] = sin(pos / 10000^(2i/d)), PE[pos, 2i+1] = cos(...)."""
    position = torch.arange(max_positions, dtype=torch.float64)[:, None]
    inverse_frequency = torch.exp(-math.log(10000.0) * torch.arange(0, d_model, 2, dtype=torch.float64) / d_model)
    table = torch.zeros(max_positions, d_model, dtype=torch.float64)
    table[:, 0::2] = torch.sin(position * inverse_frequency)
    table[:, 1::2] = torch.cos(position * inverse_frequency[: d_model // 2])
    return table.float()


class OutputLayer(nn.Module):
    """logits = h W_out + b_out. With tied embeddings, W_out is the transposed target embedding matrix."""

    def __init__(self, d_model: int, vocab_size: int, tied_embedding: nn.Embedding | None = None) -> None:
        super().__init__()
        self.tied_embedding = tied_embedding
        if tied_embedding is None:
            self.W_out = nn.Parameter(torch.empty(d_model, vocab_size))
            nn.init.xavier_uniform_(self.W_out)
        self.b_out = nn.Parameter(torch.zeros(vocab_size))

    @property
    def weight(self) -> torch.Tensor:
        """W_out as a (d_model, V) matrix, shared with the target embedding when tied."""
        if self.tied_embedding is not None:
            return self.tied_embedding.weight.t()
        return self.W_out

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.linear(h, self.weight.t(), self.b_out)


class Transformer(nn.Module):
    """Encoder-decoder Transformer ("Attention Is All You Need", Vaswani et al., 2017) in plain PyTorch."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        c = config
        if c.tie_embeddings and c.src_vocab_size != c.tgt_vocab_size:
            raise ValueError(
                f"tie_embeddings needs one joint vocabulary, got src_vocab_size={c.src_vocab_size} and "
                f"tgt_vocab_size={c.tgt_vocab_size}; train a joint tokenizer or set model.tie_embeddings=false"
            )

        self.src_embed = nn.Embedding(c.src_vocab_size, c.d_model)
        self.tgt_embed = self.src_embed if c.tie_embeddings else nn.Embedding(c.tgt_vocab_size, c.d_model)
        for embedding in {id(self.src_embed): self.src_embed, id(self.tgt_embed): self.tgt_embed}.values():
            nn.init.normal_(embedding.weight, mean=0.0, std=c.d_model**-0.5)
        self.register_buffer("positions", sinusoidal_positions(c.max_positions, c.d_model), persistent=False)
        self.embed_dropout = Dropout(c.dropout)

        self.encoder_layers = nn.ModuleList(
            EncoderLayer(c.d_model, c.n_heads, c.d_ff, c.dropout, c.norm_first, c.attention_dropout, c.activation_dropout)
            for _ in range(c.n_encoder_layers)
        )
        self.decoder_layers = nn.ModuleList(
            DecoderLayer(c.d_model, c.n_heads, c.d_ff, c.dropout, c.norm_first, c.attention_dropout, c.activation_dropout)
            for _ in range(c.n_decoder_layers)
        )
        self.encoder_norm = nn.LayerNorm(c.d_model) if c.norm_first else nn.Identity()
        self.decoder_norm = nn.LayerNorm(c.d_model) if c.norm_first else nn.Identity()
        self.output = OutputLayer(c.d_model, c.tgt_vocab_size, self.tgt_embed if c.tie_embeddings else None)

    def embed(self, embedding: nn.Embedding, ids: torch.Tensor, start_position: int = 0) -> torch.Tensor:
        """Embed ids (B, L), scale by sqrt(d_model) and add the sinusoidal positions from ``start_position``."""
        length = ids.shape[1]
        if start_position + length > self.config.max_positions:
            raise ValueError(
                f"sequence of {start_position + length} positions exceeds model.max_positions="
                f"{self.config.max_positions}; truncate the input or raise max_positions"
            )
        x = embedding(ids) * math.sqrt(self.config.d_model)
        x = x + self.positions[start_position : start_position + length]
        return self.embed_dropout(x)

    def encode(self, src_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Encode source ids (B, N) and return (memory (B, N, d), source key padding mask (B, N), True at padding)."""
        src_key_padding_mask = src_ids.eq(self.config.pad_id)
        src_attn_mask = padding_mask_to_attn_mask(src_key_padding_mask)

        x = self.embed(self.src_embed, src_ids)
        for layer in self.encoder_layers:
            x = layer(x, src_attn_mask)
        return self.encoder_norm(x), src_key_padding_mask

    def decode(
        self,
        tgt_in: torch.Tensor,
        memory: torch.Tensor,
        src_key_padding_mask: torch.Tensor,
        cache: list[dict] | None = None,
        need_weights: bool = False,
    ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Run the decoder and return (hidden states (B, M, d), per-layer cross-attention weights if asked).

        Without a cache, ``tgt_in`` (B, M) is the whole prefix and a causal mask keeps position i from
        seeing positions j > i. With a cache (one dict per layer, from ``new_cache``), ``tgt_in`` holds only
        the newest tokens, whose positions continue after the cached ones.
        """
        start_position = 0
        if cache is not None and "k" in cache[0].get("self", {}):
            start_position = cache[0]["self"]["k"].shape[2]
        length = tgt_in.shape[1]

        # A new token may attend to every cached position and, within this call, causally.
        self_attn_mask = None
        if length > 1 or start_position == 0:
            self_attn_mask = torch.ones(length, start_position + length, dtype=torch.bool, device=tgt_in.device)
            self_attn_mask[:, start_position:] = causal_mask(length, tgt_in.device)
        cross_attn_mask = padding_mask_to_attn_mask(src_key_padding_mask)

        y = self.embed(self.tgt_embed, tgt_in, start_position)
        cross_weights = []
        for index, layer in enumerate(self.decoder_layers):
            layer_cache = cache[index] if cache is not None else None
            y, weights = layer(y, memory, self_attn_mask, cross_attn_mask, layer_cache, need_weights)
            if need_weights:
                cross_weights.append(weights)
        return self.decoder_norm(y), cross_weights

    def new_cache(self) -> list[dict]:
        """Return an empty key/value cache, one dict per decoder layer."""
        return [{} for _ in self.decoder_layers]

    def forward(self, src_ids: torch.Tensor, tgt_in: torch.Tensor) -> torch.Tensor:
        """Teacher forcing: return logits (B, M, V) for every target position at once."""
        memory, src_key_padding_mask = self.encode(src_ids)
        hidden, _ = self.decode(tgt_in, memory, src_key_padding_mask)
        return self.output(hidden)

    def named_weights(self) -> dict[str, torch.Tensor]:
        """Return every weight and bias the math names, under readable names, in model order.

        Names look like ``encoder.0.self_attn.W_Q``, ``decoder.1.cross_attn.W_O``, ``decoder.0.ffn.b_1`` and
        ``output.W_out``. When embeddings are tied, ``output.W_out`` is the target embedding matrix
        (stored as V x d, used transposed).
        """
        weights: dict[str, torch.Tensor] = {}
        for index, layer in enumerate(self.encoder_layers):
            self._add_attention(weights, f"encoder.{index}.self_attn", layer.self_attn)
            self._add_ffn(weights, f"encoder.{index}.ffn", layer.ffn)
        for index, layer in enumerate(self.decoder_layers):
            self._add_attention(weights, f"decoder.{index}.self_attn", layer.self_attn)
            self._add_attention(weights, f"decoder.{index}.cross_attn", layer.cross_attn)
            self._add_ffn(weights, f"decoder.{index}.ffn", layer.ffn)
        weights["output.W_out"] = self.tgt_embed.weight if self.config.tie_embeddings else self.output.W_out
        weights["output.b_out"] = self.output.b_out
        return weights

    @staticmethod
    def _add_attention(weights: dict, prefix: str, attention) -> None:
        for name in ("W_Q", "W_K", "W_V", "W_O"):
            weights[f"{prefix}.{name}"] = getattr(attention, name)

    @staticmethod
    def _add_ffn(weights: dict, prefix: str, ffn) -> None:
        for name in ("W_1", "b_1", "W_2", "b_2"):
            weights[f"{prefix}.{name}"] = getattr(ffn, name)

    def num_parameters(self) -> int:
        """Count trainable parameters once each (tied matrices count once)."""
        return sum(p.numel() for p in self.parameters() if p.requires_grad)
