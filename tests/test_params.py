"""params.yaml must stay the composition of conf/, and configs with impossible values are rejected."""

from __future__ import annotations

import pytest
import yaml
from omegaconf import OmegaConf

from conftest import CONF_DIR, REPO
from nmt.config import ConfigError, compose


def test_params_yaml_equals_composed_conf():
    composed = OmegaConf.to_container(compose([], CONF_DIR), resolve=True)
    params = yaml.safe_load((REPO / "params.yaml").read_text(encoding="utf-8"))
    assert params == composed


@pytest.mark.parametrize("group", ["data=multi30k_en_de", "model=seed_minimal", "model=base", "model=tiny",
                                   "optim=sgd", "trainer=gpu"])
def test_every_group_option_composes(group):
    cfg = compose([group], CONF_DIR)
    assert cfg.model.d_model % cfg.model.n_heads == 0


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
