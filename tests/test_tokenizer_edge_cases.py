"""Tokenizer edge cases on real SentencePiece models: special strings as text, unseen characters, byte fallback."""

from __future__ import annotations

import pytest

from nmt.tokenizer import BOS_ID, EOS_ID, PAD_ID, UNK_ID, Tokenizer, train_sentencepiece

SPECIAL_TEXT = ["a </s> b", "<s> two dogs", "a <pad> cat <unk>", "</s></s><s>", "x < y > z / w"]
UNSEEN = "A dog 狗 runs ☃"


@pytest.fixture(scope="module")
def training_text(data_dir) -> list[str]:
    """Both sides of the first 400 Multi30k training pairs: text without '<' or '>'."""
    from nmt.data.parallel import load_parallel

    text = load_parallel(data_dir / "train.en.gz", data_dir / "train.fr.gz", drop_empty=True)
    sentences = text.source[:400] + text.target[:400]
    assert not any("<" in line or ">" in line for line in sentences)
    return sentences


@pytest.fixture(scope="module", params=[False, True], ids=["no_byte_fallback", "byte_fallback"])
def tokenizer(request, training_text, tmp_path_factory) -> Tokenizer:
    folder = tmp_path_factory.mktemp("spm")
    model = train_sentencepiece(training_text, folder / "spm", vocab_size=500, byte_fallback=request.param)
    return Tokenizer(model)


def test_special_strings_encode_as_plain_text(tokenizer):
    for text in SPECIAL_TEXT:
        ids = tokenizer.encode([text])[0]
        assert not {PAD_ID, UNK_ID, BOS_ID, EOS_ID} & set(ids), f"{text!r} -> {tokenizer.pieces(ids)}"


def test_special_strings_round_trip(tokenizer):
    assert tokenizer.decode(tokenizer.encode(SPECIAL_TEXT)) == SPECIAL_TEXT


def test_decode_drops_only_pad_bos_eos(tokenizer):
    ids = tokenizer.encode(["two dogs"])[0]
    assert tokenizer.decode([[BOS_ID, *ids, EOS_ID, PAD_ID, PAD_ID]]) == ["two dogs"]


def test_unseen_characters_without_byte_fallback(training_text, tmp_path):
    tokenizer = Tokenizer(train_sentencepiece(training_text, tmp_path / "spm", vocab_size=500))
    ids = tokenizer.encode([UNSEEN])[0]

    assert ids.count(UNK_ID) == 2
    assert tokenizer.decode([ids]) == ["A dog  ⁇  runs  ⁇ "]


def test_unseen_characters_round_trip_with_byte_fallback(training_text, tmp_path):
    tokenizer = Tokenizer(train_sentencepiece(training_text, tmp_path / "spm", vocab_size=500, byte_fallback=True))
    ids = tokenizer.encode([UNSEEN])[0]

    assert UNK_ID not in ids
    assert tokenizer.decode([ids]) == [UNSEEN]


def test_translation_output_uses_tokenizer_decode(training_text, tmp_path):
    """Greedy translation (used by evaluate and the validation samples) decodes <unk> like Tokenizer.decode."""
    import torch

    from nmt.decoding import translate_sentences
    from nmt.model import ModelConfig, Transformer

    tokenizer = Tokenizer(train_sentencepiece(training_text, tmp_path / "spm", vocab_size=500))
    torch.manual_seed(0)
    config = ModelConfig(src_vocab_size=tokenizer.vocab_size, tgt_vocab_size=tokenizer.vocab_size, d_model=16,
                         n_heads=1, n_encoder_layers=1, n_decoder_layers=1, d_ff=32, dropout=0.0)
    model = Transformer(config)
    with torch.no_grad():  # make the model predict <unk> at every step
        model.output.b_out.zero_()
        model.output.b_out[UNK_ID] = 100.0
    hypotheses = translate_sentences(model, tokenizer, ["two dogs"], max_len_a=0.0, max_len_b=2)

    assert hypotheses == tokenizer.decode([[UNK_ID, UNK_ID]])
    assert hypotheses == [" ⁇  ⁇ "]


def test_tokenizer_folder_layouts(training_text, tmp_path):
    """A folder with spm.model loads as one joint tokenizer, one with spm.src.model and spm.tgt.model as a pair."""
    from nmt.tokenizer import load_tokenizers

    joint_dir, separate_dir = tmp_path / "joint", tmp_path / "separate"
    joint_dir.mkdir()
    separate_dir.mkdir()
    train_sentencepiece(training_text, joint_dir / "spm", vocab_size=500)
    train_sentencepiece(training_text[:400], separate_dir / "spm.src", vocab_size=400)

    joint = load_tokenizers(joint_dir)
    assert joint.joint
    assert load_tokenizers(joint_dir / "spm.model").source.model_path == joint_dir / "spm.model"
    # Only the source model: the folder is incomplete, and the error names both expected layouts.
    with pytest.raises(FileNotFoundError, match=r"expected spm.model, or spm.src.model and spm.tgt.model"):
        load_tokenizers(separate_dir)

    train_sentencepiece(training_text[400:], separate_dir / "spm.tgt", vocab_size=450)
    separate = load_tokenizers(separate_dir)
    assert not separate.joint
    assert (separate.source.vocab_size, separate.target.vocab_size) == (400, 450)

    # Both layouts in one folder are ambiguous.
    (separate_dir / "spm.model").write_bytes((joint_dir / "spm.model").read_bytes())
    with pytest.raises(ValueError, match="has both spm.model and per-side models"):
        load_tokenizers(separate_dir)


def test_datamodule_rejects_other_layout(training_text, tmp_path):
    """A config with tokenizer.joint=false stops at a folder with one joint model, before any data is read."""
    from pathlib import Path

    from nmt.config import ConfigError, Paths, compose
    from nmt.training.datamodule import TranslationDataModule

    paths = Paths(tmp_path)
    paths.tokenizer_dir.mkdir(parents=True)
    train_sentencepiece(training_text, paths.tokenizer_dir / "spm", vocab_size=500)
    conf_dir = Path(__file__).resolve().parents[1] / "conf"
    cfg = compose(["tokenizer.joint=false", "model.tie_embeddings=false"], conf_dir)

    with pytest.raises(ConfigError, match=r"tokenizer.joint=false, but .* has one joint model; rerun the tokenizer"):
        TranslationDataModule(cfg, paths)
