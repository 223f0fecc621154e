"""``nmt translate`` end to end: a tiny checkpoint and a SentencePiece model trained on Multi30k lines."""

from __future__ import annotations

import gzip
import io
import os
import subprocess
import sys

import pytest
import torch

from nmt.cli import main
from nmt.data.parallel import read_lines
from nmt.tokenizer import Tokenizer, train_sentencepiece
from nmt.training.module import TranslationModule

MAX_POSITIONS = 24


@pytest.fixture(scope="module")
def translator(data_dir, tmp_path_factory) -> dict:
    """Write a tokenizer (500 pieces) and an untrained checkpoint in the layout that load_model reads."""
    folder = tmp_path_factory.mktemp("translator")
    lines = read_lines(data_dir / "train.en.gz")[:300] + read_lines(data_dir / "train.fr.gz")[:300]
    tokenizer_path = train_sentencepiece(lines, folder / "spm", vocab_size=500)
    vocab_size = Tokenizer(tokenizer_path).vocab_size

    cfg = {
        "model": {
            "d_model": 32, "n_heads": 2, "n_encoder_layers": 1, "n_decoder_layers": 1, "d_ff": 64,
            "dropout": 0.0, "norm_first": True, "tie_embeddings": True, "max_positions": MAX_POSITIONS,
        },
        "decode": {"batch_size": 4, "max_len_a": 1.0, "max_len_b": 3},
    }
    torch.manual_seed(0)
    module = TranslationModule(cfg, vocab_size, vocab_size)
    checkpoint = folder / "tiny.ckpt"
    torch.save(
        {
            "hyper_parameters": {"cfg": cfg, "src_vocab_size": vocab_size, "tgt_vocab_size": vocab_size},
            "state_dict": module.state_dict(),
        },
        checkpoint,
    )
    return {"checkpoint": str(checkpoint), "tokenizer": str(tokenizer_path)}


def run_cli(translator: dict, *args: str) -> int:
    return main(["translate", "--checkpoint", translator["checkpoint"], "--tokenizer", translator["tokenizer"], *args])


def set_stdin(monkeypatch, data: bytes) -> None:
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(data), encoding="utf-8"))


def test_text_argument_prints_one_line(translator, capsys):
    assert run_cli(translator, "A man rides a bike.") == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 1
    assert lines[0].strip()


def test_stdin_empty_lines_stay_empty(translator, monkeypatch, capsys):
    set_stdin(monkeypatch, b"A dog runs.\n\nTwo girls play.\n   \t \nA cat.\n")
    assert run_cli(translator, "--beam-size", "2") == 0
    lines = capsys.readouterr().out.split("\n")
    assert lines[-1] == ""                      # the output ends with a newline
    assert len(lines[:-1]) == 5
    assert lines[1] == ""
    assert lines[3] == ""
    assert all(lines[i].strip() for i in (0, 2, 4))


def test_input_file_to_output_file(translator, tmp_path):
    source = tmp_path / "in.txt"
    source.write_text("A dog runs.\nTwo girls play.\n\n", encoding="utf-8")
    target = tmp_path / "out" / "translations.txt"
    assert run_cli(translator, "--input", str(source), "--output", str(target)) == 0
    lines = target.read_text(encoding="utf-8").split("\n")
    assert len(lines) == 4                      # three lines, each ending with a newline
    assert lines[0].strip()
    assert lines[1].strip()
    assert lines[2] == ""


def test_gzip_input_file(translator, tmp_path, capsys):
    source = tmp_path / "in.txt.gz"
    with gzip.open(source, "wb") as handle:
        handle.write(b"A dog runs.\nA cat.\n")
    assert run_cli(translator, "--input", str(source)) == 0
    assert len(capsys.readouterr().out.splitlines()) == 2


def test_output_matches_stdin(translator, tmp_path, monkeypatch, capsys):
    data = b"A dog runs.\nTwo girls play on the beach.\n"
    source = tmp_path / "in.txt"
    source.write_bytes(data)
    target = tmp_path / "out.txt"
    assert run_cli(translator, "--input", str(source), "--output", str(target)) == 0
    set_stdin(monkeypatch, data)
    assert run_cli(translator) == 0
    assert capsys.readouterr().out == target.read_text(encoding="utf-8")


def test_unseen_characters_translate_with_warning(translator, capsys, caplog):
    with caplog.at_level("WARNING"):
        assert run_cli(translator, "Жизнь ☃ 😀 is good.") == 0
    assert len(capsys.readouterr().out.splitlines()) == 1
    assert "line 1:" in caplog.text
    assert "<unk>" in caplog.text


def test_overlong_line_truncated_with_warning(translator, monkeypatch, capsys, caplog):
    long_line = " ".join(["A man and a dog run on the beach."] * 6)
    set_stdin(monkeypatch, f"A cat.\n{long_line}\n".encode())
    with caplog.at_level("WARNING"):
        assert run_cli(translator) == 0
    assert len(capsys.readouterr().out.splitlines()) == 2
    assert "line 2:" in caplog.text
    assert "line 1:" not in caplog.text
    assert f"{MAX_POSITIONS} source positions" in caplog.text


def test_non_utf8_file_fails_without_output(translator, tmp_path, capsys):
    source = tmp_path / "latin1.txt"
    source.write_bytes("A dog runs.\nCafé au lait.\n".encode("latin-1"))
    target = tmp_path / "out.txt"
    assert run_cli(translator, "--input", str(source), "--output", str(target)) == 1
    error = capsys.readouterr().err
    assert str(source) in error
    assert "line 2" in error
    assert "invalid UTF-8" in error
    assert not target.exists()
    assert list(tmp_path.iterdir()) == [source]


def test_non_utf8_file_keeps_old_output(translator, tmp_path):
    source = tmp_path / "latin1.txt"
    source.write_bytes("Café.\n".encode("latin-1"))
    target = tmp_path / "out.txt"
    target.write_text("previous\n", encoding="utf-8")
    assert run_cli(translator, "--input", str(source), "--output", str(target)) == 1
    assert target.read_text(encoding="utf-8") == "previous\n"


def test_non_utf8_stdin_names_line(translator, monkeypatch, capsys):
    set_stdin(monkeypatch, b"ok\nbad \xff byte\n")
    assert run_cli(translator) == 1
    error = capsys.readouterr().err
    assert "<stdin>, line 2" in error


def test_non_utf8_exit_status_from_entry_point(translator, tmp_path):
    source = tmp_path / "bad.txt"
    source.write_bytes(b"\xe9t\xe9\n")
    target = tmp_path / "out.txt"
    command = [
        sys.executable, "-m", "nmt.cli", "translate", "--checkpoint", translator["checkpoint"],
        "--tokenizer", translator["tokenizer"], "--input", str(source), "--output", str(target),
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    completed = subprocess.run(command, capture_output=True, text=True, env=env, timeout=120)
    assert completed.returncode != 0
    assert f"{source}, line 1" in completed.stderr
    assert not target.exists()


def test_nbest_lines_sorted_with_scores(translator, monkeypatch, capsys):
    set_stdin(monkeypatch, b"A dog runs.\n\nTwo girls play.\n")
    assert run_cli(translator, "--beam-size", "4", "--n-best", "3") == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 9
    assert lines[3:6] == ["", "", ""]
    for first in (0, 6):
        scores = [float(line.split("\t")[0]) for line in lines[first : first + 3]]
        assert scores == sorted(scores, reverse=True)
        assert all(len(line.split("\t")) == 2 for line in lines[first : first + 3])


def test_greedy_matches_beam_size_one(translator, capsys):
    sentence = "Two young men are playing soccer."
    assert run_cli(translator, "--greedy", sentence) == 0
    greedy = capsys.readouterr().out
    assert run_cli(translator, "--beam-size", "1", sentence) == 0
    assert capsys.readouterr().out == greedy


def test_nbest_above_beam_rejected(translator, capsys):
    assert run_cli(translator, "--greedy", "--n-best", "2", "A dog.") == 1
    assert "--n-best" in capsys.readouterr().err


def test_missing_checkpoint_error(translator, tmp_path, capsys):
    code = main(["translate", "--checkpoint", str(tmp_path / "none.ckpt"), "--tokenizer", translator["tokenizer"], "x"])
    assert code == 1
    assert "none.ckpt not found" in capsys.readouterr().err


def test_trace_prints_steps_and_masks(translator, capsys):
    assert run_cli(translator, "--trace", "A dog runs.") == 0
    out = capsys.readouterr().out
    assert "step 1\n" in out
    assert "step 2\n" in out
    assert "top 5:" in out
    assert "chosen:" in out
    step2 = out.split("step 2\n")[1].split("step 3\n")[0]
    assert "    1 0\n    1 1\n" in step2
    assert out.rstrip().splitlines()[-1].startswith("translation:")


def test_trace_needs_text(translator, monkeypatch, capsys):
    set_stdin(monkeypatch, b"A dog.\n")
    assert run_cli(translator, "--trace") == 1
    assert "--trace" in capsys.readouterr().err


def test_lowercasing_tokenizer_rejected(translator, tmp_path, capsys):
    """The checkpoint was trained on text as written, so a tokenizer folder that lowercases its input is rejected."""
    from pathlib import Path

    from nmt.tokenizer import SETTINGS_FILE, write_settings

    folder = tmp_path / "lowercased"
    folder.mkdir()
    (folder / "spm.model").write_bytes(Path(translator["tokenizer"]).read_bytes())
    write_settings(folder, lowercase=True)
    assert (folder / SETTINGS_FILE).is_file()

    code = main(["translate", "--checkpoint", translator["checkpoint"], "--tokenizer", str(folder), "A dog."])
    assert code == 1
    err = capsys.readouterr().err
    assert "was trained on text as written, but" in err
    assert "encodes lowercased text" in err
    assert "pass the tokenizer folder the model was trained with (--tokenizer)" in err
