"""MLflow helpers: the Lightning logger for training and a client for logging into an existing run."""

from __future__ import annotations

import logging
from pathlib import Path

from omegaconf import OmegaConf

from nmt.config import tracking_uri

log = logging.getLogger(__name__)


def flatten(cfg) -> dict[str, str]:
    """Flatten a nested config into {"model.d_model": "256", ...} for MLflow params."""
    flat: dict[str, str] = {}

    def visit(prefix: str, value) -> None:
        if isinstance(value, dict):
            for key, child in value.items():
                visit(f"{prefix}.{key}" if prefix else str(key), child)
        else:
            flat[prefix] = str(value)

    visit("", OmegaConf.to_container(cfg, resolve=True) if not isinstance(cfg, dict) else cfg)
    return flat


def artifact_location(uri: str) -> str | None:
    """Return the artifact folder for a local SQLite store: ``mlartifacts/`` next to the database file.

    Servers (http/https URIs) choose their own artifact store, so this returns None for them.
    """
    if not uri.startswith("sqlite:///"):
        return None
    database = Path(uri.removeprefix("sqlite:///"))
    return (database.parent / "mlartifacts").resolve().as_uri()


def make_logger(cfg, run_name: str):
    """Create Lightning's MLFlowLogger for this run (new run, experiment created if needed)."""
    from lightning.pytorch.loggers import MLFlowLogger

    uri = tracking_uri(cfg)
    return MLFlowLogger(
        experiment_name=cfg.mlflow.experiment,
        run_name=run_name,
        tracking_uri=uri,
        artifact_location=artifact_location(uri),
        log_model=False,
    )


def client(cfg):
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=tracking_uri(cfg))
