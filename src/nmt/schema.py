"""Typed schema of the composed configuration, one dataclass per config group.

``nmt.config.check`` merges a config into ``OmegaConf.structured(Config)``, so an unknown key or a value of
the wrong type is rejected before any stage starts. The schema is not part of ``conf/config.yaml``'s
defaults list because DVC composes ``conf/`` without importing this package.

A key that is added to a YAML file in ``conf/`` must be added here too.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, List, Optional

from omegaconf import MISSING


@dataclass
class DataSchema:
    name: str = MISSING
    src_lang: str = MISSING
    tgt_lang: str = MISSING
    local_dir: Optional[str] = None
    splits: List[str] = MISSING
    max_train_pairs: Optional[int] = None
    max_eval_pairs: Optional[int] = None
    max_length: Optional[int] = None
    max_length_ratio: Optional[float] = None


@dataclass
class ModelSchema:
    name: str = MISSING
    d_model: int = MISSING
    n_heads: int = MISSING
    n_encoder_layers: int = MISSING
    n_decoder_layers: int = MISSING
    d_ff: int = MISSING
    dropout: float = MISSING
    attention_dropout: float = 0.0
    activation_dropout: float = 0.0
    norm_first: bool = MISSING
    tie_embeddings: bool = MISSING
    max_positions: int = MISSING


@dataclass
class OptimSchema:
    name: str = MISSING
    lr: float = MISSING
    betas: Optional[List[float]] = None
    eps: Optional[float] = None
    weight_decay: Optional[float] = None
    scheduler: str = MISSING
    warmup_steps: int = MISSING
    grad_clip: Optional[float] = None
    cooldown_fraction: Optional[float] = None


@dataclass
class TrainerSchema:
    accelerator: str = MISSING
    devices: Any = MISSING  # an int, "auto" or a list of device ids, as Lightning's Trainer accepts
    num_nodes: int = MISSING
    strategy: str = MISSING
    precision: str = MISSING
    max_epochs: int = MISSING
    max_time_minutes: Optional[float] = None
    deterministic: bool = MISSING


@dataclass
class TokenizerSchema:
    model_type: str = MISSING
    vocab_size: int = MISSING
    joint: bool = MISSING
    character_coverage: float = MISSING
    byte_fallback: bool = MISSING
    lowercase: bool = False


@dataclass
class TrainSchema:
    max_tokens: int = MISSING
    label_smoothing: float = MISSING
    target_loss: Optional[float] = None
    log_every_n_steps: int = MISSING
    grad_norm_every_n_steps: int = MISSING
    val_samples: int = MISSING
    val_bleu: bool = MISSING
    monitor: str = MISSING
    early_stopping_patience: Optional[int] = None
    average_last_n: int = MISSING
    checkpoint_every_n_steps: Optional[int] = None


@dataclass
class DecodeSchema:
    beam_size: int = MISSING
    length_penalty: float = MISSING
    method: str = MISSING
    batch_size: int = MISSING
    max_len_a: float = MISSING
    max_len_b: int = MISSING


@dataclass
class EvaluateSchema:
    test_sets: List[str] = MISSING
    samples: int = MISSING
    length_penalty_grid: Optional[List[float]] = None


@dataclass
class MlflowSchema:
    tracking_uri: str = MISSING
    experiment: str = MISSING


@dataclass
class Config:
    """The whole composed configuration, as ``params.yaml`` contains it."""

    seed: int = MISSING
    data: DataSchema = field(default_factory=DataSchema)
    model: ModelSchema = field(default_factory=ModelSchema)
    optim: OptimSchema = field(default_factory=OptimSchema)
    trainer: TrainerSchema = field(default_factory=TrainerSchema)
    tokenizer: TokenizerSchema = field(default_factory=TokenizerSchema)
    train: TrainSchema = field(default_factory=TrainSchema)
    decode: DecodeSchema = field(default_factory=DecodeSchema)
    evaluate: EvaluateSchema = field(default_factory=EvaluateSchema)
    mlflow: MlflowSchema = field(default_factory=MlflowSchema)
