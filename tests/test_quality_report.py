"""benchmarks/quality.py without a run: the recipe check against conf/experiment and the markdown report."""

from __future__ import annotations

import importlib.util

import pytest
from omegaconf import OmegaConf

from conftest import CONF_DIR, REPO
from nmt.config import compose


@pytest.fixture(scope="module")
def quality():
    """Load benchmarks/quality.py as a module, because benchmarks/ is not a package."""
    spec = importlib.util.spec_from_file_location("quality", REPO / "benchmarks" / "quality.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def recipe_params(experiment: str) -> dict:
    """Return the config a run of ``experiment`` writes to params.yaml, as a plain dict."""
    return OmegaConf.to_container(compose([f"experiment={experiment}"], CONF_DIR), resolve=True)


def quality_entry(lowercase: bool) -> dict:
    """Return a quality.json entry of an en->de run, trained on lowercased text or not."""
    config = {"model": "tiny", "lr": 0.005}
    if lowercase:
        config["tokenizer_lowercase"] = True
    return {
        "test_2016_flickr": {"bleu_lc_tok": 41.2, "bleu": 35.1, "greedy": {"bleu_lc_tok": 40.1, "bleu": 34.0}},
        "test_2017_flickr": {"bleu_lc_tok": 33.0, "bleu": 28.0},
        "train_wall_time_s": 6900.0, "experiment": "multi30k_en_de", "mlflow_run_id": "abc123",
        "mlflow_store": "sqlite:///mlflow.db", "checkpoint": "best.ckpt", "epochs": 97, "steps": 13000,
        "stop_reason": "max_time", "best_val_bleu": 41.0, "average_val_bleu": 40.8, "config": config,
        "target_bleu_lc_tok_test_2016": 41.0, "target_met": True,
    }


@pytest.mark.parametrize("experiment", ["multi30k_en_de", "multi30k_en_fr"])
def test_recipe_check_accepts_recipe(quality, experiment):
    quality.check_recipe(REPO, experiment, recipe_params(experiment))


def test_recipe_check_names_lowercase_mismatch(quality):
    params = recipe_params("multi30k_en_de")
    assert params["tokenizer"]["lowercase"] is True

    params["tokenizer"]["lowercase"] = False
    with pytest.raises(SystemExit, match=r"tokenizer\.lowercase=False, but experiment=multi30k_en_de sets True"):
        quality.check_recipe(REPO, "multi30k_en_de", params)

    del params["tokenizer"]["lowercase"]   # A run made before the key existed has no such key.
    with pytest.raises(SystemExit, match=r"tokenizer\.lowercase=None"):
        quality.check_recipe(REPO, "multi30k_en_de", params)


def test_markdown_marks_lowercase_run(quality):
    lowercase_report = quality.markdown({"multi30k_en_de": quality_entry(lowercase=True)})
    assert "tokenizer_lowercase True" in lowercase_report
    assert "Trained on lowercased text" in lowercase_report
    assert "| multi30k_en_de | `multi30k_en_de` | 41.2 | 41.0 (met) | 35.1 |" in lowercase_report

    cased_report = quality.markdown({"multi30k_en_de": quality_entry(lowercase=False)})
    assert "lowercase" not in cased_report.split("## multi30k_en_de")[1]
