"""Bad input data: misaligned files, invalid UTF-8, empty sides, length filters and their counts in data.json."""

from __future__ import annotations

import json
import re

import pytest

from conftest import CONF_DIR
from nmt.config import Paths, compose
from nmt.data.multi30k import DATA_DIR_ENV, DataError
from nmt.data.parallel import (
    ParallelText,
    check_aligned,
    drop_long_pairs,
    drop_unbalanced_pairs,
    load_parallel,
    read_lines,
    take_first,
)
from nmt.stages import prepare
from nmt.training.datamodule import TranslationDataModule


def write_pair(folder, source: str, target: str):
    src, tgt = folder / "pair.en", folder / "pair.fr"
    src.write_text(source, encoding="utf-8")
    tgt.write_text(target, encoding="utf-8")
    return src, tgt


def test_line_count_mismatch_names_files_and_counts(tmp_path):
    src, tgt = write_pair(tmp_path, "one\ntwo\nthree\n", "un\ndeux\n")
    with pytest.raises(DataError) as error:
        load_parallel(src, tgt, drop_empty=True)
    message = str(error.value)
    assert f"{src} has 3 lines" in message
    assert f"{tgt} has 2" in message


def test_invalid_utf8_names_file_and_line(tmp_path):
    src, tgt = write_pair(tmp_path, "one\ntwo\n", "un\n")
    tgt.write_bytes(b"un\nd\xc3\x28ux\n")
    with pytest.raises(DataError, match=re.escape(f"{tgt}, line 2: invalid UTF-8")):
        load_parallel(src, tgt)


def test_whitespace_only_sides_dropped_and_counted(tmp_path):
    src, tgt = write_pair(tmp_path, "a dog\n \t \nthree cats\nbirds\n", "un chien\ndeux\n\u00a0\u2003\noiseaux\n")
    text = load_parallel(src, tgt, drop_empty=True)

    assert text.source == ["a dog", "birds"]
    assert text.target == ["un chien", "oiseaux"]
    assert text.counts == {"read": 4, "empty_dropped": 2, "kept": 2}
    assert text.steps == [{"step": "drop_empty", "limit": None, "before": 4, "after": 2}]


def pairs(*items: tuple[str, str]) -> ParallelText:
    return ParallelText([src for src, _ in items], [tgt for _, tgt in items], {}, [], ("a.en", "a.fr"))


def test_max_length_drops_long_side():
    text = pairs(("a b c", "x y z"), ("a b c d", "x"), ("a", "w x y z"), ("a b", "c d"))
    filtered = drop_long_pairs(text, 3)

    assert filtered.source == ["a b c", "a b"]
    assert filtered.target == ["x y z", "c d"]
    assert filtered.steps == [{"step": "max_length", "limit": 3, "before": 4, "after": 2}]


def test_max_length_ratio_drops_unbalanced_pairs():
    text = pairs(("a b", "x y z w"), ("a b", "x y z w v"), ("a b c d e", "x y"), ("a", "x"))
    filtered = drop_unbalanced_pairs(text, 2.0)

    assert filtered.source == ["a b", "a"]
    assert filtered.target == ["x y z w", "x"]
    assert filtered.steps[-1] == {"step": "max_length_ratio", "limit": 2.0, "before": 4, "after": 2}


def test_disabled_filters_keep_everything_and_are_recorded():
    text = pairs(("a " * 500, "x"), ("a", "x " * 500))
    filtered = take_first(drop_unbalanced_pairs(drop_long_pairs(text, None), None), "max_train_pairs", None)

    assert filtered.source == text.source
    assert [step["step"] for step in filtered.steps] == ["max_length", "max_length_ratio", "max_train_pairs"]
    assert all(step["before"] == step["after"] == 2 for step in filtered.steps)


def test_alignment_check_names_step_and_counts():
    with pytest.raises(DataError, match=r"after tokenizing, a.en has 2 lines but a.fr has 1"):
        check_aligned("tokenizing", ["one", "two"], ["un"], ("a.en", "a.fr"))


def test_datamodule_rejects_misaligned_prepared_files(tmp_path):
    from nmt.tokenizer import train_sentencepiece

    paths = Paths(tmp_path)
    paths.prepared.mkdir(parents=True)
    paths.tokenizer_dir.mkdir(parents=True)
    paths.split_file("train", "en").write_text("a dog\na cat\n", encoding="utf-8")
    paths.split_file("train", "fr").write_text("un chien\n", encoding="utf-8")
    train_sentencepiece(["a dog", "a cat", "un chien"] * 20, paths.tokenizer_dir / "spm", vocab_size=30)

    datamodule = TranslationDataModule(compose([], CONF_DIR), paths)
    with pytest.raises(DataError, match=r"train.en has 2 lines but .*train.fr has 1"):
        datamodule.load_split("train")


@pytest.fixture
def offline(monkeypatch, data_dir):
    monkeypatch.delenv(DATA_DIR_ENV, raising=False)
    return data_dir


def prepared_report(tmp_path, data_dir, *overrides: str) -> dict:
    cfg = compose([f"data.local_dir={data_dir}", "data.max_eval_pairs=30", *overrides], CONF_DIR)
    prepare.run(cfg, Paths(tmp_path))
    return json.loads((tmp_path / "reports" / "data.json").read_text(encoding="utf-8"))


def test_filters_apply_to_training_split_only(tmp_path, offline):
    report = prepared_report(tmp_path, offline, "data.max_length=8", "data.max_length_ratio=1.2")
    train = report["splits"]["train"]
    steps = {step["step"]: step for step in train["steps"]}

    assert train["read"] == 29000
    assert steps["drop_empty"]["after"] == 29000
    assert steps["max_length"] == {"step": "max_length", "limit": 8, "before": 29000,
                                   "after": steps["max_length"]["after"]}
    assert 0 < steps["max_length"]["after"] < 29000
    assert steps["max_length_ratio"]["before"] == steps["max_length"]["after"]
    assert steps["max_length_ratio"]["after"] < steps["max_length_ratio"]["before"]
    assert train["written"] == steps["max_train_pairs"]["after"] == steps["max_length_ratio"]["after"]

    source = read_lines(tmp_path / "data" / "prepared" / "train.en")
    target = read_lines(tmp_path / "data" / "prepared" / "train.fr")
    assert len(source) == len(target) == train["written"]
    assert max(len(line.split()) for line in source + target) <= 8
    for src, tgt in zip(source, target):
        assert max(len(src.split()), len(tgt.split())) <= 1.2 * min(len(src.split()), len(tgt.split()))

    for split in ("val", "test_2016_flickr", "test_2017_flickr"):
        entry = report["splits"][split]
        assert [step["step"] for step in entry["steps"]] == ["max_eval_pairs"]
        assert entry["written"] == 30
    val_source = read_lines(tmp_path / "data" / "prepared" / "val.en")
    assert max(len(line.split()) for line in val_source) > 8


def test_default_filters_keep_every_training_pair(tmp_path, offline):
    report = prepared_report(tmp_path, offline)
    train = report["splits"]["train"]

    assert train["written"] == 29000
    assert [(step["step"], step["limit"]) for step in train["steps"]] == [
        ("drop_empty", None), ("max_length", None), ("max_length_ratio", None), ("max_train_pairs", None)]
