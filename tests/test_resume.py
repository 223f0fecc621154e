"""A killed or crashed train stage resumes from its last checkpoint, in the same MLflow run, with the same result."""

from __future__ import annotations

import json
import logging
import signal
import subprocess
import sys
import time
from pathlib import Path

import lightning as L
import pytest
import torch
from mlflow.tracking import MlflowClient

from nmt.stages import train
from nmt.training import module as training_module
from nmt.training.resume import STATE_FILE, training_key
from tiny_project import new_project, prepared_folder, tiny_config, wait_for_mid_epoch_state

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def prepared(tmp_path_factory, data_dir) -> Path:
    return prepared_folder(tmp_path_factory, data_dir)


def weights(checkpoint: Path) -> dict[str, torch.Tensor]:
    return torch.load(checkpoint, map_location="cpu", weights_only=False)["state_dict"]


def metric_history(tracking_root: Path, run_id: str, key: str) -> list[tuple[int, float]]:
    client = MlflowClient(tracking_uri=f"sqlite:///{tracking_root}/mlflow.db")
    return sorted((m.step, m.value) for m in client.get_metric_history(run_id, key))


class CrashAtStep(L.Callback):
    """Raise in the middle of training, like a crash, after the optimizer step ``step``."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_end(self, trainer, *args) -> None:
        if trainer.global_step == self.step:
            raise RuntimeError(f"simulated crash at step {self.step}")


class SlowSteps(L.Callback):
    """Sleep ``seconds`` after each optimizer step up to ``last_step``, so that those steps use a known share of
    the time budget."""

    def __init__(self, seconds: float, last_step: int) -> None:
        self.seconds = seconds
        self.last_step = last_step

    def on_train_batch_end(self, trainer, *args) -> None:
        if trainer.global_step <= self.last_step:
            time.sleep(self.seconds)


class RecordLr(L.Callback):
    """Record the learning rate set for the next step, after each optimizer step: ``{global_step: lr}``."""

    def __init__(self) -> None:
        self.lrs: dict[int, float] = {}

    def on_train_batch_end(self, trainer, *args) -> None:
        self.lrs[trainer.global_step] = trainer.optimizers[0].param_groups[0]["lr"]


def add_callbacks(monkeypatch, *extra: L.Callback) -> None:
    """Make ``train.run`` build its trainer with ``extra`` callbacks appended."""
    build = train.build_trainer

    def build_with_extra(cfg, paths, logger, callbacks):
        return build(cfg, paths, logger, [*callbacks, *extra])

    monkeypatch.setattr(train, "build_trainer", build_with_extra)


def crash_at(monkeypatch, step: int) -> None:
    add_callbacks(monkeypatch, CrashAtStep(step))


@pytest.fixture(scope="module")
def uninterrupted(prepared, tmp_path_factory):
    """One uninterrupted run of the tiny config (checkpoint every 5 steps): its paths and summary.

    Before it runs, the project contains the resume state of another configuration and the state of a run of
    this configuration that was killed before its first checkpoint.
    """
    paths = new_project(tmp_path_factory.mktemp("uninterrupted"), prepared)
    cfg = tiny_config(prepared)

    stale = paths.checkpoints / "train-0123456789abcdef"
    stale.mkdir(parents=True)
    (stale / STATE_FILE).write_text(json.dumps({"key": "0123456789abcdef", "checkpoint": "resume.ckpt"}))
    client = MlflowClient(tracking_uri=f"sqlite:///{prepared}/mlflow.db")
    experiment = client.get_experiment_by_name(cfg.mlflow.experiment)
    experiment_id = experiment.experiment_id if experiment else client.create_experiment(cfg.mlflow.experiment)
    killed_run = client.create_run(experiment_id).info.run_id
    key = training_key(cfg, paths)
    own = paths.checkpoints / f"train-{key}"
    own.mkdir()
    (own / STATE_FILE).write_text(json.dumps({"key": key, "mlflow_run_id": killed_run, "checkpoint": None}))

    handler = _RecordingHandler()
    logging.getLogger("nmt").addHandler(handler)
    try:
        summary = train.run(cfg, paths)
    finally:
        logging.getLogger("nmt").removeHandler(handler)
    return {"paths": paths, "summary": summary, "logs": handler.messages, "killed_run": killed_run,
            "stale": stale}


class _RecordingHandler(logging.Handler):
    def __init__(self) -> None:
        super().__init__(level=logging.INFO)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


def test_stale_state_of_other_config_ignored(uninterrupted):
    logs = "\n".join(uninterrupted["logs"])
    assert f"ignoring resume state {uninterrupted['stale']}" in logs
    assert uninterrupted["stale"].is_dir()
    assert uninterrupted["summary"]["resumed_from_step"] is None
    assert uninterrupted["summary"]["epochs"] == 2


def test_run_killed_before_checkpoint_marked_killed(uninterrupted, prepared):
    client = MlflowClient(tracking_uri=f"sqlite:///{prepared}/mlflow.db")
    assert client.get_run(uninterrupted["killed_run"]).info.status == "KILLED"
    assert uninterrupted["summary"]["mlflow_run_id"] != uninterrupted["killed_run"]
    assert "interrupted before it saved a checkpoint" in "\n".join(uninterrupted["logs"])


def test_resume_state_removed_after_success(uninterrupted):
    paths = uninterrupted["paths"]
    remaining = sorted(p.name for p in paths.checkpoints.glob("train-*"))
    assert remaining == [uninterrupted["stale"].name]
    assert (paths.models / "best.ckpt").is_file()
    assert (paths.models / "last.ckpt").is_file()


def batches_per_epoch(uninterrupted) -> int:
    return uninterrupted["summary"]["steps"] // uninterrupted["summary"]["epochs"]


@pytest.mark.parametrize("every_n_steps", ["null", "5"], ids=["epoch_boundary", "mid_epoch"])
def test_resumed_weights_equal_uninterrupted(uninterrupted, prepared, tmp_path, monkeypatch, every_n_steps):
    # Crash 3 steps into epoch 1 (resumes from the end of epoch 0), or at step 13 (resumes from step 10).
    batches = batches_per_epoch(uninterrupted)
    crash_step, resumed_step = (batches + 3, batches) if every_n_steps == "null" else (13, 10)
    assert batches > 13
    paths = new_project(tmp_path, prepared)
    cfg = tiny_config(prepared, f"train.checkpoint_every_n_steps={every_n_steps}")

    crash_at(monkeypatch, crash_step)
    with pytest.raises(RuntimeError, match="simulated crash"):
        train.run(cfg, paths)
    state = json.loads(next(paths.checkpoints.glob(f"train-*/{STATE_FILE}")).read_text())
    assert state["global_step"] == resumed_step
    client = MlflowClient(tracking_uri=f"sqlite:///{prepared}/mlflow.db")
    assert client.get_run(state["mlflow_run_id"]).info.status == "FAILED"

    monkeypatch.undo()
    summary = train.run(cfg, paths)

    assert summary["resumed_from_step"] == resumed_step
    assert summary["mlflow_run_id"] == state["mlflow_run_id"]
    assert summary["steps"] == uninterrupted["summary"]["steps"]
    assert summary["best_val_loss"] == uninterrupted["summary"]["best_val_loss"]
    expected = weights(uninterrupted["paths"].models / "last.ckpt")
    actual = weights(paths.models / "last.ckpt")
    assert expected.keys() == actual.keys()
    for name in expected:
        assert torch.equal(expected[name], actual[name]), f"{name} differs after resuming"
    # The resumed run has each step once, with the values of the uninterrupted run.
    for key in ("val/loss", "train/loss_step", "grad_norm/decoder.0.cross_attn.W_Q"):
        resumed = metric_history(prepared, summary["mlflow_run_id"], key)
        assert resumed == metric_history(prepared, uninterrupted["summary"]["mlflow_run_id"], key), key
    assert client.get_run(summary["mlflow_run_id"]).info.status == "FINISHED"


def test_killed_train_stage_resumes(uninterrupted, prepared, tmp_path):
    """SIGKILL the train stage once a mid-epoch checkpoint exists; the rerun continues from it."""
    cfg = tiny_config(prepared, "trainer.max_epochs=3", "train.checkpoint_every_n_steps=3")
    paths = new_project(tmp_path, prepared, cfg)
    command = [sys.executable, "-m", "nmt.stages.train"]

    first_log = tmp_path / "first.log"
    with open(first_log, "w", encoding="utf-8") as log_file:
        process = subprocess.Popen(command, cwd=paths.root, stdout=log_file, stderr=subprocess.STDOUT)
        # By step 6 the first process has logged a training loss (at step 4), so the MLflow run has
        # metrics of both processes.
        wait_for_mid_epoch_state(paths, process, timeout=120, min_step=6, log_path=first_log)
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=30)
    state = json.loads(next(paths.checkpoints.glob(f"train-*/{STATE_FILE}")).read_text())
    assert not (paths.models).exists()

    result = subprocess.run(command, cwd=paths.root, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"resumed training from {paths.checkpoints}" in result.stderr
    assert f"global step {state['global_step']}" in result.stderr
    assert state["mlflow_run_id"] in result.stderr

    summary = json.loads((paths.models / "train_summary.json").read_text())
    assert summary["resumed_from_step"] == state["global_step"]
    assert summary["mlflow_run_id"] == state["mlflow_run_id"]
    assert summary["steps"] == 3 * batches_per_epoch(uninterrupted)
    assert summary["epochs"] == 3
    client = MlflowClient(tracking_uri=f"sqlite:///{prepared}/mlflow.db")
    run = client.get_run(state["mlflow_run_id"])
    assert run.info.status == "FINISHED"
    assert run.data.tags["resumed_from_step"] == str(state["global_step"])
    logged_steps = [m.step for m in client.get_metric_history(run.info.run_id, "train/loss_step")]
    assert min(logged_steps) < state["global_step"] < max(logged_steps)
    assert list(paths.checkpoints.glob("train-*")) == []


def test_resumed_cooldown_continues(prepared, tmp_path, monkeypatch):
    """The lr cooldown of a resumed run continues from the time spent before the crash, not from the start.

    Lightning's Timer keeps the elapsed time in the checkpoint. Each of the first 10 steps is followed by a
    0.25 s sleep, so by the checkpoint at step 10 at least 2.25 s of the 6-second budget are spent and the
    lr is at most 63% of the peak. Had the resumed run started its clock again, its first lr would be close
    to the peak.
    """
    monkeypatch.setattr(training_module, "COOLDOWN_REFRESH_STEPS", 1)
    paths = new_project(tmp_path, prepared)
    cfg = tiny_config(prepared, "trainer.max_epochs=10000", "trainer.max_time_minutes=0.1",
                      "optim.scheduler=constant", "optim.cooldown_fraction=1.0")
    peak = cfg.optim.lr

    crashed = RecordLr()
    add_callbacks(monkeypatch, SlowSteps(0.25, last_step=10), crashed, CrashAtStep(13))
    with pytest.raises(RuntimeError, match="simulated crash"):
        train.run(cfg, paths)
    state = json.loads(next(paths.checkpoints.glob(f"train-*/{STATE_FILE}")).read_text())
    assert state["global_step"] == 10
    assert crashed.lrs[10] < 0.7 * peak

    monkeypatch.undo()
    monkeypatch.setattr(training_module, "COOLDOWN_REFRESH_STEPS", 1)
    resumed = RecordLr()
    add_callbacks(monkeypatch, resumed)
    summary = train.run(cfg, paths)

    assert summary["resumed_from_step"] == 10
    assert summary["stop_reason"] == "max_time"
    steps = sorted(resumed.lrs)
    assert steps[0] == 11
    assert resumed.lrs[11] <= crashed.lrs[10]
    lrs = [resumed.lrs[step] for step in steps]
    assert all(later <= earlier for earlier, later in zip(lrs, lrs[1:]))
    assert lrs[-1] < 0.2 * peak
