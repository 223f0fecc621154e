"""``nmt gradcheck``: check every named gradient against finite differences and write a markdown report."""

from __future__ import annotations

import argparse
import shlex

DEFAULT_OUTPUT = "reports/gradcheck.md"
# Copies of the defaults in nmt.gradcheck. That module imports torch, which the parser avoids so that
# `nmt --help` stays fast. A test keeps the copies equal.
DEFAULT_EPS = 1e-5
DEFAULT_THRESHOLD = 1e-6
DEFAULT_VOCAB_SIZE = 24


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "gradcheck",
        help="check the autograd gradient of every named weight against central finite differences in float64",
    )
    parser.add_argument("overrides", nargs="*",
                        help="Hydra overrides such as model=tiny (default: model=seed_minimal)")
    parser.add_argument("--config-dir", default="conf", help="folder of the Hydra config groups (default: conf)")
    parser.add_argument("--output", default=DEFAULT_OUTPUT, help=f"markdown report to write (default: {DEFAULT_OUTPUT})")
    parser.add_argument("--vocab-size", type=int, default=DEFAULT_VOCAB_SIZE,
                        help=f"source and target vocabulary size of the checked model (default: {DEFAULT_VOCAB_SIZE})")
    parser.add_argument("--eps", type=float, default=DEFAULT_EPS,
                        help=f"finite-difference step added to and subtracted from each element (default: {DEFAULT_EPS:g})")
    parser.add_argument("--threshold", type=float, default=DEFAULT_THRESHOLD,
                        help=f"a weight passes when its relative error is below this (default: {DEFAULT_THRESHOLD:g})")
    parser.add_argument("--seed", type=int, default=None,
                        help="seed of the weight initialization and element subsets (default: seed from the config)")
    parser.add_argument("--max-elements", type=int, default=None,
                        help="check at most this many randomly chosen elements per weight (default: every element)")
    parser.set_defaults(func=run)


def with_default_model(overrides: list[str]) -> list[str]:
    """Prepend ``model=seed_minimal`` unless an override already selects the model group."""
    if any(override.startswith(("model=", "+model=", "++model=")) for override in overrides):
        return list(overrides)
    return ["model=seed_minimal", *overrides]


def command_line(args: argparse.Namespace, overrides: list[str], seed: int) -> str:
    """Return the ``nmt gradcheck`` command line that reproduces this run, with every option spelled out."""
    parts = ["nmt", "gradcheck", *overrides, "--config-dir", args.config_dir, "--output", args.output,
             "--vocab-size", str(args.vocab_size), "--eps", f"{args.eps:g}", "--threshold", f"{args.threshold:g}",
             "--seed", str(seed)]
    if args.max_elements is not None:
        parts += ["--max-elements", str(args.max_elements)]
    return shlex.join(parts)


def run(args: argparse.Namespace) -> int:
    import torch

    from nmt.config import compose
    from nmt.gradcheck import build_model, check_gradients, fixed_batch, format_table
    from nmt.io import write_text_atomic
    from nmt.tokenizer import PAD_ID

    overrides = with_default_model(args.overrides)
    cfg = compose(overrides, args.config_dir)
    seed = cfg.seed if args.seed is None else args.seed
    dtype = torch.float64

    model = build_model(cfg.model, args.vocab_size, seed, dtype)
    batch = fixed_batch(args.vocab_size)
    rows = check_gradients(model, batch, eps=args.eps, threshold=args.threshold,
                           max_elements=args.max_elements, seed=seed)

    failed = [row for row in rows if not row.passed]
    largest = max(rows, key=lambda row: row.rel_error)
    real_tokens = int(batch["tgt_out"].ne(PAD_ID).sum())
    elements = "every element" if args.max_elements is None else f"at most {args.max_elements} elements per weight"
    header = [
        "# Gradient check",
        "",
        f"Command: `{command_line(args, overrides, seed)}`",
        "",
        f"- model: {cfg.model.name} ({model.num_parameters()} parameters, vocabulary {args.vocab_size}), "
        f"all dropout 0, training mode, seed {seed}",
        f"- dtype: {str(dtype).removeprefix('torch.')}",
        f"- batch: {batch['src'].shape[0]} padded sentence pairs, source {tuple(batch['src'].shape)}, "
        f"target {tuple(batch['tgt_out'].shape)}, {real_tokens} real target tokens",
        "- loss: `nmt.loss.sequence_loss`, cross-entropy averaged over the real target tokens, in float64",
        f"- finite differences: central, (L(w + eps) - L(w - eps)) / (2 eps) with eps = {args.eps:g}, {elements}",
        "- relative error: max |g_auto - g_fd| / max(max |g_auto|, max |g_fd|, tiny) over one weight's elements",
        f"- threshold: relative error < {args.threshold:g}",
        f"- largest relative error: {largest.rel_error:.3e} ({largest.name})",
        f"- result: {len(rows) - len(failed)} of {len(rows)} weights pass",
        "",
    ]
    text = "\n".join(header) + "\n" + format_table(rows, args.threshold) + "\n"
    write_text_atomic(args.output, text)
    print(text, end="")

    if failed:
        print(f"gradient check failed for {len(failed)} weights: {', '.join(row.name for row in failed)}")
        return 1
    return 0
