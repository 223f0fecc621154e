"""params.yaml must stay the composition of conf/, and configs with impossible values are rejected."""

from __future__ import annotations

import pytest
import yaml
from omegaconf import OmegaConf

from conftest import CONF_DIR, REPO
from nmt.config import ConfigError, check, compose


def test_params_yaml_equals_composed_conf():
    composed = OmegaConf.to_container(compose([], CONF_DIR), resolve=True)
    params = yaml.safe_load((REPO / "params.yaml").read_text(encoding="utf-8"))
    assert params == composed


@pytest.mark.parametrize("group", ["data=multi30k_en_de", "model=seed_minimal", "model=base", "model=tiny",
                                   "optim=sgd", "trainer=gpu"])
def test_every_group_option_composes(group):
    cfg = compose([group], CONF_DIR)
    assert cfg.model.d_model % cfg.model.n_heads == 0


@pytest.mark.parametrize("pair", ["en_de", "en_fr"])
def test_experiment_recipes_compose_and_pass_checks(pair):
    cfg = compose([f"experiment=multi30k_{pair}"], CONF_DIR)
    check(cfg)
    assert cfg.data.name == f"multi30k_{pair}"
    assert (cfg.model.name, cfg.model.d_model, cfg.model.n_encoder_layers, cfg.model.d_ff) == ("tiny", 128, 4, 256)
    assert cfg.model.dropout == 0.3
    assert cfg.model.tie_embeddings
    assert cfg.train.label_smoothing == 0.1
    assert cfg.optim.betas == [0.9, 0.98]
    assert cfg.train.monitor == "val/bleu"
    assert cfg.train.average_last_n > 1
    assert cfg.trainer.max_time_minutes <= 120   # a quality run trains for at most 2 hours


def test_val_bleu_monitor_needs_val_bleu():
    with pytest.raises(ConfigError, match="train.val_bleu=true"):
        check(compose(["train.val_bleu=false"], CONF_DIR))


def test_base_model_matches_paper_sizes():
    model = compose(["model=base"], CONF_DIR).model
    assert (model.n_encoder_layers, model.n_decoder_layers) == (6, 6)
    assert (model.d_model, model.n_heads, model.d_ff) == (512, 8, 2048)


def test_seed_minimal_has_one_layer_and_head():
    model = compose(["model=seed_minimal"], CONF_DIR).model
    assert (model.n_encoder_layers, model.n_decoder_layers, model.n_heads) == (1, 1, 1)


@pytest.mark.parametrize(
    "override, message",
    [
        ("model.n_heads=3", "not divisible"),
        ("optim.lr=-0.1", "optim.lr=-0.1"),
        ("tokenizer.vocab_size=3", "special tokens"),
        ("model.dropout=1.5", "model.dropout=1.5"),
    ],
)
def test_impossible_values_rejected(override, message):
    with pytest.raises(ConfigError, match=message):
        compose([override], CONF_DIR)
