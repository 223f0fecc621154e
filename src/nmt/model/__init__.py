"""The Transformer encoder-decoder in plain PyTorch (no Lightning, Hydra or MLflow here)."""

from nmt.model.transformer import Transformer, ModelConfig

__all__ = ["Transformer", "ModelConfig"]
