"""nmt: a reproducible Transformer encoder-decoder translation workbench."""

__version__ = "0.1.0"
