"""SentencePiece subword tokenizer: training and loading, with fixed ids for the special tokens.

Special ids are the same in every model this project trains:

    PAD_ID = 0  "<pad>"   padding, never predicted, masked out of attention and the loss
    UNK_ID = 1  "<unk>"   pieces outside the vocabulary
    BOS_ID = 2  "<s>"     start-of-sequence, the first decoder input
    EOS_ID = 3  "</s>"    end-of-sequence, appended to every source and target

The literal strings "<pad>", "<unk>", "<s>" and "</s>" in input text are plain text. SentencePiece never
matches control symbols in input, and every model has the characters of these strings in its vocabulary
(``REQUIRED_CHARS``). So they are encoded as ordinary pieces, never as ids 0-3, and decode back exactly.
Other characters never seen in training become ``<unk>`` (decoded as " ⁇ ") unless the model was trained
with ``byte_fallback``, which encodes them as UTF-8 byte pieces that decode back exactly.

A tokenizer folder has either one joint model for both languages (``spm.model``, needed for tied
embeddings) or one model per side (``spm.src.model`` and ``spm.tgt.model``); ``load_tokenizers`` reads
either as a ``TokenizerPair``. A folder trained on lowercased text also contains ``tokenizer.json`` with
``{"lowercase": true}``. Its tokenizers lowercase every sentence before encoding it, so the model reads and
writes lowercase text only. Without that file the text is encoded unchanged.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

import sentencepiece as spm

log = logging.getLogger(__name__)

PAD_ID, UNK_ID, BOS_ID, EOS_ID = 0, 1, 2, 3
SPECIAL_TOKENS = ("<pad>", "<unk>", "<s>", "</s>")
# Characters always given a piece, even if the training text lacks them, so that the special strings typed
# as text (for example "</s>") are encoded as ordinary pieces instead of <unk>.
REQUIRED_CHARS = "".join(sorted(set("".join(SPECIAL_TOKENS))))

JOINT_MODEL = "spm.model"
SOURCE_MODEL, TARGET_MODEL = "spm.src.model", "spm.tgt.model"
SETTINGS_FILE = "tokenizer.json"


def train_sentencepiece(
    sentences: list[str],
    model_prefix: Path,
    vocab_size: int,
    model_type: str = "unigram",
    character_coverage: float = 1.0,
    byte_fallback: bool = False,
) -> Path:
    """Train a SentencePiece model on ``sentences`` and return the path of ``<model_prefix>.model``.

    Training is deterministic: every sentence is used (no sampling) in a fixed order, on one thread, and the
    model file does not record the folder it was trained in. The characters of ``REQUIRED_CHARS`` are in
    every model's vocabulary.
    """
    if vocab_size <= len(SPECIAL_TOKENS):
        raise ValueError(f"tokenizer.vocab_size={vocab_size} must exceed the {len(SPECIAL_TOKENS)} special tokens")

    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(sentences),
        model_prefix=str(model_prefix),
        vocab_size=vocab_size,
        model_type=model_type,
        character_coverage=character_coverage,
        byte_fallback=byte_fallback,
        pad_id=PAD_ID,
        unk_id=UNK_ID,
        bos_id=BOS_ID,
        eos_id=EOS_ID,
        pad_piece=SPECIAL_TOKENS[PAD_ID],
        unk_piece=SPECIAL_TOKENS[UNK_ID],
        bos_piece=SPECIAL_TOKENS[BOS_ID],
        eos_piece=SPECIAL_TOKENS[EOS_ID],
        input_sentence_size=0,
        shuffle_input_sentence=False,
        num_threads=1,
        hard_vocab_limit=False,
        required_chars=REQUIRED_CHARS,
        minloglevel=2,
    )
    model_path = Path(f"{model_prefix}.model")
    _drop_training_folder(model_path)
    return model_path


def _drop_training_folder(model_path: Path) -> None:
    """Keep only the file name in the model's stored ``trainer_spec.model_prefix``.

    SentencePiece records the full prefix it was given, and the tokenizer stage trains in a temporary folder
    with a random name. Without this step the same data would give model files with different bytes.
    """
    from sentencepiece import sentencepiece_model_pb2  # needs protobuf, which mlflow already requires

    proto = sentencepiece_model_pb2.ModelProto()
    proto.ParseFromString(model_path.read_bytes())
    proto.trainer_spec.model_prefix = model_path.stem
    model_path.write_bytes(proto.SerializeToString())


class Tokenizer:
    """A trained SentencePiece model: text to ids and back."""

    def __init__(self, model_path: str | Path, lowercase: bool = False) -> None:
        self.model_path = Path(model_path)
        self.lowercase = lowercase
        if not self.model_path.is_file():
            raise FileNotFoundError(
                f"tokenizer model {self.model_path} not found; run the tokenizer stage first (dvc repro tokenizer)"
            )
        self.sp = spm.SentencePieceProcessor(model_file=str(self.model_path))
        ids = (self.sp.pad_id(), self.sp.unk_id(), self.sp.bos_id(), self.sp.eos_id())
        if ids != (PAD_ID, UNK_ID, BOS_ID, EOS_ID):
            raise ValueError(f"{self.model_path} has special ids {ids}, expected {(PAD_ID, UNK_ID, BOS_ID, EOS_ID)}")

    @property
    def vocab_size(self) -> int:
        return self.sp.get_piece_size()

    def encode(self, texts: list[str]) -> list[list[int]]:
        """Encode sentences to piece ids, without start or end tokens (lowercased first if ``lowercase``)."""
        if self.lowercase:
            texts = [text.lower() for text in texts]
        return self.sp.encode(texts, out_type=int)

    def decode(self, ids: list[list[int]]) -> list[str]:
        """Decode id lists back to text, ignoring padding, start and end tokens."""
        special = {PAD_ID, BOS_ID, EOS_ID}
        return self.sp.decode([[i for i in seq if i not in special] for seq in ids])

    def pieces(self, ids: list[int]) -> list[str]:
        return [self.sp.id_to_piece(i) for i in ids]


@dataclass(frozen=True)
class TokenizerPair:
    """The tokenizers of the two sides: ``source`` encodes the input, ``target`` encodes references and decodes
    outputs. With a joint vocabulary both are the same ``Tokenizer``."""

    source: Tokenizer
    target: Tokenizer

    @property
    def joint(self) -> bool:
        return self.source is self.target

    @property
    def lowercase(self) -> bool:
        return self.source.lowercase


def as_pair(tokenizers: Tokenizer | TokenizerPair) -> TokenizerPair:
    """Return ``tokenizers`` as a pair; one ``Tokenizer`` is taken as the joint tokenizer of both sides."""
    if isinstance(tokenizers, TokenizerPair):
        return tokenizers
    return TokenizerPair(tokenizers, tokenizers)


def tokenizer_files(folder: str | Path) -> list[Path]:
    """Return the model files of a tokenizer folder: [spm.model], or [spm.src.model, spm.tgt.model].

    Raise FileNotFoundError naming the folder if it has neither a joint model nor both per-side models, and
    ValueError if it has both layouts.
    """
    folder = Path(folder)
    joint = folder / JOINT_MODEL
    separate = [folder / SOURCE_MODEL, folder / TARGET_MODEL]
    if joint.is_file() and any(path.is_file() for path in separate):
        raise ValueError(
            f"{folder} has both {JOINT_MODEL} and per-side models; rerun the tokenizer stage (dvc repro tokenizer) "
            "or remove the layout the model was not trained with"
        )
    if joint.is_file():
        return [joint]
    if all(path.is_file() for path in separate):
        return separate
    raise FileNotFoundError(
        f"no tokenizer in {folder}: expected {JOINT_MODEL}, or {SOURCE_MODEL} and {TARGET_MODEL}; run the "
        "tokenizer stage first (dvc repro tokenizer)"
    )


def write_settings(folder: str | Path, lowercase: bool) -> None:
    """Record in ``folder`` that its models were trained on lowercased text (nothing to write otherwise)."""
    if lowercase:
        (Path(folder) / SETTINGS_FILE).write_text(json.dumps({"lowercase": True}) + "\n", encoding="utf-8")


def read_settings(folder: str | Path) -> dict:
    """Return the settings of a tokenizer folder: ``{"lowercase": bool}``, false when it has no settings file.

    Raise ValueError naming the file if it is not a JSON object with a boolean ``lowercase``.
    """
    path = Path(folder) / SETTINGS_FILE
    if not path.is_file():
        return {"lowercase": False}
    try:
        settings = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ValueError(
            f"{path} is not valid JSON ({error}); rerun the tokenizer stage (dvc repro tokenizer)"
        ) from None
    if not isinstance(settings, dict) or not isinstance(settings.get("lowercase"), bool):
        raise ValueError(
            f'{path} is invalid: expected a JSON object like {{"lowercase": true}}, found {settings!r}; rerun the '
            "tokenizer stage (dvc repro tokenizer)"
        )
    return settings


def load_tokenizers(path: str | Path) -> TokenizerPair:
    """Load the tokenizers of a folder (see ``tokenizer_files``), or one model file as a joint tokenizer.

    The settings file of the folder (of the model file's folder, for one file) sets ``lowercase``.
    """
    path = Path(path)
    folder = path if path.is_dir() else path.parent
    lowercase = read_settings(folder)["lowercase"]
    if path.is_dir():
        files = tokenizer_files(path)
        if len(files) == 1:
            return as_pair(Tokenizer(files[0], lowercase))
        return TokenizerPair(Tokenizer(files[0], lowercase), Tokenizer(files[1], lowercase))
    return as_pair(Tokenizer(path, lowercase))
