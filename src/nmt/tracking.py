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


class TrackingServerError(RuntimeError):
    """Raised when the configured MLflow tracking server cannot be reached."""


def check_reachable(uri: str, timeout: float = 5.0) -> None:
    """Raise TrackingServerError unless an http(s) tracking server responds on ``/health``; other URIs pass."""
    if not uri.startswith(("http://", "https://")):
        return
    import urllib.error
    import urllib.request

    try:
        with urllib.request.urlopen(f"{uri.rstrip('/')}/health", timeout=timeout) as response:
            if response.status == 200:
                return
            problem = f"HTTP {response.status}"
    except (urllib.error.URLError, OSError) as error:
        problem = str(getattr(error, "reason", error))
    raise TrackingServerError(
        f"MLflow tracking server {uri} is unreachable ({problem}). Start it, fix MLFLOW_TRACKING_URI or "
        "mlflow.tracking_uri, or unset both to log to the local sqlite:///mlflow.db store."
    )


def ensure_experiment(uri: str, name: str, attempts: int = 5) -> str:
    """Return the id of experiment ``name``, creating it once even when parallel jobs race to create it."""
    import time

    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    tracking = MlflowClient(tracking_uri=uri)
    for attempt in range(attempts):
        experiment = tracking.get_experiment_by_name(name)
        if experiment is not None:
            return experiment.experiment_id
        try:
            return tracking.create_experiment(name, artifact_location=artifact_location(uri))
        except MlflowException as error:
            # Another job created it between our lookup and create (unique-name violation); look it up again.
            log.info("experiment %s not created (attempt %d): %s", name, attempt + 1, error)
            time.sleep(0.2 * (attempt + 1))
    raise TrackingServerError(f"could not create or find MLflow experiment {name!r} at {uri}")


def make_logger(cfg, run_name: str, run_id: str | None = None):
    """Create Lightning's MLFlowLogger for a new run, or for the existing ``run_id``.

    Fails before any work if the tracking server is unreachable.
    """
    from lightning.pytorch.loggers import MLFlowLogger

    uri = tracking_uri(cfg)
    check_reachable(uri)
    ensure_experiment(uri, cfg.mlflow.experiment)
    return MLFlowLogger(
        experiment_name=cfg.mlflow.experiment,
        run_name=run_name,
        tracking_uri=uri,
        artifact_location=artifact_location(uri),
        log_model=False,
        run_id=run_id,
    )


def client(cfg):
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=tracking_uri(cfg))
