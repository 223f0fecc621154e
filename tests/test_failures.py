"""Failures are loud and leave nothing half-written: non-finite losses, and stages that fail midway."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from conftest import CONF_DIR
from nmt.config import Paths, compose
from nmt.stages import evaluate, prepare, tokenizer, train
from nmt.stages import references as references_stage
from nmt.training import module as training_module
from nmt.training.module import NonFiniteLossError
from nmt.training.resume import RESUME_CHECKPOINT, STATE_FILE
from tiny_project import new_project, prepared_folder, tiny_config

TRAIN_OUTPUTS = ("models", "reports/grad_norms.png", "reports/environment.json")


@pytest.fixture(scope="module")
def prepared(tmp_path_factory, data_dir) -> Path:
    return prepared_folder(tmp_path_factory, data_dir)


def run_status(tracking_root: Path, run_id: str) -> str:
    return MlflowClient(tracking_uri=f"sqlite:///{tracking_root}/mlflow.db").get_run(run_id).info.status


def leftovers(root: Path, outputs) -> list[str]:
    """Return the declared outputs, and temporary files of atomic writes, that exist under ``root``."""
    found = [name for name in outputs if (root / name).exists()]
    found += [str(path.relative_to(root)) for path in root.rglob(".*.tmp")]
    return found


@pytest.mark.slow
def test_nan_loss_stops_with_step_and_value(prepared, tmp_path, monkeypatch):
    real_loss = training_module.sequence_loss
    training_steps = []

    def loss_with_nan_at_step_7(model, *args, **kwargs):
        loss, n_tokens = real_loss(model, *args, **kwargs)
        if model.training:
            training_steps.append(len(training_steps))
            if training_steps[-1] == 7:
                loss = loss * float("nan")
        return loss, n_tokens

    monkeypatch.setattr(training_module, "sequence_loss", loss_with_nan_at_step_7)
    paths = new_project(tmp_path, prepared)
    cfg = tiny_config(prepared, "train.checkpoint_every_n_steps=3")

    with pytest.raises(NonFiniteLossError) as error:
        train.run(cfg, paths)

    message = str(error.value)
    assert "training loss is nan at global step 7 (epoch 0, batch 7" in message
    assert "lower optim.lr" in message
    assert f"{RESUME_CHECKPOINT} (global step 6), is kept" in message
    assert error.value.step == 7

    state_file = next(paths.checkpoints.glob(f"train-*/{STATE_FILE}"))
    state = json.loads(state_file.read_text())
    assert state["global_step"] == 6
    assert (state_file.parent / RESUME_CHECKPOINT).is_file()
    assert f"MLflow run {state['mlflow_run_id']} is marked FAILED" in message
    assert run_status(prepared, state["mlflow_run_id"]) == "FAILED"
    assert leftovers(paths.root, TRAIN_OUTPUTS) == []


@pytest.mark.slow
def test_diverging_sgd_fails_train_stage(prepared, tmp_path):
    """optim=sgd with lr 1e6 overflows within a few steps; the stage exits 1 and names the step and value."""
    cfg = tiny_config(prepared, "optim=sgd", "optim.lr=1e6")
    paths = new_project(tmp_path, prepared, cfg)

    result = subprocess.run([sys.executable, "-m", "nmt.stages.train"], cwd=paths.root, capture_output=True,
                            text=True, timeout=300)

    assert result.returncode == 1, result.stderr[-3000:]
    assert "training loss is nan at global step" in result.stderr
    assert "lower optim.lr (now 1000000.0)" in result.stderr
    assert "set optim.grad_clip" in result.stderr
    assert "Traceback" not in result.stderr
    assert leftovers(paths.root, TRAIN_OUTPUTS) == []


@pytest.mark.slow
def test_train_output_failure_leaves_nothing(prepared, data_dir, tmp_path, monkeypatch):
    """A failure while the outputs are written leaves none of them; the rerun finishes from the resume state."""
    paths = new_project(tmp_path, prepared)
    cfg = tiny_config(prepared, "trainer.max_epochs=1", f"data.local_dir={data_dir}")

    def failing_plot(history, path):
        Path(path).write_bytes(b"partial")
        raise OSError("disk full while writing the plot")

    monkeypatch.setattr(train, "plot_grad_norms", failing_plot)
    with pytest.raises(OSError, match="disk full"):
        train.run(cfg, paths)
    assert leftovers(paths.root, TRAIN_OUTPUTS) == []
    state = json.loads(next(paths.checkpoints.glob(f"train-*/{STATE_FILE}")).read_text())
    assert run_status(prepared, state["mlflow_run_id"]) == "FAILED"

    monkeypatch.undo()
    summary = train.run(cfg, paths)
    assert summary["resumed_from_step"] == state["global_step"] == summary["steps"]
    assert summary["mlflow_run_id"] == state["mlflow_run_id"]
    for name in TRAIN_OUTPUTS:
        assert (paths.root / name).exists(), name
    assert run_status(prepared, summary["mlflow_run_id"]) == "FINISHED"

    # evaluate: a failure after the first test set is scored leaves neither metrics.json nor samples.md
    real_score = evaluate.score
    scored = []

    def failing_score(hypotheses, references):
        scored.append(1)
        if len(scored) == 2:
            raise RuntimeError("scoring failed on the second test set")
        return real_score(hypotheses, references)

    references_stage.run(cfg, paths)
    monkeypatch.setattr(evaluate, "score", failing_score)
    with pytest.raises(RuntimeError, match="second test set"):
        evaluate.run(cfg, paths)
    assert leftovers(paths.root, ("reports/metrics.json", "reports/samples.md")) == []


def test_prepare_failure_leaves_nothing(tmp_path, data_dir, monkeypatch):
    """An invalid line in the last split stops prepare with neither data/prepared nor reports/data.json."""
    monkeypatch.delenv("NMT_DATA_DIR", raising=False)
    cfg = compose([f"data.local_dir={data_dir}", "data.max_train_pairs=50", "data.max_eval_pairs=5"], CONF_DIR)
    real_load = prepare.load_parallel

    def load_failing_on_last_split(src_path, tgt_path, drop_empty=False):
        if "test_2017" in src_path.name:
            raise prepare.DataError(f"{tgt_path}, line 3: invalid UTF-8 (simulated)")
        return real_load(src_path, tgt_path, drop_empty=drop_empty)

    monkeypatch.setattr(prepare, "load_parallel", load_failing_on_last_split)
    with pytest.raises(prepare.DataError, match="line 3: invalid UTF-8"):
        prepare.run(cfg, Paths(tmp_path))
    assert leftovers(tmp_path, ("data/prepared", "reports/data.json")) == []


def test_tokenizer_failure_leaves_nothing(tmp_path, data_dir, monkeypatch):
    monkeypatch.delenv("NMT_DATA_DIR", raising=False)
    cfg = compose([f"data.local_dir={data_dir}", "data.max_train_pairs=50", "data.max_eval_pairs=5"], CONF_DIR)
    prepare.run(cfg, Paths(tmp_path))

    def failing_training(sentences, model_prefix, **kwargs):
        Path(f"{model_prefix}.model").write_bytes(b"partial")
        raise RuntimeError("SentencePiece training failed (simulated)")

    monkeypatch.setattr(tokenizer, "train_sentencepiece", failing_training)
    with pytest.raises(RuntimeError, match="simulated"):
        tokenizer.run(cfg, Paths(tmp_path))
    assert leftovers(tmp_path, ("data/tokenizer",)) == []

