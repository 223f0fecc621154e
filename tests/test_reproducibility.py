"""Same inputs, same outputs: DVC hashes of prepare and tokenizer, and training on CPU with a fixed seed."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from mlflow.tracking import MlflowClient

from conftest import CONF_DIR, REPO, write_params
from nmt.config import compose
from nmt.stages import evaluate, train
from nmt.stages import references as references_stage
from tiny_project import new_project, prepared_folder, tiny_config

pytestmark = pytest.mark.slow


def dvc(project: Path, *args: str) -> str:
    env = {**os.environ, "DVC_NO_ANALYTICS": "1", "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    env.pop("NMT_DATA_DIR", None)
    result = subprocess.run(["dvc", *args], cwd=project, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, f"dvc {' '.join(args)} failed:\n{result.stdout}\n{result.stderr}"
    return result.stdout + result.stderr


def locked_outputs(project: Path) -> dict[str, dict[str, str]]:
    """Return {stage: {output path: md5}} for prepare and tokenizer from dvc.lock."""
    lock = yaml.safe_load((project / "dvc.lock").read_text())
    return {stage: {out["path"]: out["md5"] for out in lock["stages"][stage]["outs"]}
            for stage in ("prepare", "tokenizer")}


def test_forced_repro_gives_same_hashes(tmp_path, data_dir):
    project = tmp_path / "project"
    project.mkdir()
    for name in ("conf", "src", "dvc.yaml", ".dvc", ".dvcignore"):
        source = REPO / name
        if source.is_dir():
            shutil.copytree(source, project / name,
                            ignore=shutil.ignore_patterns("cache", "tmp", "config.local", "__pycache__"))
        elif source.exists():
            shutil.copy(source, project / name)
    subprocess.run(["git", "init", "-q"], cwd=project, check=True)
    overrides = ["data.max_train_pairs=300", "data.max_eval_pairs=12", "tokenizer.vocab_size=400"]
    write_params(project, compose([*overrides, f"data.local_dir={data_dir}"], CONF_DIR))

    dvc(project, "repro", "tokenizer")
    first = locked_outputs(project)
    output = dvc(project, "repro", "-f", "tokenizer")
    second = locked_outputs(project)

    assert "Running stage 'prepare'" in output
    assert "Running stage 'tokenizer'" in output
    assert set(first["prepare"]) == {"data/prepared", "reports/data.json"}
    assert set(first["tokenizer"]) == {"data/tokenizer"}
    assert second == first


@pytest.fixture(scope="module")
def prepared(tmp_path_factory, data_dir) -> Path:
    return prepared_folder(tmp_path_factory, data_dir)


def train_and_evaluate(prepared: Path, root: Path, data_dir: Path, precision: str) -> tuple[Path, dict]:
    cfg = tiny_config(prepared, f"trainer.precision={precision}", f"data.local_dir={data_dir}")
    paths = new_project(root, prepared)
    summary = train.run(cfg, paths)
    references_stage.run(cfg, paths)
    evaluate.run(cfg, paths)
    return paths.root, summary


@pytest.mark.parametrize("precision", ["32-true", "bf16-mixed"])
def test_training_twice_gives_same_results(prepared, data_dir, tmp_path, precision):
    first_root, first = train_and_evaluate(prepared, tmp_path / "first", data_dir, precision)
    second_root, second = train_and_evaluate(prepared, tmp_path / "second", data_dir, precision)

    client = MlflowClient(tracking_uri=f"sqlite:///{prepared}/mlflow.db")
    first_losses = [(m.step, m.value) for m in client.get_metric_history(first["mlflow_run_id"], "val/loss")]
    second_losses = [(m.step, m.value) for m in client.get_metric_history(second["mlflow_run_id"], "val/loss")]
    assert len(first_losses) == 2
    assert first_losses == second_losses
    assert first["best_val_loss"] == second["best_val_loss"]

    # Everything but the measured training wall time must be identical.
    first_metrics = json.loads((first_root / "reports" / "metrics.json").read_text())
    second_metrics = json.loads((second_root / "reports" / "metrics.json").read_text())
    assert first_metrics["train"].pop("wall_time_s") > 0
    assert second_metrics["train"].pop("wall_time_s") > 0
    assert first_metrics == second_metrics


def test_environment_report_records_seed_and_versions(prepared, data_dir, tmp_path):
    cfg = tiny_config(prepared, "trainer.max_epochs=1")
    paths = new_project(tmp_path, prepared)
    summary = train.run(cfg, paths)

    environment = json.loads((paths.reports / "environment.json").read_text())
    assert environment["seed"] == cfg.seed
    assert environment["precision"] == "32-true"
    assert environment["torch_threads"] >= 1
    for library in ("python", "torch", "lightning", "numpy", "sentencepiece", "mlflow"):
        assert environment["libraries"][library], library

    client = MlflowClient(tracking_uri=f"sqlite:///{prepared}/mlflow.db")
    run = client.get_run(summary["mlflow_run_id"])
    assert run.data.tags["seed"] == str(cfg.seed)
    logged = client.download_artifacts(run.info.run_id, "environment.json", str(tmp_path))
    assert json.loads(Path(logged).read_text())["libraries"] == environment["libraries"]


def test_dvc_yaml_declares_environment_report():
    stages = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
    outs = stages["train"]["outs"]
    assert {"reports/environment.json": {"cache": False}} in outs
