"""Training on lowercased text (``tokenizer.lowercase``): the tokenizer folder, encoding, scoring, end to end."""

from __future__ import annotations

import json

import pytest

from nmt.config import ConfigError
from nmt.data.parallel import read_lines
from nmt.evaluation import score
from nmt.stages import evaluate, references, tokenizer, train
from nmt.tokenizer import SETTINGS_FILE, Tokenizer, load_tokenizers, train_sentencepiece
from nmt.training.callbacks import ValidationTranslations
from nmt.training.datamodule import TranslationDataModule
from tiny_project import new_project, prepared_folder, tiny_config

pytestmark = pytest.mark.slow

REFERENCES = [
    "A man in a blue shirt rides a red bicycle down the street .",
    "Two young girls are playing with a brown dog in the park .",
]


@pytest.fixture(scope="module")
def lowercased(tmp_path_factory, data_dir) -> dict:
    """A tiny project whose tokenizer stage ran with tokenizer.lowercase=true, trained and evaluated."""
    prepared = prepared_folder(tmp_path_factory, data_dir)
    cfg = tiny_config(prepared, f"data.local_dir={data_dir}", "tokenizer.lowercase=true")
    paths = new_project(tmp_path_factory.mktemp("lowercase"), prepared)
    tokenizer.run(cfg, paths)
    summary = train.run(cfg, paths)
    references.run(cfg, paths)
    metrics = evaluate.run(cfg, paths)
    return {"cfg": cfg, "paths": paths, "prepared": prepared, "summary": summary, "metrics": metrics}


def test_tokenizer_folder_records_lowercase(lowercased):
    folder = lowercased["paths"].tokenizer_dir
    assert json.loads((folder / SETTINGS_FILE).read_text()) == {"lowercase": True}

    tokenizers = load_tokenizers(folder)
    assert tokenizers.source.lowercase
    assert tokenizers.target.lowercase
    pieces = [tokenizers.source.sp.id_to_piece(i) for i in range(tokenizers.source.vocab_size)]
    assert [piece for piece in pieces if piece != piece.lower() and piece not in ("<s>", "</s>")] == []


def test_encoding_ignores_case(lowercased):
    tokenizers = load_tokenizers(lowercased["paths"].tokenizer_dir)
    assert tokenizers.source.encode(["A Man Rides A Bike."]) == tokenizers.source.encode(["a man rides a bike."])
    assert tokenizers.target.decode(tokenizers.target.encode(["Un Homme"])) == ["un homme"]


def test_default_tokenizer_keeps_case(lowercased):
    folder = lowercased["prepared"] / "data" / "tokenizer"
    assert not (folder / SETTINGS_FILE).exists()
    tokenizers = load_tokenizers(folder)
    assert not tokenizers.lowercase
    assert tokenizers.source.encode(["A Man"]) != tokenizers.source.encode(["a man"])


def test_hypotheses_are_lowercase(lowercased):
    metrics = lowercased["metrics"]
    assert metrics["tokenizer_lowercase"] is True
    samples = (lowercased["paths"].reports / "samples.md").read_text(encoding="utf-8")
    hypotheses = [line.removeprefix("- hypothesis: ") for line in samples.splitlines()
                  if line.startswith("- hypothesis: ")]
    assert hypotheses
    assert all(hypothesis == hypothesis.lower() for hypothesis in hypotheses)
    assert all(0 <= metrics[test_set]["bleu_lc_tok"] <= 100 for test_set in ("test_2016_flickr", "test_2017_flickr"))


def test_val_bleu_ignores_case(lowercased):
    """val/bleu of a lowercasing model ignores case. With a cased tokenizer the same hypotheses score lower."""
    hypotheses = [reference.lower() for reference in REFERENCES]
    cased_folder = lowercased["prepared"] / "data" / "tokenizer"

    def validation(folder) -> ValidationTranslations:
        return ValidationTranslations(["x", "y"], REFERENCES, load_tokenizers(folder), None, samples=0, bleu=True)

    assert validation(lowercased["paths"].tokenizer_dir).corpus_bleu(hypotheses) == 100.0
    assert validation(cased_folder).corpus_bleu(hypotheses) < 100.0


def test_score_lowercase_signature():
    hypotheses = [reference.lower() for reference in REFERENCES]
    lowered = score(hypotheses, REFERENCES, lowercase=True)
    assert lowered["bleu"] == 100.0
    assert "case:lc" in lowered["bleu_signature"]
    cased = score(hypotheses, REFERENCES)
    assert cased["bleu"] < 100.0
    assert "case:mixed" in cased["bleu_signature"]


def test_datamodule_rejects_lowercase_mismatch(lowercased):
    """A config without tokenizer.lowercase stops at a lowercased tokenizer folder, and the other way round."""
    cased_cfg = tiny_config(lowercased["prepared"])
    with pytest.raises(ConfigError, match=r"tokenizer.lowercase=false, but .* was trained on lowercased text; "
                                          r"rerun the tokenizer stage"):
        TranslationDataModule(cased_cfg, lowercased["paths"])

    cased_paths = new_project(lowercased["paths"].root.parent / "cased", lowercased["prepared"])
    with pytest.raises(ConfigError, match=r"tokenizer.lowercase=true, but .* was trained on text as written"):
        TranslationDataModule(lowercased["cfg"], cased_paths)


@pytest.mark.parametrize("content, problem", [
    ("{not json", "is not valid JSON"),
    ('{"lowercase": "yes"}', 'is invalid: expected a JSON object like {"lowercase": true}'),
    ("[true]", 'is invalid: expected a JSON object like {"lowercase": true}'),
])
def test_bad_settings_file_named(tmp_path, content, problem):
    (tmp_path / SETTINGS_FILE).write_text(content, encoding="utf-8")
    with pytest.raises(ValueError, match=rf"{tmp_path / SETTINGS_FILE} {problem}.*rerun the tokenizer stage"):
        load_tokenizers(tmp_path)


def test_lowercasing_keeps_sharp_s(data_dir, tmp_path):
    """Python's lowercasing keeps 'ß' (Unicode case folding would write 'ss'), as the official references do."""
    lines = [line.lower() for line in read_lines(data_dir / "train.de.gz")[:400]]
    assert any("ß" in line for line in lines)
    model = Tokenizer(train_sentencepiece(lines, tmp_path / "spm", vocab_size=400), lowercase=True)
    assert model.decode(model.encode(["Ein Mann geht über die STRASSE und die Straße."])) == [
        "ein mann geht über die strasse und die straße."
    ]
