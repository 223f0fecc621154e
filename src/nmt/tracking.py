"""MLflow helpers: the Lightning logger for training and a client for logging into an existing run."""

from __future__ import annotations

import contextlib
import hashlib
import logging
import tempfile
from pathlib import Path

from omegaconf import OmegaConf

from nmt.config import tracking_uri as configured_tracking_uri

log = logging.getLogger(__name__)

# Path parts of the folder in which DVC 3 clones the repository for `dvc exp run --queue` and `--temp`
# (<project>/.dvc/tmp/exps/tmpXXXX, or .../exps/standalone/tmpXXXX).
DVC_EXPERIMENT_TEMP_PARTS = (".dvc", "tmp", "exps")


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


def project_store_uri(uri: str, cwd: Path | None = None) -> str:
    """Return ``uri``, with a relative SQLite path resolved against the project when ``cwd`` is a DVC temp clone.

    DVC runs queued and ``--temp`` experiments in a clone under ``<project>/.dvc/tmp/exps/`` and deletes the
    clone afterwards, together with any store at a path relative to it. Such a path is therefore resolved
    against ``<project>``, so that those runs land in the project's store next to the workspace runs.
    Other URIs, and relative paths outside a temp clone, are returned unchanged.
    """
    if not uri.startswith("sqlite:///"):
        return uri
    database = Path(uri.removeprefix("sqlite:///"))
    if database.is_absolute():
        return uri
    cwd = (cwd or Path.cwd()).resolve()
    for folder in cwd.parents:
        if folder.parts[-len(DVC_EXPERIMENT_TEMP_PARTS):] == DVC_EXPERIMENT_TEMP_PARTS:
            project = folder.parents[len(DVC_EXPERIMENT_TEMP_PARTS) - 1]
            resolved = f"sqlite:///{project / database}"
            log.info("DVC temp clone %s: logging to the project's MLflow store %s", cwd, resolved)
            return resolved
    return uri


def tracking_uri(cfg) -> str:
    """Return the MLflow tracking URI of ``cfg`` (``MLFLOW_TRACKING_URI`` first), see ``project_store_uri``."""
    return project_store_uri(configured_tracking_uri(cfg))


def artifact_location(uri: str) -> str | None:
    """Return the artifact folder for a local SQLite store: ``mlartifacts/`` next to the database file.

    Servers (http/https URIs) choose their own artifact store, so this returns None for them.
    """
    if not uri.startswith("sqlite:///"):
        return None
    database = Path(uri.removeprefix("sqlite:///"))
    return (database.parent / "mlartifacts").resolve().as_uri()


@contextlib.contextmanager
def _exclusive_lock(path: Path):
    """Hold an exclusive ``flock`` on ``path`` (created if missing) for the duration of the block."""
    try:
        import fcntl
    except ImportError:  # NOTE: no lock on Windows, so parallel jobs there can still race on a new store.
        yield
        return
    with open(path, "a") as lock_file:
        fcntl.flock(lock_file, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock_file, fcntl.LOCK_UN)


def open_client(uri: str):
    """Return an MlflowClient for ``uri``, creating the tables of a new SQLite store under a file lock.

    MLflow 3.17 creates the tables of a new SQLite store and runs its schema migrations when it first opens the
    store, without a lock. Parallel sweep jobs that open the same new store at once then both migrate it, and
    one of them fails with alembic's "Online migration expected to match one row". Opening the store under a
    file lock makes the first job create it and the others wait and find it complete. The lock file sits in
    the temporary folder, named after the database path, so it only serializes processes on one machine.
    """
    from mlflow.tracking import MlflowClient

    if not uri.startswith("sqlite:///"):
        return MlflowClient(tracking_uri=uri)
    database = Path(uri.removeprefix("sqlite:///")).resolve()
    digest = hashlib.sha256(str(database).encode()).hexdigest()[:16]
    with _exclusive_lock(Path(tempfile.gettempdir()) / f"nmt-mlflow-init-{digest}.lock"):
        # The constructor opens the store, and MLflow caches it per URI for the rest of the process.
        return MlflowClient(tracking_uri=uri)


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

    tracking = open_client(uri)
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
    """Create Lightning's MLFlowLogger for a new run, or for the existing ``run_id`` of a resumed run.

    The logger of a resumed run does not log a metric again at a step the run already has. Fails before any
    work if the tracking server is unreachable.
    """
    from lightning.pytorch.loggers import MLFlowLogger

    from nmt.training.run_logger import ResumedMLFlowLogger

    uri = tracking_uri(cfg)
    check_reachable(uri)
    ensure_experiment(uri, cfg.mlflow.experiment)
    logger_class = MLFlowLogger if run_id is None else ResumedMLFlowLogger
    return logger_class(
        experiment_name=cfg.mlflow.experiment,
        run_name=run_name,
        tracking_uri=uri,
        artifact_location=artifact_location(uri),
        log_model=False,
        run_id=run_id,
    )


def client(cfg):
    return open_client(tracking_uri(cfg))
