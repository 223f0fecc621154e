"""Training against a real MLflow tracking server on 127.0.0.1, and against one that is not running.

The server runs ``mlflow server`` with a SQLite backend and proxied artifacts in a temporary folder, so the
run is written and read back over HTTP only, as it would be with a shared server.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from mlflow.tracking import MlflowClient

from nmt.model import ModelConfig, Transformer
from nmt.stages import train
from tiny_project import new_project, prepared_folder, tiny_config

log = logging.getLogger(__name__)

HOST = "127.0.0.1"
# A new SQLite store runs every schema migration first. Start-up took 30-50 s on 2 cores shared with two
# training runs.
SERVER_START_TIMEOUT_S = 180


def free_port() -> int:
    """Return a TCP port on 127.0.0.1 that nothing listened on at the time of the call."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        return sock.getsockname()[1]


@dataclass
class TrackingServer:
    """A launched ``mlflow server`` process, its URI and the file with its output."""

    process: subprocess.Popen
    uri: str
    log_file: Path
    launched_at: float

    def output(self) -> str:
        return self.log_file.read_text(encoding="utf-8", errors="replace")[-5000:]

    def wait_until_healthy(self, timeout_s: float = SERVER_START_TIMEOUT_S) -> float:
        """Poll ``/health`` until it returns 200 and return the seconds since launch.

        Fails the test, with the server's output, if the server exits or does not respond within ``timeout_s``.
        """
        deadline = self.launched_at + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                pytest.fail(f"mlflow server exited with status {self.process.returncode} before it responded to "
                            f"{self.uri}/health. Server output:\n{self.output()}")
            try:
                with urllib.request.urlopen(f"{self.uri}/health", timeout=2) as response:
                    if response.status == 200:
                        return time.monotonic() - self.launched_at
            except (urllib.error.URLError, OSError):
                pass
            time.sleep(0.5)
        pytest.fail(f"mlflow server at {self.uri} did not respond to /health within {timeout_s} s. "
                    f"Server output:\n{self.output()}")


@pytest.fixture
def tracking_server(tmp_path) -> TrackingServer:
    """Launch ``mlflow server`` on a free port of 127.0.0.1 and stop it with SIGTERM afterwards.

    The fixture does not wait for the server, so that its start-up overlaps with other set-up. Tests call
    ``wait_until_healthy`` before they use it.
    """
    port = free_port()
    store = tmp_path / "server"
    store.mkdir()
    log_file = store / "server.log"
    command = [
        str(Path(sys.executable).parent / "mlflow"), "server",
        "--host", HOST,
        "--port", str(port),
        "--workers", "1",
        "--backend-store-uri", f"sqlite:///{store}/mlflow.db",
        "--artifacts-destination", str(store / "artifacts"),
    ]
    # Job execution would start extra worker processes that these tests never use.
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    env.pop("MLFLOW_TRACKING_URI", None)
    with open(log_file, "wb") as output:
        process = subprocess.Popen(command, cwd=store, env=env, stdout=output, stderr=subprocess.STDOUT,
                                   start_new_session=True)
    server = TrackingServer(process, f"http://{HOST}:{port}", log_file, time.monotonic())
    try:
        yield server
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            log.warning("mlflow server %s did not stop within 30 s of SIGTERM, so it is killed", server.uri)
        # The server's own session: the server and its uvicorn worker, which should have stopped with it.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=10)


@pytest.fixture
def one_torch_thread():
    """Train on one thread: the server and other processes share the CPU cores with it."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.mark.slow
def test_training_logs_to_tracking_server(tracking_server, tmp_path_factory, data_dir, tmp_path, one_torch_thread):
    prepared = prepared_folder(tmp_path_factory, data_dir)  # built while the server starts
    startup_s = tracking_server.wait_until_healthy()
    log.info("mlflow server responded to /health after %.1f s", startup_s)

    # Validation BLEU decodes every validation sentence and adds nothing to what this test checks.
    cfg = tiny_config(prepared, f"mlflow.tracking_uri={tracking_server.uri}", "train.val_bleu=false",
                      "train.monitor=val/loss")
    paths = new_project(tmp_path / "project", prepared)
    started = time.monotonic()
    summary = train.run(cfg, paths)
    training_s = time.monotonic() - started
    log.info("training over HTTP took %.1f s", training_s)

    started = time.monotonic()
    client = MlflowClient(tracking_uri=tracking_server.uri)
    run_id = summary["mlflow_run_id"]
    run = client.get_run(run_id)
    experiment = client.get_experiment(run.info.experiment_id)
    loss_history = client.get_metric_history(run_id, "train/loss_step")
    val_history = client.get_metric_history(run_id, "val/loss")
    model = Transformer(ModelConfig.from_dict(dict(cfg.model), src_vocab_size=cfg.tokenizer.vocab_size,
                                              tgt_vocab_size=cfg.tokenizer.vocab_size))
    grad_norm_histories = {name: client.get_metric_history(run_id, f"grad_norm/{name}")
                           for name in model.named_weights()}
    artifacts = {artifact.path for artifact in client.list_artifacts(run_id)}
    samples = [artifact.path for artifact in client.list_artifacts(run_id, "samples")]
    environment_file = client.download_artifacts(run_id, "environment.json", str(tmp_path / "download"))
    read_back_s = time.monotonic() - started
    log.info("reading the run back over HTTP took %.1f s", read_back_s)

    assert experiment.name == cfg.mlflow.experiment
    assert run.info.status == "FINISHED"
    assert run.info.artifact_uri.startswith("mlflow-artifacts:"), run.info.artifact_uri
    assert run.data.params["model.d_model"] == "32"
    assert run.data.params["data.max_train_pairs"] == "120"
    assert run.data.tags["stop_reason"] == "max_epochs"

    steps = [metric.step for metric in loss_history]
    assert len(loss_history) >= 3
    assert steps == sorted(steps)
    assert len(set(steps)) == len(steps)
    assert all(math.isfinite(metric.value) and metric.value > 0 for metric in loss_history)
    assert len(val_history) == 2
    assert all(math.isfinite(metric.value) for metric in val_history)

    missing = [name for name, history in grad_norm_histories.items() if not history]
    assert missing == []
    cross_attention = grad_norm_histories["decoder.0.cross_attn.W_Q"]
    assert len(cross_attention) >= 2
    assert all(metric.value > 0 for metric in cross_attention)

    assert {"environment.json", "grad_norms.png", "samples"} <= artifacts
    assert samples == ["samples/epoch_000.txt", "samples/epoch_001.txt"]
    assert json.loads(Path(environment_file).read_text())["seed"] == cfg.seed

    # The server, not the client, wrote the files: they are in its --artifacts-destination folder.
    stored = {path.name for path in (tmp_path / "server" / "artifacts").rglob("*") if path.is_file()}
    assert {"environment.json", "grad_norms.png", "epoch_000.txt", "epoch_001.txt"} <= stored


@pytest.mark.slow
def test_train_stage_fails_fast_without_server(tmp_path_factory, data_dir, tmp_path, monkeypatch, caplog):
    prepared = prepared_folder(tmp_path_factory, data_dir)
    uri = f"http://{HOST}:{free_port()}"  # nothing listens on a port that was free a moment ago
    cfg = tiny_config(prepared, f"mlflow.tracking_uri={uri}")
    paths = new_project(tmp_path / "project", prepared, cfg)
    monkeypatch.chdir(paths.root)

    started = time.monotonic()
    with pytest.raises(SystemExit) as exit_info:
        train.main()  # the `python -m nmt.stages.train` entry point, which DVC runs
    log.info("train stage exited after %.1f s", time.monotonic() - started)

    assert exit_info.value.code == 1
    errors = [record.getMessage() for record in caplog.records if record.levelno == logging.ERROR]
    assert len(errors) == 1
    assert f"MLflow tracking server {uri} is unreachable" in errors[0]
    assert "Start it, fix MLFLOW_TRACKING_URI or mlflow.tracking_uri" in errors[0]
    assert not paths.models.exists()
    assert not (paths.reports / "environment.json").exists()
    assert not (paths.root / "mlflow.db").exists()
