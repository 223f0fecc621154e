"""Shared fixtures: the repository root, the local Multi30k copy, and tiny project folders."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from omegaconf import OmegaConf

REPO = Path(__file__).resolve().parents[1]
CONF_DIR = REPO / "conf"


def multi30k_dir() -> Path:
    """Return the local Multi30k folder: NMT_DATA_DIR if set, else ../shared/data/multi30k next to the repository."""
    return Path(os.environ.get("NMT_DATA_DIR") or REPO.parent / "shared" / "data" / "multi30k")


@pytest.fixture(scope="session")
def data_dir() -> Path:
    path = multi30k_dir()
    if not (path / "train.en.gz").is_file():
        pytest.fail(f"Multi30k copy not found at {path}; set NMT_DATA_DIR to a folder with the raw files")
    return path


@pytest.fixture(autouse=True)
def _quiet_mlflow():
    """Keep tests off any tracking server a developer has configured, and off each other's stores.

    MLflow's ``set_tracking_uri``, which Lightning's MLFlowLogger calls, exports ``MLFLOW_TRACKING_URI``; the
    variable is removed before and after each test so that later subprocesses (dvc, stages) use their own
    params. It is not restored, because a module-scoped fixture that trains runs before this fixture. The
    restored value would be that fixture's store, and it would leak into the next test module.
    """
    os.environ.pop("MLFLOW_TRACKING_URI", None)
    yield
    os.environ.pop("MLFLOW_TRACKING_URI", None)


def write_params(folder: Path, cfg) -> Path:
    path = folder / "params.yaml"
    path.write_text(OmegaConf.to_yaml(cfg), encoding="utf-8")
    return path
