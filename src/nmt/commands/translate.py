"""``nmt translate``: translate text with a trained model.

Input is the TEXT argument, or one sentence per line from ``--input FILE`` or standard input. Output is
one line per input line, to standard output or ``--output FILE``. With ``--n-best N`` it is N lines per
input line, each ``score<TAB>text``. An empty or whitespace-only input line gives empty output lines.

Inputs the model was not trained for:

- Characters that the tokenizer never saw are encoded as ``<unk>``, and a warning names the line. The
  model translates the sentence with that placeholder. An ``<unk>`` in the output is written as " ⁇ ".
  A tokenizer trained with ``byte_fallback`` encodes such characters as byte pieces instead.
- A line with more pieces than the model has source positions is truncated, and a warning names the line.
- A model trained on lowercased text (``tokenizer.lowercase``) lowercases every input and writes lowercase
  output.
- An input that is not valid UTF-8 stops the command with an error naming the file and line, before any
  output file is written."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

log = logging.getLogger(__name__)

DEFAULT_MODELS = "models"
DEFAULT_TOKENIZER = "data/tokenizer"
TRACE_TOP_K = 5


class TranslateError(Exception):
    """Raised for a problem that the user can fix: a missing file, invalid input or conflicting options."""


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "translate",
        help="translate text with a trained model",
        description=__doc__.split("\n\n", 1)[1],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("text", nargs="?", metavar="TEXT",
                        help="sentence to translate (default: read lines from --input or standard input)")
    parser.add_argument("--checkpoint", default=None,
                        help=f"Lightning checkpoint of the model (default: the one {DEFAULT_MODELS}/train_summary.json "
                             "names, best.ckpt or average.ckpt)")
    parser.add_argument("--tokenizer", default=DEFAULT_TOKENIZER,
                        help="tokenizer the checkpoint was trained with: the tokenizer stage's folder (spm.model, or "
                             "spm.src.model and spm.tgt.model) or one joint SentencePiece model file "
                             f"(default: {DEFAULT_TOKENIZER})")
    parser.add_argument("-i", "--input", metavar="FILE", help="UTF-8 text file, one sentence per line (.gz allowed)")
    parser.add_argument("-o", "--output", metavar="FILE",
                        help="write the translations to FILE, replacing it only when every line succeeded")

    parser.add_argument("--beam-size", type=int, default=5, help="beam size (default: 5; 1 is greedy decoding)")
    parser.add_argument("--length-penalty", type=float, default=1.0, metavar="ALPHA",
                        help="GNMT length penalty exponent alpha: scores are log P / ((5 + length) / 6)^alpha "
                             "(default: 1.0; 0 ranks by log-probability). The value that evaluate picked with "
                             "evaluate.length_penalty_grid is not read, so pass it from reports/metrics.json")
    parser.add_argument("--n-best", type=int, metavar="N",
                        help="write the N best translations per input line as 'score<TAB>text' (N <= beam size)")
    parser.add_argument("--greedy", action="store_true", help="greedy decoding, the same as --beam-size 1")
    parser.add_argument("--trace", action="store_true",
                        help="decode TEXT greedily and print every step: prefix, top-5 next pieces with "
                             "probabilities, the chosen piece and the causal mask")

    parser.add_argument("--batch-size", type=int, default=None,
                        help="sentences decoded together (default: decode.batch_size of the checkpoint's config)")
    parser.add_argument("--max-len-a", type=float, default=None,
                        help="a in the output limit a * source length + b, in pieces with the end token "
                             "(default: decode.max_len_a of the checkpoint's config)")
    parser.add_argument("--max-len-b", type=int, default=None,
                        help="b in the output limit a * source length + b "
                             "(default: decode.max_len_b of the checkpoint's config)")
    parser.add_argument("--device", default="auto",
                        help="torch device, such as cpu or cuda (default: cuda if available)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    try:
        check_options(args)
        lines = read_input(args)
        model, tokenizers, decode_cfg = load_translator(args)
        if args.trace:
            print_trace(model, tokenizers, args.text, decode_cfg)
            return 0
        output_lines = translate_lines(model, tokenizers, lines, args, decode_cfg)
        write_output(output_lines, args.output)
    except TranslateError as error:
        print(f"nmt translate: error: {error}", file=sys.stderr)
        return 1
    except BrokenPipeError:
        # The reader closed standard output early (as `| head` does). Point stdout at /dev/null so that
        # the interpreter's final flush does not raise again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    return 0


def check_options(args: argparse.Namespace) -> None:
    """Raise TranslateError for values and combinations of options that cannot work."""
    if args.text is not None and args.input is not None:
        raise TranslateError("give either TEXT or --input FILE, not both")
    if args.greedy:
        args.beam_size = 1
    if args.beam_size < 1:
        raise TranslateError(f"--beam-size={args.beam_size} must be at least 1")
    if args.n_best is not None and not 1 <= args.n_best <= args.beam_size:
        raise TranslateError(
            f"--n-best={args.n_best} must be between 1 and the beam size ({args.beam_size}); raise --beam-size"
        )
    if args.batch_size is not None and args.batch_size < 1:
        raise TranslateError(f"--batch-size={args.batch_size} must be at least 1")
    if args.trace and (args.text is None or args.output is not None or args.n_best is not None):
        raise TranslateError("--trace decodes one sentence given as TEXT and prints to standard output; "
                             "drop --input, --output and --n-best")


def read_input(args: argparse.Namespace) -> list[str]:
    """Return the input sentences: TEXT, the lines of --input FILE, or the lines of standard input."""
    from nmt.data.multi30k import DataError
    from nmt.data.parallel import read_lines

    if args.text is not None:
        return [args.text]
    if args.input is not None:
        path = Path(args.input)
        if not path.is_file():
            raise TranslateError(f"input file {path} not found")
        try:
            return read_lines(path)
        except DataError as error:
            raise TranslateError(str(error)) from error
    return decode_lines(sys.stdin.buffer.read(), "<stdin>")


def decode_lines(raw: bytes, name: str) -> list[str]:
    """Split UTF-8 bytes into lines without line endings; raise TranslateError naming the first invalid line."""
    from nmt.data.multi30k import DataError
    from nmt.data.parallel import decode_utf8_lines

    try:
        return decode_utf8_lines(raw, name)
    except DataError as error:
        raise TranslateError(str(error)) from error


def load_translator(args: argparse.Namespace):
    """Load the model on the requested device, the tokenizers and the checkpoint's ``decode`` settings."""
    import torch

    from nmt.tokenizer import load_tokenizers
    from nmt.training.module import load_model, selected_checkpoint

    checkpoint = Path(args.checkpoint) if args.checkpoint else selected_checkpoint(DEFAULT_MODELS)
    if not checkpoint.is_file():
        raise TranslateError(
            f"checkpoint {checkpoint} not found; train a model first (dvc repro train) or pass --checkpoint PATH"
        )
    try:
        tokenizers = load_tokenizers(args.tokenizer)
    except (FileNotFoundError, ValueError) as error:
        raise TranslateError(f"{error}, or pass --tokenizer PATH") from error

    device = args.device
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    model, cfg = load_model(checkpoint, map_location=device)
    model.to(device)
    layouts = {True: "one joint tokenizer", False: "one tokenizer per side"}
    trained_joint = bool((cfg.get("tokenizer") or {}).get("joint", True))
    if tokenizers.joint != trained_joint:
        raise TranslateError(
            f"{checkpoint} was trained with {layouts[trained_joint]}, but {args.tokenizer} gives "
            f"{layouts[tokenizers.joint]}; pass the tokenizer folder the model was trained with (--tokenizer)"
        )
    trained_lowercase = bool((cfg.get("tokenizer") or {}).get("lowercase", False))
    if tokenizers.lowercase != trained_lowercase:
        cases = {True: "lowercased text", False: "text as written"}
        raise TranslateError(
            f"{checkpoint} was trained on {cases[trained_lowercase]}, but {args.tokenizer} encodes "
            f"{cases[tokenizers.lowercase]}; pass the tokenizer folder the model was trained with (--tokenizer)"
        )
    for side, tokenizer, trained in (("source", tokenizers.source, model.config.src_vocab_size),
                                     ("target", tokenizers.target, model.config.tgt_vocab_size)):
        if tokenizer.vocab_size != trained:
            raise TranslateError(
                f"{side} tokenizer {tokenizer.model_path} has {tokenizer.vocab_size} pieces but {checkpoint} was "
                f"trained with {trained}; pass the tokenizer the model was trained with (--tokenizer)"
            )

    configured = dict(cfg.get("decode") or {})
    decode_cfg = {
        "batch_size": args.batch_size or int(configured.get("batch_size", 64)),
        "max_len_a": args.max_len_a if args.max_len_a is not None else float(configured.get("max_len_a", 1.5)),
        "max_len_b": args.max_len_b if args.max_len_b is not None else int(configured.get("max_len_b", 10)),
    }
    return model, tokenizers, decode_cfg


def translate_lines(model, tokenizers, lines: list[str], args: argparse.Namespace, decode_cfg: dict) -> list[str]:
    """Translate every line and return the output lines, ``n_best`` of them per input line when it is set."""
    from tqdm import tqdm
    from tqdm.contrib.logging import logging_redirect_tqdm

    from nmt.decoding import translate

    n_best = args.n_best or 1
    bar = tqdm(total=len(lines), unit="sentence", disable=args.input is None, file=sys.stderr)
    with bar, logging_redirect_tqdm():             # warnings print above the bar, not through it
        results = translate(
            model,
            tokenizers,
            lines,
            beam_size=args.beam_size,
            length_penalty=args.length_penalty,
            n_best=n_best,
            batch_size=decode_cfg["batch_size"],
            max_len_a=decode_cfg["max_len_a"],
            max_len_b=decode_cfg["max_len_b"],
            progress=bar.update,
        )

    output_lines = []
    for translations in results:
        if args.n_best is None:
            output_lines.append(translations[0].text if translations else "")
            continue
        # Always n_best lines per input, so that line i * n_best + j belongs to input line i + 1.
        scored = [f"{t.score:.4f}\t{t.text}" for t in translations]
        output_lines += scored + [""] * (n_best - len(scored))
    return output_lines


def write_output(lines: list[str], output: str | None) -> None:
    """Write lines to standard output, or atomically to ``output``."""
    from nmt.io import atomic_path

    text = "".join(line + "\n" for line in lines)
    if output is None:
        sys.stdout.write(text)
        sys.stdout.flush()
        return
    with atomic_path(output) as tmp:
        tmp.write_text(text, encoding="utf-8")
    log.info("wrote %d lines to %s", len(lines), output)


def print_trace(model, tokenizers, text: str, decode_cfg: dict) -> None:
    """Decode ``text`` greedily with the textbook decoder and print every step for a reader to follow.

    The textbook decoder re-reads the whole prefix at each step, so the causal mask printed is the one it
    applies: row i has 1 where query position i may attend to key position j (j <= i), else 0.
    Probabilities are a softmax over the vocabulary without ``<pad>`` and ``<s>``, which are never chosen.
    """
    import torch

    from nmt.decoding.common import max_output_lengths
    from nmt.decoding.greedy import greedy_steps
    from nmt.decoding.translation import encode_sources
    from nmt.model.attention import causal_mask
    from nmt.tokenizer import PAD_ID

    source = encode_sources(tokenizers.source, [text], model.config.max_positions)[0]
    if source is None:
        print("source is empty; nothing to translate")
        return
    device = next(model.parameters()).device
    src = torch.tensor([source], device=device)
    limit = max_output_lengths(src.ne(PAD_ID).sum(dim=1), decode_cfg["max_len_a"], decode_cfg["max_len_b"],
                               model.config.max_positions)
    print(f"source ({len(source)} pieces): {' '.join(tokenizers.source.pieces(source))}")
    print(f"output limit: {int(limit[0])} pieces")

    target = tokenizers.target

    output: list[int] = []
    for number, step in enumerate(greedy_steps(model, src, limit, method="textbook"), start=1):
        prefix = step.prefix[0].tolist()
        probabilities = step.log_probs[0].exp()
        top = probabilities.topk(TRACE_TOP_K)
        chosen = int(step.tokens[0])

        print(f"\nstep {number}")
        print(f"  prefix (length {len(prefix)}): {' '.join(target.pieces(prefix))}")
        print(f"  causal mask ({len(prefix)} x {len(prefix)}, 1 = query row may attend to key column):")
        for row in causal_mask(len(prefix)).int().tolist():
            print("    " + " ".join(str(value) for value in row))
        candidates = ", ".join(
            f"{target.pieces([int(i)])[0]!r} {float(p):.4f}" for p, i in zip(top.values, top.indices)
        )
        print(f"  top {TRACE_TOP_K}: {candidates}")
        print(f"  chosen: {target.pieces([chosen])[0]!r} (id {chosen}, p = {float(probabilities[chosen]):.4f})")
        output.append(chosen)

    print(f"\ntranslation: {target.decode([output])[0]}")
