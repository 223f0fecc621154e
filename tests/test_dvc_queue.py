"""A DVC experiment queue: `dvc exp run --queue` over two model groups, run by one queue worker."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
from mlflow.tracking import MlflowClient

from conftest import CONF_DIR, write_params
from nmt.config import compose
from nmt.tracking import project_store_uri
from tiny_project import copy_repository

log = logging.getLogger(__name__)

QUEUE_TIMEOUT_S = 900  # the queue took 8 to 9.5 minutes on 2 cores shared with two other training runs
POLL_S = 20
# The data, epochs and decoding are cut down, but the model groups keep their sizes (d_model 128 and 256).
SMALL_RUN = [
    "data.max_train_pairs=120",
    "data.max_eval_pairs=8",
    "tokenizer.vocab_size=300",
    "trainer.max_epochs=1",
    "trainer.precision=32-true",
    "train.max_tokens=300",
    "train.val_bleu=false",
    "train.monitor=val/loss",
    "train.val_samples=1",
    "evaluate.samples=3",
    "decode.max_len_a=0.5",
    "decode.max_len_b=2",
]


def dvc_env(data_dir: Path) -> dict[str, str]:
    """Return the environment of the dvc commands, which the queue worker and its stages inherit."""
    env = {
        **os.environ,
        "DVC_NO_ANALYTICS": "1",
        "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}",
        "NMT_DATA_DIR": str(data_dir),
        "OMP_NUM_THREADS": "1",
    }
    env.pop("MLFLOW_TRACKING_URI", None)
    return env


def run_dvc(project: Path, env: dict[str, str], *args: str, check: bool = True) -> subprocess.CompletedProcess:
    result = subprocess.run(["dvc", *args], cwd=project, env=env, capture_output=True, text=True, timeout=300)
    if check:
        assert result.returncode == 0, f"dvc {' '.join(args)} failed:\n{result.stdout}\n{result.stderr}"
    return result


def queue_states(status_output: str) -> list[str]:
    """Return the Status column of each task row of `dvc queue status`."""
    states = ("Queued", "Running", "Success", "Failed")
    return [line.split()[-1] for line in status_output.splitlines() if line.split() and line.split()[-1] in states]


def queue_workers(project: Path) -> list[psutil.Process]:
    """Return the running queue workers of ``project``: `dvc exp queue-worker` and the `dvc queue start` above it."""
    workers = []
    for process in psutil.process_iter(["cmdline", "cwd"]):
        cmdline = process.info["cmdline"] or []
        is_worker = "queue-worker" in cmdline or cmdline[-2:] == ["queue", "start"]
        if is_worker and process.info["cwd"] == str(project):
            workers.append(process)
    return workers


def stop_queue(project: Path, env: dict[str, str], timeout_s: float = 60) -> list[int]:
    """Stop the queue workers of ``project``, kill those still running after ``timeout_s`` and return their ids.

    A killed worker's experiment and stage processes are killed with it.
    """
    run_dvc(project, env, "queue", "stop", check=False)
    _, alive = psutil.wait_procs(queue_workers(project), timeout=timeout_s)
    for process in alive:
        with contextlib.suppress(psutil.NoSuchProcess):
            for child in process.children(recursive=True):
                child.kill()
            process.kill()
    return [process.pid for process in alive]


def experiments(show: list) -> dict[str, dict]:
    """Return {experiment name: data} for the experiments of every baseline in `dvc exp show --json` output."""
    found = {}
    for baseline in show:
        for experiment in baseline.get("experiments") or []:
            for revision in experiment["revs"]:
                found[revision["name"]] = revision["data"]
    return found


@pytest.mark.slow
def test_queue_runs_model_sweep(tmp_path, data_dir):
    project = copy_repository(tmp_path / "project")
    env = dvc_env(data_dir)
    git = ["git", "-c", "user.name=test", "-c", "user.email=test@example.invalid"]
    subprocess.run(["git", "init", "-q"], cwd=project, check=True)
    (project / ".gitignore").write_text("/data/\n/models/\n/checkpoints/\nmlflow.db\nmlartifacts/\n")
    write_params(project, compose(SMALL_RUN, CONF_DIR))
    subprocess.run(["git", "add", "-A"], cwd=project, check=True)
    subprocess.run([*git, "commit", "-q", "-m", "tiny project"], cwd=project, check=True)

    started = time.monotonic()
    set_params = [argument for override in SMALL_RUN for argument in ("-S", override)]
    run_dvc(project, env, "exp", "run", "--queue", "-S", "model=tiny,small", *set_params)
    queued = queue_states(run_dvc(project, env, "queue", "status").stdout)
    assert queued == ["Queued", "Queued"]

    try:
        # The worker inherits the output streams of `dvc queue start`. With pipes, subprocess.run would wait
        # for the worker to exit, so they go to a file.
        with open(tmp_path / "queue-start.log", "wb") as output:
            start = subprocess.run(["dvc", "queue", "start"], cwd=project, env=env, stdout=output,
                                   stderr=subprocess.STDOUT, timeout=120)
        assert start.returncode == 0, (tmp_path / "queue-start.log").read_text()
        deadline = time.monotonic() + QUEUE_TIMEOUT_S
        workers = queue_workers(project)
        while True:
            # Each `dvc queue status` costs a dvc start-up, so poll slowly, but look again as soon as the worker
            # exits, which it does once the queue is empty.
            _, workers = psutil.wait_procs(workers, timeout=POLL_S)
            if not workers:
                time.sleep(5)
            status = run_dvc(project, env, "queue", "status").stdout
            states = queue_states(status)
            if states and all(state in ("Success", "Failed") for state in states):
                break
            assert time.monotonic() < deadline, f"the queue did not finish within {QUEUE_TIMEOUT_S} s:\n{status}"
        log.info("queue of 2 experiments finished after %.1f s", time.monotonic() - started)

        if "Failed" in states:
            names = [line.split()[1] for line in status.splitlines() if line.split()[-1:] == ["Failed"]]
            logs = "\n".join(run_dvc(project, env, "queue", "logs", name, check=False).stdout for name in names)
            pytest.fail(f"queued experiments failed:\n{status}\n{logs}")
        assert states == ["Success", "Success"]
    finally:
        killed = stop_queue(project, env)
    assert killed == [], "queue workers still ran 60 s after `dvc queue stop` and were killed"

    show = json.loads(run_dvc(project, env, "exp", "show", "--json").stdout)
    found = experiments(show)
    assert len(found) == 2, json.dumps(show, indent=1)[:3000]
    models = {}
    bleu = {}
    for name, data in found.items():
        params = data["params"]["params.yaml"]["data"]
        metrics = data["metrics"]["reports/metrics.json"]["data"]
        models[params["model"]["name"]] = params["model"]["d_model"]
        assert params["data"]["max_train_pairs"] == 120
        assert metrics["train"]["epochs"] == 1
        assert metrics["test_2016_flickr"]["sentences"] == 8
        assert 0 <= metrics["test_2016_flickr"]["bleu"] <= 100, name
        bleu[params["model"]["name"]] = metrics["test_2016_flickr"]["bleu"]
    assert models == {"tiny": 128, "small": 256}

    # The experiments ran in temporary clones, but logged to the project's store (nmt.tracking.project_store_uri).
    client = MlflowClient(tracking_uri=f"sqlite:///{project}/mlflow.db")
    runs = client.search_runs([client.get_experiment_by_name("nmt-multi30k").experiment_id])
    assert sorted(run.data.params["model.name"] for run in runs) == ["small", "tiny"]
    for run in runs:
        assert run.info.status == "FINISHED"
        assert run.data.metrics["test_2016_flickr/bleu"] == pytest.approx(bleu[run.data.params["model.name"]])


@pytest.mark.parametrize(("uri", "cwd", "expected"), [
    ("sqlite:///mlflow.db", "/work/p/.dvc/tmp/exps/tmpab12cd", "sqlite:////work/p/mlflow.db"),
    ("sqlite:///mlflow.db", "/work/p/.dvc/tmp/exps/standalone/tmpab12cd", "sqlite:////work/p/mlflow.db"),
    ("sqlite:///runs/mlflow.db", "/work/p/.dvc/tmp/exps/tmpab12cd", "sqlite:////work/p/runs/mlflow.db"),
    ("sqlite:///mlflow.db", "/work/p", "sqlite:///mlflow.db"),
    ("sqlite:////srv/mlflow.db", "/work/p/.dvc/tmp/exps/tmpab12cd", "sqlite:////srv/mlflow.db"),
    ("http://127.0.0.1:5000", "/work/p/.dvc/tmp/exps/tmpab12cd", "http://127.0.0.1:5000"),
])
def test_store_uri_in_temp_clone(uri, cwd, expected):
    assert project_store_uri(uri, Path(cwd)) == expected
