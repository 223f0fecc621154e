"""Config checking: unknown keys, wrong types and impossible values are rejected before any stage runs."""

from __future__ import annotations

import logging
import subprocess
import sys

import pytest
from omegaconf import OmegaConf

from conftest import CONF_DIR, REPO, write_params
from nmt.config import ConfigError, check, compose, load_params


def composed():
    return compose([], CONF_DIR)


def test_default_config_passes():
    check(composed())


@pytest.mark.parametrize("group", ["model=seed_minimal", "model=base", "optim=sgd", "trainer=gpu",
                                   "data=multi30k_en_de"])
def test_group_options_pass(group):
    check(compose([group], CONF_DIR))


@pytest.mark.parametrize(
    "key, value, message",
    [
        ("model.d_modell", 64, r"unknown config key 'model.d_modell'.*d_model"),
        ("train.checkpoint_every", 5, r"unknown config key 'train.checkpoint_every'"),
        ("extra", 1, r"unknown config key 'extra'.*top level"),
    ],
)
def test_unknown_key_rejected(key, value, message):
    cfg = composed()
    OmegaConf.set_struct(cfg, False)
    OmegaConf.update(cfg, key, value, force_add=True)
    with pytest.raises(ConfigError, match=message):
        check(cfg)


def test_unknown_key_from_hydra_override():
    with pytest.raises(ConfigError, match=r"unknown config key 'model.heads'"):
        compose(["+model.heads=4"], CONF_DIR)


@pytest.mark.parametrize(
    "override, message",
    [
        ("model.d_model=abc", r"model.d_model='abc' has the wrong type.*int"),
        ("model.n_heads=2.5", r"model.n_heads=2.5 has the wrong type"),
        ("model.norm_first=maybe", r"model.norm_first='maybe' has the wrong type.*bool"),
        ("optim.lr=fast", r"optim.lr='fast' has the wrong type.*float"),
        ("train.max_tokens=null", r"train.max_tokens=None has the wrong type"),
        ("data.splits=train", r"data.splits='train' has the wrong type"),
    ],
)
def test_wrong_type_rejected(override, message):
    with pytest.raises(ConfigError, match=message):
        compose([override], CONF_DIR)


@pytest.mark.parametrize(
    "override, message",
    [
        ("model.n_heads=3", r"model.d_model=256 is not divisible by model.n_heads=3"),
        ("model.n_heads=0", r"model.n_heads=0 must be a positive integer"),
        ("optim.lr=-0.1", r"optim.lr=-0.1 must be positive"),
        ("optim.lr=0", r"optim.lr=0.0 must be positive"),
        ("tokenizer.vocab_size=4", r"tokenizer.vocab_size=4 must exceed the 4 special tokens"),
        ("tokenizer.vocab_size=-1", r"tokenizer.vocab_size=-1 must exceed"),
        ("model.dropout=1.5", r"model.dropout=1.5 must be in \[0, 1\)"),
        ("train.label_smoothing=-0.1", r"train.label_smoothing=-0.1"),
        ("train.checkpoint_every_n_steps=0", r"train.checkpoint_every_n_steps=0 must be a positive integer"),
        ("data.max_length=0", r"data.max_length=0 must be a positive integer"),
        ("data.max_length_ratio=0.5", r"data.max_length_ratio=0.5 must be at least 1"),
        ("trainer.precision=8-bit", r"trainer.precision='8-bit' is unknown"),
        ("optim.scheduler=cosine", r"optim.scheduler='cosine' is unknown"),
        ("tokenizer.joint=false", r"model.tie_embeddings=true needs tokenizer.joint=true"),
        ("optim.cooldown_fraction=0", r"optim.cooldown_fraction=0.0 must be in \(0, 1\]"),
        ("optim.cooldown_fraction=1.5", r"optim.cooldown_fraction=1.5 must be in \(0, 1\]"),
        ("evaluate.test_sets=[test_2018_flickr]", r"evaluate.test_sets has \['test_2018_flickr'\]"),
        ("data.tgt_lang=en", r"data.src_lang and data.tgt_lang are both 'en'"),
        ("evaluate.length_penalty_grid=[1.0,-0.5]",
         r"evaluate.length_penalty_grid=\[1.0, -0.5\] must list zero or positive values"),
        ("evaluate.length_penalty_grid=[]", r"evaluate.length_penalty_grid=\[\] must list zero or positive values"),
    ],
)
def test_impossible_value_rejected(override, message):
    with pytest.raises(ConfigError, match=message):
        compose([override], CONF_DIR)


def test_length_penalty_grid_needs_beam():
    with pytest.raises(ConfigError, match=r"decode.beam_size=1 \(greedy\) uses no length penalty"):
        compose(["evaluate.length_penalty_grid=[0.6,1.0]", "decode.beam_size=1"], CONF_DIR)


def test_cooldown_needs_time_limit():
    with pytest.raises(ConfigError, match=r"optim.cooldown_fraction=0.2 is a share of the time limit.*"
                                          r"trainer.max_time_minutes is null"):
        compose(["optim.cooldown_fraction=0.2", "trainer.max_time_minutes=null"], CONF_DIR)


def test_every_problem_reported_at_once():
    with pytest.raises(ConfigError) as error:
        compose(["optim.lr=-1", "model.n_heads=3", "tokenizer.vocab_size=2"], CONF_DIR)
    message = str(error.value)
    assert "3 problems" in message
    assert "optim.lr=-1.0" in message
    assert "model.n_heads=3" in message
    assert "tokenizer.vocab_size=2" in message


def test_missing_key_rejected(tmp_path):
    cfg = composed()
    OmegaConf.set_struct(cfg, False)
    del cfg.model["d_ff"]
    write_params(tmp_path, cfg)
    with pytest.raises(ConfigError, match=r"missing config keys: model.d_ff"):
        load_params(tmp_path / "params.yaml")


def test_stage_rejects_bad_params_before_work(tmp_path):
    cfg = composed()
    OmegaConf.set_struct(cfg, False)
    cfg.model.n_heads = 3
    write_params(tmp_path, cfg)
    result = subprocess.run([sys.executable, "-m", "nmt.stages.prepare"], cwd=tmp_path, capture_output=True,
                            text=True, timeout=120)

    assert result.returncode == 1
    assert "model.d_model=256 is not divisible by model.n_heads=3" in result.stderr
    assert not (tmp_path / "data").exists()
    assert not (tmp_path / "reports").exists()


def test_params_yaml_passes_check():
    load_params(REPO / "params.yaml")


@pytest.mark.parametrize("override, message", [
    ("optim.lr=-1", "optim.lr=-1.0 must be positive"),
    ("model=nonexistent", "Could not find 'model/nonexistent'"),
    ("+model.foo=1", "unknown config key 'model.foo'"),
])
def test_nmt_command_reports_config_error_in_one_line(override, message, caplog):
    from nmt.cli import main

    with caplog.at_level(logging.ERROR, logger="nmt"):
        assert main(["weights", override, "--config-dir", str(CONF_DIR)]) == 2
    assert message in caplog.text
    assert "Traceback" not in caplog.text
