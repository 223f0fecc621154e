"""End-to-end checks of the train stage on a tiny synthetic corpus: when training stops, and what MLflow holds.

Each test writes a project folder (prepared text and a trained SentencePiece model) under tmp_path and runs
``nmt.stages.train.run`` there with the seed_minimal model for at most a few epochs.
"""

from __future__ import annotations

import itertools
import shutil
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from nmt.config import Paths, compose
from nmt.stages import train
from nmt.tokenizer import train_sentencepiece
from nmt.training import module as training_module
from nmt.training.module import load_model

pytestmark = pytest.mark.slow

CONFIG_DIR = Path(__file__).resolve().parents[1] / "conf"
MAX_EPOCHS = 3

SUBJECTS = [("the cat", "le chat"), ("a dog", "un chien"), ("the bird", "l'oiseau"), ("my friend", "mon ami")]
VERBS = [("sees", "voit"), ("eats", "mange"), ("likes", "aime")]
OBJECTS = [("the apple", "la pomme"), ("a book", "un livre"), ("the water", "l'eau"), ("bread", "du pain")]


def synthetic_pairs() -> list[tuple[str, str]]:
    """Return 48 English-French sentence pairs of the form subject, verb, object."""
    return [
        (f"{s_en} {v_en} {o_en}", f"{s_fr} {v_fr} {o_fr}")
        for (s_en, s_fr), (v_en, v_fr), (o_en, o_fr) in itertools.product(SUBJECTS, VERBS, OBJECTS)
    ]


def write_lines(path: Path, lines: list[str]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")


@pytest.fixture(scope="module")
def prepared_data(tmp_path_factory) -> Path:
    """Return a ``data/`` folder with prepared train and val splits and a joint SentencePiece model."""
    paths = Paths(tmp_path_factory.mktemp("template"))
    pairs = synthetic_pairs()
    splits = {"train": pairs[:40], "val": pairs[40:]}
    for split, split_pairs in splits.items():
        write_lines(paths.split_file(split, "en"), [en for en, _ in split_pairs])
        write_lines(paths.split_file(split, "fr"), [fr for _, fr in split_pairs])

    paths.tokenizer_dir.mkdir(parents=True)
    train_sentences = [en for en, _ in splits["train"]] + [fr for _, fr in splits["train"]]
    train_sentencepiece(train_sentences, paths.tokenizer_dir / "spm", vocab_size=48)
    return paths.root / "data"


@pytest.fixture
def project(tmp_path, prepared_data, monkeypatch) -> Paths:
    """Return a fresh project folder holding a copy of the prepared data, and make it the working folder."""
    shutil.copytree(prepared_data, tmp_path / "data")
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    return Paths(tmp_path)


def tiny_config(project: Paths, target_loss: str, max_epochs: int = MAX_EPOCHS):
    return compose(
        [
            "model=seed_minimal",
            "trainer.precision=32-true",
            f"trainer.max_epochs={max_epochs}",
            "tokenizer.vocab_size=48",
            "train.max_tokens=200",
            f"train.target_loss={target_loss}",
            "train.log_every_n_steps=1",
            "train.grad_norm_every_n_steps=1",
            "train.val_samples=2",
            "decode.max_len_b=4",
            f"mlflow.tracking_uri=sqlite:///{project.root / 'mlflow.db'}",
        ],
        CONFIG_DIR,
    )


def epoch_batches(project: Paths, cfg) -> int:
    """Return the number of training batches in one epoch of ``cfg``."""
    from nmt.training.datamodule import TranslationDataModule

    datamodule = TranslationDataModule(cfg, project)
    datamodule.setup()
    return len(datamodule.train_dataloader())


def run_tags(project: Paths, run_id: str) -> dict[str, str]:
    client = MlflowClient(tracking_uri=f"sqlite:///{project.root / 'mlflow.db'}")
    return client.get_run(run_id).data.tags


def test_stops_at_target_loss(project):
    # Any first epoch's mean cross-entropy over 48 pieces is far below 100, so the target is met at once.
    summary = train.run(tiny_config(project, "100.0"), project)

    assert summary["stop_reason"] == "target_loss"
    assert summary["epochs"] == 1
    assert run_tags(project, summary["mlflow_run_id"])["stop_reason"] == "target_loss"


@pytest.mark.parametrize("target_loss", ["0.0", "null"])
def test_stops_at_max_epochs(project, target_loss):
    # With label smoothing the training loss stays above 0, so a target of 0 is never reached.
    summary = train.run(tiny_config(project, target_loss), project)

    assert summary["stop_reason"] == "max_epochs"
    assert summary["epochs"] == MAX_EPOCHS
    assert run_tags(project, summary["mlflow_run_id"])["stop_reason"] == "max_epochs"


def test_grad_norm_metric_per_weight(project):
    summary = train.run(tiny_config(project, "null", max_epochs=1), project)
    client = MlflowClient(tracking_uri=f"sqlite:///{project.root / 'mlflow.db'}")
    run_id = summary["mlflow_run_id"]
    metric_keys = set(client.get_run(run_id).data.metrics)
    model, _ = load_model(project.models / "last.ckpt")
    expected = {f"grad_norm/{name}" for name in model.named_weights()}

    grad_norm_keys = {key for key in metric_keys if key.startswith("grad_norm/")}
    assert summary["steps"] >= 2
    assert grad_norm_keys == expected
    for key in sorted(expected):
        history = client.get_metric_history(run_id, key)
        # grad_norm_every_n_steps=1 logs at every optimizer step.
        assert len(history) == summary["steps"], key
        assert sorted(point.step for point in history) == list(range(summary["steps"])), key
        assert all(point.value > 0 for point in history), key


def test_cooldown_lowers_lr_to_limit(project, monkeypatch):
    # A 6-second budget with the cooldown spread over all of it: the lr falls from about the peak to near 0.
    # The share of the budget spent is measured at every step, so that the last lr is close to the limit's.
    monkeypatch.setattr(training_module, "COOLDOWN_REFRESH_STEPS", 1)
    cfg = tiny_config(project, "null", max_epochs=10_000)
    cfg.trainer.max_time_minutes = 0.1
    cfg.optim.scheduler = "constant"
    cfg.optim.cooldown_fraction = 1.0
    peak = cfg.optim.lr

    summary = train.run(cfg, project)

    client = MlflowClient(tracking_uri=f"sqlite:///{project.root / 'mlflow.db'}")
    history = sorted(client.get_metric_history(summary["mlflow_run_id"], "train/lr"), key=lambda point: point.step)
    lrs = [point.value for point in history]
    assert summary["stop_reason"] == "max_time"
    # Every epoch of the 40 training pairs has the same number of batches; a partial last epoch is not counted.
    batches = epoch_batches(project, cfg)
    assert summary["epochs"] == summary["steps"] // batches
    assert len(lrs) >= 10
    assert lrs[0] > 0.8 * peak
    assert lrs[-1] < 0.2 * peak
    assert all(later <= earlier for earlier, later in zip(lrs, lrs[1:]))
