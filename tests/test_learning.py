"""Training and decoding together: a tiny model learns numbers in English words -> French words."""

from __future__ import annotations

import json

import pytest
import torch

from conftest import CONF_DIR
from nmt.config import Paths, compose
from nmt.data.parallel import write_lines
from nmt.data.synthetic import number_pairs, split_numbers
from nmt.decoding import translate_sentences
from nmt.stages import train
from nmt.tokenizer import Tokenizer, train_sentencepiece
from nmt.training.module import load_model

HELD_OUT = 20


def make_synthetic_project(root, held_out: int = HELD_OUT) -> tuple[list[str], list[str]]:
    """Write the number task into root/data/{prepared,tokenizer} and return the held-out pairs."""
    paths = Paths(root)
    train_numbers, test_numbers = split_numbers(held_out, seed=7)
    train_en, train_fr = number_pairs(train_numbers)
    test_en, test_fr = number_pairs(test_numbers)

    paths.prepared.mkdir(parents=True)
    write_lines(paths.split_file("train", "en"), train_en)
    write_lines(paths.split_file("train", "fr"), train_fr)
    write_lines(paths.split_file("val", "en"), test_en)
    write_lines(paths.split_file("val", "fr"), test_fr)

    paths.tokenizer_dir.mkdir(parents=True)
    train_sentencepiece(train_en + train_fr, paths.tokenizer_dir / "spm", vocab_size=120, model_type="bpe")
    return test_en, test_fr


@pytest.mark.slow
def test_tiny_model_learns_number_translation(tmp_path, monkeypatch):
    test_en, test_fr = make_synthetic_project(tmp_path)
    monkeypatch.chdir(tmp_path)
    cfg = compose(
        [
            "model=tiny",
            "model.d_model=64",
            "model.n_heads=4",
            "model.n_encoder_layers=2",
            "model.n_decoder_layers=2",
            "model.d_ff=256",
            "model.dropout=0.0",
            "tokenizer.vocab_size=120",
            "optim.lr=0.004",
            "optim.warmup_steps=60",
            "train.max_tokens=600",
            "train.label_smoothing=0.0",
            "train.target_loss=0.01",
            "train.val_samples=4",
            "trainer.precision=32-true",
            "trainer.max_epochs=80",
            "trainer.max_time_minutes=3",   # only a safety limit, because the target loss stops the run first
            f"mlflow.tracking_uri=sqlite:///{tmp_path}/mlflow.db",
        ],
        CONF_DIR,
    )
    torch.manual_seed(0)
    summary = train.run(cfg, Paths(tmp_path))

    model, _ = load_model(tmp_path / "models" / "last.ckpt")
    tokenizer = Tokenizer(tmp_path / "data" / "tokenizer" / "spm.model")
    hypotheses = translate_sentences(model, tokenizer, test_en, max_len_a=2.0, max_len_b=5)

    assert summary["stop_reason"] == "target_loss", json.dumps(summary)
    wrong = [(src, ref, hyp) for src, ref, hyp in zip(test_en, test_fr, hypotheses) if ref != hyp]
    assert len(wrong) <= 1, f"{len(wrong)} of {HELD_OUT} held-out numbers mistranslated: {wrong}"
