"""Load, compose and check the configuration.

The stages read ``params.yaml``, the composed default configuration that DVC tracks. ``compose`` builds the
same thing from the Hydra groups in ``conf/`` with overrides, for tests, the CLI and Hydra sweeps.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

HYDRA_VERSION_BASE = "1.3"


class ConfigError(ValueError):
    """Raised when a configuration value is invalid, before any work starts."""


def load_params(path: str | os.PathLike = "params.yaml") -> DictConfig:
    """Load and check the composed configuration that DVC passes to the stages."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path} not found; run from the project folder, where params.yaml lives")
    cfg = OmegaConf.load(path)
    check(cfg)
    return cfg


def compose(overrides: list[str] | None = None, config_dir: str | os.PathLike = "conf") -> DictConfig:
    """Compose ``conf/config.yaml`` with Hydra overrides such as ``["model=seed_minimal"]``."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    with initialize_config_dir(config_dir=str(Path(config_dir).resolve()), version_base=HYDRA_VERSION_BASE):
        cfg = hydra_compose(config_name="config", overrides=list(overrides or []))
    check(cfg)
    return cfg


def check(cfg: DictConfig) -> None:
    """Reject impossible values with a message that names the key, the value and the fix."""
    model = cfg.model
    if model.d_model % model.n_heads != 0:
        raise ConfigError(
            f"model.d_model={model.d_model} is not divisible by model.n_heads={model.n_heads}; "
            "choose sizes with d_model % n_heads == 0"
        )
    for key in ("d_model", "n_heads", "n_encoder_layers", "n_decoder_layers", "d_ff", "max_positions"):
        if model[key] < 1:
            raise ConfigError(f"model.{key}={model[key]} must be a positive integer")
    if not 0.0 <= model.dropout < 1.0:
        raise ConfigError(f"model.dropout={model.dropout} must be in [0, 1)")
    if cfg.optim.lr <= 0:
        raise ConfigError(f"optim.lr={cfg.optim.lr} must be positive")
    if cfg.optim.name not in ("adam", "sgd"):
        raise ConfigError(f"optim.name={cfg.optim.name!r} is unknown; use 'adam' or 'sgd'")
    if cfg.tokenizer.vocab_size <= 4:
        raise ConfigError(f"tokenizer.vocab_size={cfg.tokenizer.vocab_size} must exceed the 4 special tokens")
    if model.tie_embeddings and not cfg.tokenizer.joint:
        raise ConfigError("model.tie_embeddings=true needs tokenizer.joint=true (one shared vocabulary)")
    if not 0.0 <= cfg.train.label_smoothing < 1.0:
        raise ConfigError(f"train.label_smoothing={cfg.train.label_smoothing} must be in [0, 1)")
    if cfg.train.max_tokens < 1:
        raise ConfigError(f"train.max_tokens={cfg.train.max_tokens} must be positive")


@dataclass(frozen=True)
class Paths:
    """Where the stages read and write, relative to one project (or sweep job) folder."""

    root: Path

    @property
    def raw(self) -> Path:
        return self.root / "data" / "raw"

    @property
    def prepared(self) -> Path:
        return self.root / "data" / "prepared"

    @property
    def tokenizer_dir(self) -> Path:
        return self.root / "data" / "tokenizer"

    @property
    def tokenizer_model(self) -> Path:
        return self.tokenizer_dir / "spm.model"

    @property
    def models(self) -> Path:
        return self.root / "models"

    @property
    def reports(self) -> Path:
        return self.root / "reports"

    def split_file(self, split: str, lang: str) -> Path:
        return self.prepared / f"{split}.{lang}"


def tracking_uri(cfg: DictConfig) -> str:
    """Return the MLflow tracking URI: ``MLFLOW_TRACKING_URI`` if set, else ``mlflow.tracking_uri``."""
    return os.environ.get("MLFLOW_TRACKING_URI") or cfg.mlflow.tracking_uri
