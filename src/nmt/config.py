"""Load, compose and check the configuration.

The stages read ``params.yaml``, the composed default configuration that DVC tracks. ``compose`` builds the
same thing from the Hydra groups in ``conf/`` with overrides, for tests, the CLI and Hydra sweeps.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

HYDRA_VERSION_BASE = "1.3"


class ConfigError(ValueError):
    """Raised when a configuration value is invalid, before any work starts."""


def load_params(path: str | os.PathLike = "params.yaml") -> DictConfig:
    """Load and check the composed configuration that DVC passes to the stages."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path} not found; run from the project folder, where params.yaml lives")
    cfg = OmegaConf.load(path)
    check(cfg)
    return cfg


def compose(overrides: list[str] | None = None, config_dir: str | os.PathLike = "conf") -> DictConfig:
    """Compose ``conf/config.yaml`` with Hydra overrides such as ``["model=seed_minimal"]``."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    with initialize_config_dir(config_dir=str(Path(config_dir).resolve()), version_base=HYDRA_VERSION_BASE):
        cfg = hydra_compose(config_name="config", overrides=list(overrides or []))
    check(cfg)
    return cfg


def check(cfg: DictConfig) -> None:
    """Reject unknown keys, wrong types and impossible values before any work starts.

    The config is merged into the typed schema ``nmt.schema.Config`` first, so a misspelled key or a value of
    the wrong type fails here. Then every value is checked against its range, and all problems are reported
    together in one ConfigError that names each key, its value and the fix.
    """
    typed = typed_config(cfg)
    problems = value_problems(typed)
    if len(problems) == 1:
        raise ConfigError(problems[0])
    if problems:
        raise ConfigError(f"invalid configuration, {len(problems)} problems:\n- " + "\n- ".join(problems))


def typed_config(cfg: DictConfig) -> DictConfig:
    """Merge ``cfg`` into the typed schema; raise ConfigError on an unknown key, a wrong type or a missing key."""
    from omegaconf.errors import ConfigKeyError, OmegaConfBaseException, ValidationError

    from nmt.schema import Config

    try:
        typed = OmegaConf.merge(OmegaConf.structured(Config), cfg)
    except ConfigKeyError as error:
        raise ConfigError(_unknown_key_message(error)) from None
    except ValidationError as error:
        raise ConfigError(_wrong_type_message(cfg, error)) from None
    except OmegaConfBaseException as error:
        raise ConfigError(f"invalid configuration: {_first_line(error)}") from None

    missing = sorted(OmegaConf.missing_keys(typed))
    if missing:
        raise ConfigError(
            f"missing config keys: {', '.join(missing)}; add them to the YAML files in conf/ and regenerate "
            "params.yaml"
        )
    return typed


def _first_line(error: Exception) -> str:
    return str(getattr(error, "msg", error)).splitlines()[0]


def _unknown_key_message(error) -> str:
    key = error.full_key or str(error.key)
    section = key.rpartition(".")[0]
    schema = error.object_type
    valid = sorted(f.name for f in dataclasses.fields(schema)) if dataclasses.is_dataclass(schema) else []
    where = f"under '{section}'" if section else "at the top level"
    return (
        f"unknown config key '{key}'; the valid keys {where} are {', '.join(valid)}. "
        "Remove the key or correct its spelling."
    )


def _wrong_type_message(cfg: DictConfig, error) -> str:
    key = error.full_key
    if not key:
        return f"invalid configuration: {_first_line(error)}"
    value = OmegaConf.select(cfg, key, default=None)
    schema = error.object_type
    expected = ""
    if dataclasses.is_dataclass(schema):
        types = {f.name: f.type for f in dataclasses.fields(schema)}
        field_name = key.rpartition(".")[2]
        if field_name in types:
            expected = f"; set it to a value of type {types[field_name]}"
    return f"{key}={value!r} has the wrong type ({_first_line(error)}){expected}"


PRECISIONS = ("32-true", "32", "bf16-mixed", "bf16-true", "16-mixed", "16-true", "64-true", "64", "16", "bf16")
SCHEDULERS = ("inverse_sqrt", "constant")
TOKENIZER_TYPES = ("unigram", "bpe", "char", "word")


MONITORS = ("val/bleu", "val/loss")


def value_problems(cfg: DictConfig) -> list[str]:
    """Return one message for every value of a typed config that is out of range or contradicts another."""
    from nmt.tokenizer import SPECIAL_TOKENS

    problems: list[str] = []

    def require(condition: bool, message: str) -> None:
        if not condition:
            problems.append(message)

    def positive(key: str, value, optional: bool = False) -> None:
        if value is None and optional:
            return
        require(value is not None and value >= 1, f"{key}={value} must be a positive integer")

    data = cfg.data
    require(data.src_lang != data.tgt_lang, f"data.src_lang and data.tgt_lang are both {data.src_lang!r}; "
                                            "choose two different languages")
    require("train" in data.splits and "val" in data.splits,
            f"data.splits={list(data.splits)} must include 'train' and 'val'")
    positive("data.max_train_pairs", data.max_train_pairs, optional=True)
    positive("data.max_eval_pairs", data.max_eval_pairs, optional=True)
    positive("data.max_length", data.max_length, optional=True)
    if data.max_length_ratio is not None:
        require(data.max_length_ratio >= 1.0,
                f"data.max_length_ratio={data.max_length_ratio} must be at least 1 (longer side / shorter side); "
                "use null to keep every pair")

    model = cfg.model
    for key in ("d_model", "n_heads", "n_encoder_layers", "n_decoder_layers", "d_ff", "max_positions"):
        positive(f"model.{key}", model[key])
    if model.n_heads >= 1 and model.d_model % model.n_heads != 0:
        problems.append(
            f"model.d_model={model.d_model} is not divisible by model.n_heads={model.n_heads}; "
            "choose sizes with d_model % n_heads == 0"
        )
    for key in ("dropout", "attention_dropout", "activation_dropout"):
        require(0.0 <= model[key] < 1.0, f"model.{key}={model[key]} must be in [0, 1)")
    require(not model.tie_embeddings or cfg.tokenizer.joint,
            "model.tie_embeddings=true needs tokenizer.joint=true (one shared vocabulary)")

    optim = cfg.optim
    require(optim.lr > 0, f"optim.lr={optim.lr} must be positive")
    require(optim.name in ("adam", "sgd"), f"optim.name={optim.name!r} is unknown; use 'adam' or 'sgd'")
    if optim.name == "adam":
        betas = optim.betas
        require(betas is not None and len(betas) == 2 and all(0.0 <= b < 1.0 for b in betas),
                f"optim.betas={None if betas is None else list(betas)} must be two values in [0, 1) for adam")
        require(optim.eps is not None and optim.eps > 0, f"optim.eps={optim.eps} must be positive for adam")
        require(optim.weight_decay is not None and optim.weight_decay >= 0,
                f"optim.weight_decay={optim.weight_decay} must be zero or positive for adam")
    require(optim.scheduler in SCHEDULERS,
            f"optim.scheduler={optim.scheduler!r} is unknown; use one of {', '.join(SCHEDULERS)}")
    require(optim.warmup_steps >= 0, f"optim.warmup_steps={optim.warmup_steps} must be zero or positive")
    require(optim.grad_clip is None or optim.grad_clip > 0,
            f"optim.grad_clip={optim.grad_clip} must be positive; use null to disable clipping")
    cooldown = optim.get("cooldown_fraction")
    require(cooldown is None or 0 < cooldown <= 1,
            f"optim.cooldown_fraction={cooldown} must be in (0, 1]; use null for no cooldown")
    require(cooldown is None or cfg.trainer.max_time_minutes is not None,
            f"optim.cooldown_fraction={cooldown} is a share of the time limit, but trainer.max_time_minutes is "
            "null; set a time limit or use optim.cooldown_fraction=null")

    trainer = cfg.trainer
    require(str(trainer.precision) in PRECISIONS,
            f"trainer.precision={trainer.precision!r} is unknown; use one of {', '.join(PRECISIONS)}")
    positive("trainer.max_epochs", trainer.max_epochs)
    positive("trainer.num_nodes", trainer.num_nodes)
    require(trainer.max_time_minutes is None or trainer.max_time_minutes > 0,
            f"trainer.max_time_minutes={trainer.max_time_minutes} must be positive; use null for no time limit")

    tok = cfg.tokenizer
    require(tok.vocab_size > len(SPECIAL_TOKENS),
            f"tokenizer.vocab_size={tok.vocab_size} must exceed the {len(SPECIAL_TOKENS)} special tokens "
            f"({', '.join(SPECIAL_TOKENS)})")
    require(tok.model_type in TOKENIZER_TYPES,
            f"tokenizer.model_type={tok.model_type!r} is unknown; use one of {', '.join(TOKENIZER_TYPES)}")
    require(0.0 < tok.character_coverage <= 1.0,
            f"tokenizer.character_coverage={tok.character_coverage} must be in (0, 1]")

    train = cfg.train
    require(0.0 <= train.label_smoothing < 1.0, f"train.label_smoothing={train.label_smoothing} must be in [0, 1)")
    positive("train.max_tokens", train.max_tokens)
    positive("train.log_every_n_steps", train.log_every_n_steps)
    positive("train.grad_norm_every_n_steps", train.grad_norm_every_n_steps)
    positive("train.checkpoint_every_n_steps", train.checkpoint_every_n_steps, optional=True)
    require(train.val_samples >= 0, f"train.val_samples={train.val_samples} must be zero or positive")
    require(train.target_loss is None or train.target_loss >= 0,
            f"train.target_loss={train.target_loss} must be zero or positive; use null to train to the limits")
    require(train.monitor in MONITORS, f"train.monitor={train.monitor!r} is unknown; use one of {', '.join(MONITORS)}")
    require(train.monitor != "val/bleu" or train.val_bleu,
            "train.monitor=val/bleu needs train.val_bleu=true; enable it or monitor val/loss")
    positive("train.early_stopping_patience", train.early_stopping_patience, optional=True)
    positive("train.average_last_n", train.average_last_n)

    decode = cfg.decode
    positive("decode.batch_size", decode.batch_size)
    positive("decode.beam_size", decode.beam_size)
    require(decode.length_penalty >= 0, f"decode.length_penalty={decode.length_penalty} must be zero or positive")
    require(decode.max_len_a >= 0 and decode.max_len_b >= 0,
            f"decode.max_len_a={decode.max_len_a} and decode.max_len_b={decode.max_len_b} must be zero or positive")

    grid = cfg.evaluate.get("length_penalty_grid")
    if grid is not None:
        require(len(grid) > 0 and all(alpha >= 0 for alpha in grid),
                f"evaluate.length_penalty_grid={list(grid)} must list zero or positive values; "
                "use null to keep decode.length_penalty")
        require(decode.beam_size > 1,
                "evaluate.length_penalty_grid is set, but decode.beam_size=1 (greedy) uses no length penalty; "
                "set decode.beam_size above 1 or evaluate.length_penalty_grid=null")

    unknown_sets = [name for name in cfg.evaluate.test_sets if name not in data.splits]
    require(not unknown_sets, f"evaluate.test_sets has {unknown_sets}, which data.splits={list(data.splits)} "
                              "does not prepare; add them to data.splits or remove them from evaluate.test_sets")
    require(cfg.evaluate.samples >= 0, f"evaluate.samples={cfg.evaluate.samples} must be zero or positive")
    return problems


@dataclass(frozen=True)
class Paths:
    """Input and output locations of the stages inside one project (or sweep job) folder."""

    root: Path

    @property
    def raw(self) -> Path:
        return self.root / "data" / "raw"

    @property
    def prepared(self) -> Path:
        return self.root / "data" / "prepared"

    @property
    def tokenizer_dir(self) -> Path:
        return self.root / "data" / "tokenizer"

    @property
    def models(self) -> Path:
        return self.root / "models"

    @property
    def reports(self) -> Path:
        return self.root / "reports"

    @property
    def checkpoints(self) -> Path:
        """Resume state of interrupted training runs; outside every DVC output, so DVC never deletes it."""
        return self.root / "checkpoints"

    def split_file(self, split: str, lang: str) -> Path:
        return self.prepared / f"{split}.{lang}"


def tracking_uri(cfg: DictConfig) -> str:
    """Return the MLflow tracking URI: ``MLFLOW_TRACKING_URI`` if set, else ``mlflow.tracking_uri``."""
    return os.environ.get("MLFLOW_TRACKING_URI") or cfg.mlflow.tracking_uri
