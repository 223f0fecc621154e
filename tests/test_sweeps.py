"""Parallel Hydra sweeps: `nmt-pipeline -m` with the joblib launcher, two jobs at once, one MLflow store."""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path

import pytest
import yaml
from mlflow.tracking import MlflowClient

from conftest import CONF_DIR
from tiny_project import TINY_TRAINING

log = logging.getLogger(__name__)

D_MODELS = ("32", "48")
# A lost race to create the experiment is logged and retried by nmt.tracking.ensure_experiment, so a unique-name
# violation may appear at INFO level. These strings only appear when a job fails.
FAILURES = ("database is locked", "Traceback", "Error executing job")


# Each process imports MLflow, reports that it is ready, waits for the go file, then opens the store.
OPEN_STORE = """
import sys, time
from pathlib import Path
from nmt.tracking import ensure_experiment
ready, go, uri = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3]
ready.touch()
while not go.exists():
    time.sleep(0.01)
print(ensure_experiment(uri, "race"))
"""


def log_interval(job_dir: Path) -> tuple[datetime, datetime]:
    """Return the timestamps of the first and last line of the job's Hydra log file."""
    lines = [line for line in (job_dir / "pipeline.log").read_text().splitlines() if line.startswith("[")]
    stamps = [datetime.strptime(line[1:24], "%Y-%m-%d %H:%M:%S,%f") for line in (lines[0], lines[-1])]
    return stamps[0], stamps[1]


@pytest.mark.slow
def test_processes_create_one_store_together(tmp_path):
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    go = tmp_path / "go"
    ready_files = [tmp_path / f"ready-{index}" for index in range(2)]
    processes = [subprocess.Popen([sys.executable, "-c", OPEN_STORE, str(ready), str(go), uri],
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                 for ready in ready_files]
    try:
        deadline = time.monotonic() + 120
        while not all(ready.exists() for ready in ready_files):
            assert time.monotonic() < deadline, "the processes did not import MLflow within 120 s"
            assert all(process.poll() is None for process in processes), "a process exited before it was ready"
            time.sleep(0.05)
        go.touch()
        outputs = [process.communicate(timeout=120) for process in processes]
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
                process.wait()

    for process, (stdout, stderr) in zip(processes, outputs):
        assert process.returncode == 0, stderr[-3000:]
    experiment_ids = {stdout.strip() for stdout, _ in outputs}
    assert len(experiment_ids) == 1
    assert MlflowClient(tracking_uri=uri).get_experiment_by_name("race").experiment_id in experiment_ids


@pytest.mark.slow
def test_joblib_sweep_two_jobs_one_store(tmp_path, data_dir):
    project = tmp_path / "project"
    shutil.copytree(CONF_DIR, project / "conf")
    sweep_dir = tmp_path / "sweep"
    store = tmp_path / "mlflow.db"
    overrides = [o for o in TINY_TRAINING if not o.startswith(("model.d_model=", "trainer.max_epochs="))]
    command = [
        str(Path(sys.executable).parent / "nmt-pipeline"), "-m",
        "hydra/launcher=joblib", "hydra.launcher.n_jobs=2",
        f"hydra.sweep.dir={sweep_dir}",
        *overrides,
        f"model.d_model={','.join(D_MODELS)}",
        "trainer.max_epochs=1",
        "train.val_bleu=false",
        "train.monitor=val/loss",
        f"data.local_dir={data_dir}",
        f"mlflow.tracking_uri=sqlite:///{store}",
    ]
    # One thread per job: two jobs share the cores, and more threads only make them wait for each other.
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    env.pop("MLFLOW_TRACKING_URI", None)

    started = time.monotonic()
    result = subprocess.run(command, cwd=project, env=env, capture_output=True, text=True, timeout=600)
    log.info("sweep of %d jobs took %.1f s", len(D_MODELS), time.monotonic() - started)

    assert result.returncode == 0, result.stderr[-5000:]
    for failure in FAILURES:
        assert failure not in result.stderr, result.stderr[-5000:]

    job_dirs = sorted(path for path in sweep_dir.iterdir() if path.is_dir() and path.name.isdigit())
    assert [path.name for path in job_dirs] == ["0", "1"]
    run_ids_by_d_model = {}
    experiment_names = set()
    for job_dir in job_dirs:
        params = yaml.safe_load((job_dir / "params.yaml").read_text())
        assert (job_dir / "models" / "best.ckpt").is_file()
        metrics = json.loads((job_dir / "reports" / "metrics.json").read_text())
        assert metrics["train"]["epochs"] == 1
        assert metrics["test_2016_flickr"]["sentences"] == 8
        summary = json.loads((job_dir / "models" / "train_summary.json").read_text())
        run_ids_by_d_model[str(params["model"]["d_model"])] = summary["mlflow_run_id"]
        experiment_names.add(params["mlflow"]["experiment"])
    assert sorted(run_ids_by_d_model) == sorted(D_MODELS)
    assert len(set(run_ids_by_d_model.values())) == 2

    # Both jobs ran at the same time: each started before the other ended.
    (start_0, end_0), (start_1, end_1) = (log_interval(job_dir) for job_dir in job_dirs)
    assert start_0 < end_1
    assert start_1 < end_0

    client = MlflowClient(tracking_uri=f"sqlite:///{store}")
    names = sorted(experiment.name for experiment in client.search_experiments())
    assert len(experiment_names) == 1
    assert names == sorted(["Default", *experiment_names])
    experiment = client.get_experiment_by_name(experiment_names.pop())
    runs = client.search_runs([experiment.experiment_id])
    assert sorted(run.info.run_id for run in runs) == sorted(run_ids_by_d_model.values())
    for run in runs:
        d_model = run.data.params["model.d_model"]
        assert run.info.run_id == run_ids_by_d_model[d_model]
        assert run.info.status == "FINISHED"
        assert run.data.metrics["test_2016_flickr/bleu"] >= 0.0
