"""Tiny training projects for tests: a Multi30k subset and a real SentencePiece model, prepared once per session.

Training the tiny config takes a few seconds on one CPU core: 120 training pairs in about 18 batches per
epoch, a one-layer model with d_model 32 and dropout 0.3 (so that RNG state matters when a run is resumed).
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import time
from pathlib import Path

import pytest

from conftest import CONF_DIR, REPO, write_params
from nmt.config import Paths, compose
from nmt.stages import prepare, tokenizer

TINY_TRAINING = [
    "data.max_train_pairs=120",
    "data.max_eval_pairs=8",
    "model=tiny",
    "model.d_model=32",
    "model.n_encoder_layers=1",
    "model.n_decoder_layers=1",
    "model.d_ff=64",
    "model.dropout=0.3",
    "tokenizer.vocab_size=300",
    "trainer.max_epochs=2",
    "trainer.precision=32-true",
    "train.max_tokens=300",
    "train.grad_norm_every_n_steps=5",
    "train.log_every_n_steps=5",
    "train.val_samples=1",
    "train.checkpoint_every_n_steps=5",
    "evaluate.samples=3",
    "decode.max_len_a=0.5",
    "decode.max_len_b=2",
]

_prepared: dict[str, Path] = {}


def tiny_config(tracking_root: Path, *overrides: str):
    """Compose the tiny config, logging to the MLflow store ``tracking_root/mlflow.db``."""
    return compose([*TINY_TRAINING, f"mlflow.tracking_uri=sqlite:///{tracking_root}/mlflow.db", *overrides],
                   CONF_DIR)


def prepared_folder(tmp_path_factory, data_dir: Path) -> Path:
    """Return a folder with ``data/prepared`` and ``data/tokenizer`` of the tiny config, built once per session.

    Its ``mlflow.db`` is the MLflow store shared by the tests, so that each test does not pay for creating one.
    """
    if "root" not in _prepared:
        root = tmp_path_factory.mktemp("tiny-data")
        cfg = tiny_config(root, f"data.local_dir={data_dir}")
        prepare.run(cfg, Paths(root))
        tokenizer.run(cfg, Paths(root))
        _prepared["root"] = root
    return _prepared["root"]


def new_project(folder: Path, prepared: Path, cfg=None) -> Paths:
    """Copy the prepared data into ``folder`` (and write ``cfg`` as its params.yaml) and return its Paths."""
    folder.mkdir(parents=True, exist_ok=True)
    shutil.copytree(prepared / "data", folder / "data")
    if cfg is not None:
        write_params(folder, cfg)
    return Paths(folder)


def copy_repository(root: Path) -> Path:
    """Copy what `dvc repro` needs (configs, sources, dvc.yaml and the DVC config, not its cache) into ``root``."""
    for name in ("conf", "src", "dvc.yaml", ".dvc", ".dvcignore"):
        source = REPO / name
        if source.is_dir():
            shutil.copytree(source, root / name, ignore=shutil.ignore_patterns("cache", "tmp", "config.local",
                                                                                  "__pycache__"))
        elif source.exists():
            shutil.copy(source, root / name)
    return root


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def stage_env() -> dict[str, str]:
    """Return the environment for a stage subprocess: one thread per rank, rendezvous on 127.0.0.1 only."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(free_port())}
    env.pop("MLFLOW_TRACKING_URI", None)
    if Path("/sys/class/net/lo").exists():
        env["GLOO_SOCKET_IFNAME"] = "lo"
    return env


def wait_for_mid_epoch_state(paths: Paths, process: subprocess.Popen, timeout: float, min_step: int = 0,
                             log_path: Path | None = None) -> dict:
    """Poll the train stage's resume state until it names a checkpoint saved within an epoch at global step
    ``min_step`` or later, and return the state.

    Fail the test if ``process`` ends first, showing the end of ``log_path`` when given, or after ``timeout``
    seconds.
    """
    from nmt.training.resume import STATE_FILE

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            tail = log_path.read_text()[-3000:] if log_path else ""
            pytest.fail(f"train stage ended (exit code {process.returncode}) before a mid-epoch checkpoint\n{tail}")
        for path in paths.checkpoints.glob(f"train-*/{STATE_FILE}"):
            try:
                state = json.loads(path.read_text())
            except ValueError:
                continue
            if state.get("checkpoint") and state.get("batches_done") is not None and state["global_step"] >= min_step:
                return state
        time.sleep(0.02)
    process.kill()
    pytest.fail(f"no mid-epoch checkpoint within {timeout} s")
