"""The prepare stage: real Multi30k files in, validated splits out, clear errors on bad input folders."""

from __future__ import annotations

import gzip
import json
import shutil

import pytest

from conftest import CONF_DIR
from nmt.config import Paths, compose
from nmt.data.multi30k import DATA_DIR_ENV, DataError, load_checksums
from nmt.data.parallel import load_parallel, read_lines
from nmt.stages import prepare


def small_cfg(local_dir):
    return compose([f"data.local_dir={local_dir}", "data.max_train_pairs=200", "data.max_eval_pairs=20"], CONF_DIR)


def test_prepare_writes_every_split(tmp_path, data_dir, monkeypatch):
    monkeypatch.delenv(DATA_DIR_ENV, raising=False)
    prepare.run(small_cfg(data_dir), Paths(tmp_path))

    for split, count in [("train", 200), ("val", 20), ("test_2016_flickr", 20), ("test_2017_flickr", 20)]:
        for lang in ("en", "fr"):
            lines = read_lines(tmp_path / "data" / "prepared" / f"{split}.{lang}")
            assert len(lines) == count, f"{split}.{lang}"
    report = json.loads((tmp_path / "reports" / "data.json").read_text())
    assert report["splits"]["train"]["read"] == 29000
    assert report["splits"]["val"]["read"] == 1014


def test_env_variable_overrides_config(tmp_path, data_dir, monkeypatch):
    monkeypatch.setenv(DATA_DIR_ENV, str(data_dir))
    prepare.run(small_cfg(tmp_path / "nowhere"), Paths(tmp_path))
    assert (tmp_path / "data" / "prepared" / "train.fr").is_file()


def test_missing_folder_names_fix(tmp_path, monkeypatch):
    monkeypatch.delenv(DATA_DIR_ENV, raising=False)
    with pytest.raises(DataError, match=f"does not exist.*{DATA_DIR_ENV}"):
        prepare.run(small_cfg(tmp_path / "absent"), Paths(tmp_path))
    assert not (tmp_path / "data").exists()


def test_incomplete_folder_names_missing_files(tmp_path, data_dir, monkeypatch):
    monkeypatch.delenv(DATA_DIR_ENV, raising=False)
    partial = tmp_path / "partial"
    partial.mkdir()
    for name in ("train.en.gz", "train.fr.gz", "val.en.gz"):
        shutil.copy(data_dir / name, partial / name)

    with pytest.raises(DataError) as error:
        prepare.run(small_cfg(partial), Paths(tmp_path / "project"))
    message = str(error.value)
    assert "val.fr.gz" in message
    assert "test_2016_flickr.en.gz" in message
    assert "train.en.gz" not in message
    assert DATA_DIR_ENV in message
    assert not (tmp_path / "project" / "data" / "prepared").exists()
    assert not (tmp_path / "project" / "reports").exists()


def test_corrupt_file_fails_checksum(tmp_path, data_dir, monkeypatch):
    monkeypatch.delenv(DATA_DIR_ENV, raising=False)
    copy = tmp_path / "copy"
    shutil.copytree(data_dir, copy)
    with gzip.open(copy / "val.fr.gz", "wb") as handle:
        handle.write(b"tampered\n")

    with pytest.raises(DataError, match="checksum mismatch.*val.fr.gz"):
        prepare.run(small_cfg(copy), Paths(tmp_path / "project"))
    assert not (tmp_path / "project" / "data" / "prepared").exists()


def test_checksums_cover_every_split():
    names = load_checksums()
    for split in ("train", "val", "test_2016_flickr", "test_2017_flickr"):
        for lang in ("en", "fr", "de"):
            assert f"{split}.{lang}.gz" in names


def test_line_count_mismatch_names_both_files(tmp_path):
    src, tgt = tmp_path / "a.en", tmp_path / "a.fr"
    src.write_text("one\ntwo\nthree\n", encoding="utf-8")
    tgt.write_text("un\ndeux\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"a\.en has 3 lines.*a\.fr has 2"):
        load_parallel(src, tgt)


def test_invalid_utf8_names_line(tmp_path):
    path = tmp_path / "bad.fr"
    path.write_bytes("un\ndeux\n".encode() + b"trois \xff\n")
    with pytest.raises(DataError, match=r"bad\.fr, line 3: invalid UTF-8"):
        read_lines(path)


def test_whitespace_normalized_and_empty_pairs_dropped(tmp_path):
    src, tgt = tmp_path / "a.en", tmp_path / "a.fr"
    src.write_text("  two\tdogs  \n\n three \n", encoding="utf-8")
    tgt.write_text("deux\u00a0chiens\nvide\ntrois\n", encoding="utf-8")
    text = load_parallel(src, tgt, drop_empty=True)
    assert text.source == ["two dogs", "three"]
    assert text.target == ["deux chiens", "trois"]
    assert text.counts["empty_dropped"] == 1


def test_empty_side_rejected_in_eval_split(tmp_path):
    src, tgt = tmp_path / "a.en", tmp_path / "a.fr"
    src.write_text("one\n   \n", encoding="utf-8")
    tgt.write_text("un\ndeux\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"a\.en, line 2: empty sentence"):
        load_parallel(src, tgt)
