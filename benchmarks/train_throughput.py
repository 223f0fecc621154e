"""Training throughput: this project's Lightning training step against a plain PyTorch reference.

Both sides train on the same real Multi30k sentence pairs (the prepared training split and the pipeline's
SentencePiece model, so run `dvc repro prepare tokenizer` first):

(a) ours: the default config's model and batches (token-count batches with length bucketing, the configured
    precision) through ``lightning.Trainer`` with ``TranslationModule``;
(b) reference: ``torch.nn.Transformer`` of the same sizes, batches of a fixed number of sentences padded to
    the longest one, fp32, Adam, cross-entropy with ``ignore_index`` for padding.

Throughput counts real target tokens only (padding excluded). The script also measures the matmul ceiling
of this machine (fp32 and bf16) and reports ours as a fraction of the ceiling for its precision.
Results are printed side by side and written to reports/benchmarks.md and the key "train" of
reports/benchmarks.json.

    python benchmarks/train_throughput.py [--steps 40] [--warmup 5] [--sentences 64]
"""

from __future__ import annotations

import argparse
import logging
import math
import platform
import sys
import time
from pathlib import Path

import lightning as L
import torch
import torch.nn.functional as F
from torch import nn

from nmt.config import Paths, load_params
from nmt.data.batching import TokenBatchSampler, collate, make_examples, pad
from nmt.data.parallel import read_lines
from nmt.model.transformer import sinusoidal_positions
from nmt.tokenizer import BOS_ID, PAD_ID, load_tokenizers
from nmt.training.module import TranslationModule
from report import update_reports  # benchmarks/report.py, next to this script

log = logging.getLogger("benchmarks.train_throughput")


def matmul_ceiling(dtype: torch.dtype, size: int = 2048, repeats: int = 10) -> float:
    """Return the measured FLOP/s of a square matmul of ``size`` in ``dtype`` on this CPU."""
    a = torch.randn(size, size).to(dtype)
    b = torch.randn(size, size).to(dtype)
    for _ in range(2):
        a @ b
    started = time.perf_counter()
    for _ in range(repeats):
        a @ b
    return 2 * size**3 * repeats / (time.perf_counter() - started)


def step_flops(model_cfg, vocab: int, src_tokens: int, tgt_tokens: int, src_len: float, tgt_len: float) -> float:
    """Estimate the matmul FLOPs of one training step (forward + backward = 3x forward).

    Counts the projection, feed-forward and output matmuls per real token and the attention score and
    context products per token pair. Layer norms, softmax and other element-wise work are left out.
    """
    d, f = model_cfg.d_model, model_cfg.d_ff
    encoder_layer = 2 * (4 * d * d + 2 * d * f)
    decoder_layer = 2 * (8 * d * d + 2 * d * f)
    forward = src_tokens * model_cfg.n_encoder_layers * (encoder_layer + 4 * d * src_len)
    forward += tgt_tokens * model_cfg.n_decoder_layers * (decoder_layer + 4 * d * tgt_len + 4 * d * src_len)
    forward += tgt_tokens * 2 * d * vocab
    return 3 * forward


class StepTimer(L.Callback):
    """Time the optimizer steps after ``warmup`` and count their real tokens."""

    def __init__(self, warmup: int) -> None:
        self.warmup = warmup
        self.started = None
        self.elapsed = 0.0
        self.tgt_tokens = 0
        self.src_tokens = 0
        self.steps = 0

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if batch_idx >= self.warmup:
            self.started = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if self.started is None:
            return
        self.elapsed += time.perf_counter() - self.started
        self.started = None
        self.steps += 1
        self.tgt_tokens += int(batch["tgt_out"].ne(PAD_ID).sum())
        self.src_tokens += int(batch["src"].ne(PAD_ID).sum())


def run_ours(cfg, examples, steps: int, warmup: int) -> dict:
    """Train the project's model with Lightning for ``warmup + steps`` batches and time the last ``steps``."""
    sampler = TokenBatchSampler([(len(e.src), len(e.tgt)) for e in examples], cfg.train.max_tokens, seed=cfg.seed)
    batches = [collate([examples[i] for i in b]) for b in list(sampler)[: warmup + steps]]
    from omegaconf import OmegaConf

    config = OmegaConf.to_container(cfg, resolve=True)
    config["optim"]["cooldown_fraction"] = None  # the cooldown needs a time limit and does not change speed
    module = TranslationModule(config, VOCAB, VOCAB)
    timer = StepTimer(warmup)
    trainer = L.Trainer(
        accelerator="cpu", devices=1, precision=cfg.trainer.precision, max_epochs=1, logger=False,
        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
        gradient_clip_val=cfg.optim.grad_clip, callbacks=[timer], limit_val_batches=0,
    )
    trainer.fit(module, train_dataloaders=torch.utils.data.DataLoader(batches, batch_size=None))

    avg_src = sum(len(e.src) for e in examples) / len(examples)
    avg_tgt = sum(len(e.tgt) for e in examples) / len(examples)
    flops = step_flops(cfg.model, VOCAB, timer.src_tokens, timer.tgt_tokens, avg_src, avg_tgt)
    return {"tgt_tok_per_s": timer.tgt_tokens / timer.elapsed, "flop_per_s": flops / timer.elapsed,
            "steps": timer.steps, "seconds": timer.elapsed}


class ReferenceModel(nn.Module):
    """torch.nn.Transformer with scaled embeddings, sinusoidal positions and a linear output layer."""

    def __init__(self, model_cfg, vocab: int) -> None:
        super().__init__()
        d = model_cfg.d_model
        self.embed = nn.Embedding(vocab, d, padding_idx=PAD_ID)
        self.transformer = nn.Transformer(
            d_model=d, nhead=model_cfg.n_heads, num_encoder_layers=model_cfg.n_encoder_layers,
            num_decoder_layers=model_cfg.n_decoder_layers, dim_feedforward=model_cfg.d_ff,
            dropout=model_cfg.dropout, batch_first=True, norm_first=model_cfg.norm_first,
        )
        self.output = nn.Linear(d, vocab)
        self.scale = math.sqrt(d)
        self.register_buffer("positions", sinusoidal_positions(model_cfg.max_positions, d))

    def embed_positions(self, ids):
        return self.embed(ids) * self.scale + self.positions[: ids.shape[1]]

    def forward(self, src, tgt_in):
        causal = nn.Transformer.generate_square_subsequent_mask(tgt_in.shape[1])
        hidden = self.transformer(
            self.embed_positions(src), self.embed_positions(tgt_in), tgt_mask=causal,
            src_key_padding_mask=src.eq(PAD_ID), tgt_key_padding_mask=tgt_in.eq(PAD_ID),
            memory_key_padding_mask=src.eq(PAD_ID), tgt_is_causal=True,
        )
        return self.output(hidden)


def run_reference(cfg, examples, sentences: int, steps: int, warmup: int) -> dict:
    """Train nn.Transformer in fp32 on sentence-count batches in corpus order and time the last ``steps``."""
    torch.manual_seed(cfg.seed)
    model = ReferenceModel(cfg.model, VOCAB).train()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4, betas=(0.9, 0.98), eps=1e-9)
    elapsed, tgt_tokens, tgt_positions = 0.0, 0, 0
    for step in range(warmup + steps):
        chunk = examples[step * sentences : (step + 1) * sentences]
        src = pad([e.src for e in chunk])
        tgt_in = pad([[BOS_ID] + e.tgt[:-1] for e in chunk])
        tgt_out = pad([e.tgt for e in chunk])

        started = time.perf_counter()
        logits = model(src, tgt_in)
        loss = F.cross_entropy(logits.reshape(-1, VOCAB), tgt_out.reshape(-1), ignore_index=PAD_ID,
                               label_smoothing=cfg.train.label_smoothing)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if step >= warmup:
            elapsed += time.perf_counter() - started
            tgt_tokens += int(tgt_out.ne(PAD_ID).sum())
            tgt_positions += tgt_out.numel()
    return {"tgt_tok_per_s": tgt_tokens / elapsed, "steps": steps, "seconds": elapsed,
            "padding_share": 1.0 - tgt_tokens / tgt_positions}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", default="params.yaml", help="composed config (default: params.yaml)")
    parser.add_argument("--steps", type=int, default=40, help="timed steps per side")
    parser.add_argument("--warmup", type=int, default=5, help="untimed steps before timing")
    parser.add_argument("--sentences", type=int, default=64, help="reference batch size in sentences")
    parser.add_argument("--pairs", type=int, default=12000, help="training pairs to draw batches from")
    parser.add_argument("--no-write", action="store_true", help="print only; do not update reports/")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    logging.getLogger("lightning").setLevel(logging.WARNING)

    cfg = load_params(args.params)
    paths = Paths(Path.cwd())
    tokenizers = load_tokenizers(paths.tokenizer_dir)
    if not tokenizers.joint:
        raise SystemExit("the reference model has one vocabulary; benchmark a config with tokenizer.joint=true")
    tokenizer = tokenizers.source
    global VOCAB
    VOCAB = tokenizer.vocab_size
    source = read_lines(paths.split_file("train", cfg.data.src_lang))[: args.pairs]
    target = read_lines(paths.split_file("train", cfg.data.tgt_lang))[: args.pairs]
    examples = make_examples(tokenizer.encode(source), tokenizer.encode(target), cfg.model.max_positions)

    L.seed_everything(cfg.seed)
    ceiling = {"fp32": matmul_ceiling(torch.float32), "bf16": matmul_ceiling(torch.bfloat16)}
    ours = run_ours(cfg, examples, args.steps, args.warmup)
    reference = run_reference(cfg, examples, args.sentences, args.steps, args.warmup)

    precision_key = "bf16" if "bf16" in str(cfg.trainer.precision) else "fp32"
    ratio = ours["tgt_tok_per_s"] / reference["tgt_tok_per_s"]
    fraction = ours["flop_per_s"] / ceiling[precision_key]
    result = {
        "ours_tgt_tok_per_s": round(ours["tgt_tok_per_s"], 1),
        "reference_tgt_tok_per_s": round(reference["tgt_tok_per_s"], 1),
        "ratio": round(ratio, 3),
        "ours_flops_fraction_of_peak": round(fraction, 4),
        "ours_gflop_per_s": round(ours["flop_per_s"] / 1e9, 1),
        "matmul_ceiling_gflop_per_s": {k: round(v / 1e9, 1) for k, v in ceiling.items()},
        "reference_target_padding_share": round(reference["padding_share"], 3),
        "ours_precision": str(cfg.trainer.precision),
        "model": cfg.model.name,
        "steps": args.steps,
        "cpu_threads": torch.get_num_threads(),
        "platform": platform.platform(),
        "torch": torch.__version__,
    }

    table = [
        "| side | target tokens/s | timed steps |",
        "| --- | --- | --- |",
        f"| ours: Lightning, model={cfg.model.name}, {cfg.trainer.precision}, token batches "
        f"({cfg.train.max_tokens}) | {ours['tgt_tok_per_s']:,.0f} | {ours['steps']} |",
        f"| reference: nn.Transformer, fp32, {args.sentences}-sentence batches | "
        f"{reference['tgt_tok_per_s']:,.0f} | {reference['steps']} |",
    ]
    summary = (
        f"ratio ours/reference: {ratio:.2f}x\n"
        f"reference: {reference['padding_share']:.0%} of its target positions are padding\n"
        f"ours: {ours['flop_per_s'] / 1e9:,.0f} GFLOP/s = {fraction:.1%} of the measured {precision_key} matmul "
        f"ceiling ({ceiling[precision_key] / 1e9:,.0f} GFLOP/s; fp32 ceiling {ceiling['fp32'] / 1e9:,.0f})"
    )
    log.info("%s\n%s", "\n".join(table), summary)

    if not args.no_write:
        section = ("## Training throughput\n\nMeasured by `benchmarks/train_throughput.py` on the prepared "
                   "training split.\n\n" + "\n".join(table) + "\n\n" + summary.replace("\n", "\n\n") + "\n")
        update_reports(paths.reports, {"train": result}, section)
    return 0


VOCAB = 0

if __name__ == "__main__":
    sys.exit(main())
