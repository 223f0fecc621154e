"""``nmt weights``: list every weight and bias the math names, with its shape, for a model config."""

from __future__ import annotations

import argparse


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "weights",
        help="list the named weights (W_Q, W_K, W_V, W_O, W_1, b_1, W_2, b_2, W_out, b_out) and their shapes",
    )
    parser.add_argument("overrides", nargs="*", help="Hydra overrides, for example model=seed_minimal")
    parser.add_argument("--config-dir", default="conf", help="folder of the Hydra config groups (default: conf)")
    parser.add_argument("--vocab-size", type=int, default=None,
                        help="vocabulary size (default: tokenizer.vocab_size from the config)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from nmt.config import compose
    from nmt.model import ModelConfig, Transformer

    cfg = compose(args.overrides, args.config_dir)
    vocab_size = args.vocab_size or cfg.tokenizer.vocab_size
    model = Transformer(ModelConfig.from_dict(dict(cfg.model), src_vocab_size=vocab_size, tgt_vocab_size=vocab_size))

    rows = [(name, "x".join(str(n) for n in weight.shape)) for name, weight in model.named_weights().items()]
    width = max(len(name) for name, _ in rows)
    lines = [f"{'weight'.ljust(width)}  shape", f"{'-' * width}  -----"]
    lines += [f"{name.ljust(width)}  {shape}" for name, shape in rows]
    if model.config.tie_embeddings:
        lines.append("(output.W_out is tied to the target embedding: stored as V x d_model, applied transposed)")
    lines.append(f"model={cfg.model.name}: {len(rows)} named weights, {model.num_parameters()} trainable parameters")
    print("\n".join(lines))
    return 0
