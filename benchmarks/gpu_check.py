"""GPU check: prepare the data and tokenizer, train for a time budget, report throughput, memory and val loss.

Run it through ``benchmarks/gpu_check.sh``. It uses the project's own stages (``prepare``, ``tokenizer``), its
config (``conf/`` with ``trainer=gpu``, so bf16-mixed) and the train stage's Trainer settings, and writes
only into the work folder. The training loop runs for ``--minutes`` of wall time (Lightning's ``max_time``),
then the whole validation split is scored once. It reports:

- target tokens/s: real target tokens (padding excluded) of the training steps after the first
  ``--warmup-steps``, divided by their wall time, validation excluded;
- peak memory: ``torch.cuda.max_memory_allocated`` and ``max_memory_reserved`` on a GPU, the process's
  maximum resident set size on CPU;
- validation loss: token-level cross-entropy without label smoothing over the whole validation split, in the
  training precision.

``--cpu`` trains a tiny model on a 300-pair subset on the CPU, so that the test suite can run the script on a
machine without a GPU.

NOTE: only the ``--cpu`` path runs in the tests. The GPU path (CUDA synchronization, CUDA memory statistics,
the default budget of 4 minutes) has not been run on a GPU yet.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import platform
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path

import lightning as L
import torch
from omegaconf import OmegaConf

from nmt.config import Paths, compose
from nmt.stages import prepare, tokenizer
from nmt.stages.train import build_trainer
from nmt.tokenizer import PAD_ID
from nmt.training.datamodule import TranslationDataModule
from nmt.training.module import TranslationModule

log = logging.getLogger("benchmarks.gpu_check")

REPO = Path(__file__).resolve().parents[1]
DEFAULT_MINUTES = 4.0  # data preparation takes about a minute (an estimate), so the script ends within 8 minutes
DEFAULT_CPU_MINUTES = 0.3
# --cpu: a one-layer model on a data subset, small enough to train for a few seconds on any CPU.
CPU_OVERRIDES = [
    "trainer=cpu",
    "trainer.precision=32-true",
    "model=tiny",
    "model.d_model=32",
    "model.n_encoder_layers=1",
    "model.n_decoder_layers=1",
    "model.d_ff=64",
    "data.max_train_pairs=300",
    "data.max_eval_pairs=40",
    "tokenizer.vocab_size=300",
    "train.max_tokens=400",
]


class ThroughputTimer(L.Callback):
    """Measure the wall time and real target tokens of the training steps after the first ``warmup_steps``.

    The clock starts at the end of step ``warmup_steps``, stops at each validation and restarts at the next
    training step, so data loading counts and validation does not. On a GPU it synchronizes at each start and
    stop, so that queued kernels are counted where they run.
    """

    def __init__(self, warmup_steps: int) -> None:
        self.warmup_steps = warmup_steps
        self.seconds = 0.0
        self.tgt_tokens = 0
        self.steps = 0
        self._active = False
        self._started: float | None = None

    @staticmethod
    def _now(pl_module) -> float:
        if pl_module.device.type == "cuda":
            torch.cuda.synchronize(pl_module.device)
        return time.perf_counter()

    def _stop(self, pl_module) -> None:
        if self._started is not None:
            self.seconds += self._now(pl_module) - self._started
            self._started = None

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if not self._active:
            return
        if self._started is None:
            self._started = self._now(pl_module)
        self.tgt_tokens += int(batch["tgt_out"].ne(PAD_ID).sum())
        self.steps += 1

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if not self._active and trainer.global_step >= self.warmup_steps:
            self._active = True
            self._started = self._now(pl_module)

    def on_validation_start(self, trainer, pl_module) -> None:
        self._stop(pl_module)

    def on_train_end(self, trainer, pl_module) -> None:
        self._stop(pl_module)


def peak_memory(device: torch.device) -> dict:
    """Return the peak memory of this process on ``device`` in GiB."""
    if device.type == "cuda":
        return {
            "peak_memory_gib": torch.cuda.max_memory_allocated(device) / 2**30,
            "peak_reserved_gib": torch.cuda.max_memory_reserved(device) / 2**30,
            "peak_memory_kind": "torch.cuda.max_memory_allocated",
        }
    # ru_maxrss is in KiB on Linux.
    return {"peak_memory_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
            "peak_memory_kind": "process max resident set size"}


def compose_config(args) -> object:
    overrides = ["trainer=gpu"] if not args.cpu else list(CPU_OVERRIDES)
    overrides += [
        f"trainer.max_time_minutes={args.minutes}",
        "trainer.max_epochs=100000",  # the time budget ends training
    ]
    if args.data_dir:
        overrides.append(f"data.local_dir={args.data_dir}")
    return compose([*overrides, *args.overrides], REPO / "conf")


def run_check(cfg, paths: Paths, warmup_steps: int) -> dict:
    """Prepare data and tokenizer in ``paths``, train under the time budget and validate. Return the figures."""
    started = time.perf_counter()
    prepare.run(cfg, paths)
    tokenizer.run(cfg, paths)
    log.info("data and tokenizer ready in %.0f s", time.perf_counter() - started)

    L.seed_everything(cfg.seed)
    datamodule = TranslationDataModule(cfg, paths)
    datamodule.setup()
    tokenizers = datamodule.tokenizers
    module = TranslationModule(OmegaConf.to_container(cfg, resolve=True), tokenizers.source.vocab_size,
                               tokenizers.target.vocab_size)
    timer = ThroughputTimer(warmup_steps)
    trainer = build_trainer(cfg, paths, logger=False, callbacks=[timer], enable_checkpointing=False)
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()

    log.info("training %s (%d parameters) for %.1f minutes on %s, precision %s", cfg.model.name,
             module.model.num_parameters(), cfg.trainer.max_time_minutes, cfg.trainer.accelerator,
             cfg.trainer.precision)
    trainer.fit(module, datamodule=datamodule)
    device = trainer.strategy.root_device
    memory = peak_memory(device)
    if timer.steps == 0:
        raise RuntimeError(f"training ran {trainer.global_step} steps, not more than the {warmup_steps} warmup "
                           "steps; raise --minutes or lower --warmup-steps")

    validation = trainer.validate(module, datamodule=datamodule, verbose=False)[0]
    return {
        "tgt_tokens_per_s": timer.tgt_tokens / timer.seconds,
        **memory,
        "val_loss": float(validation["val/loss"]),
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu",
        "accelerator": cfg.trainer.accelerator,
        "precision": str(cfg.trainer.precision),
        "model": cfg.model.name,
        "parameters": module.model.num_parameters(),
        "max_tokens": cfg.train.max_tokens,
        "steps": trainer.global_step,
        "timed_steps": timer.steps,
        "timed_seconds": timer.seconds,
        "epochs": trainer.current_epoch,
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
    }


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cpu", action="store_true",
                        help=f"train a tiny model on a data subset on the CPU (default budget "
                             f"{DEFAULT_CPU_MINUTES} minutes)")
    parser.add_argument("--minutes", type=float, default=None,
                        help=f"training time budget in minutes (default {DEFAULT_MINUTES}, "
                             f"{DEFAULT_CPU_MINUTES} with --cpu)")
    parser.add_argument("--warmup-steps", type=int, default=None,
                        help="steps left out of the throughput (default 20, 3 with --cpu)")
    parser.add_argument("--work-dir", type=Path, default=None,
                        help="folder for data, tokenizer and Lightning files (default: a temporary folder, "
                             "deleted at the end)")
    parser.add_argument("--data-dir", default=None,
                        help="local Multi30k folder (default: NMT_DATA_DIR, else download from GitHub)")
    parser.add_argument("--json", type=Path, default=None, help="also write the figures to this JSON file")
    parser.add_argument("overrides", nargs="*", help="Hydra overrides, e.g. model=base train.max_tokens=8000")
    args = parser.parse_args(argv)
    if args.minutes is None:
        args.minutes = DEFAULT_CPU_MINUTES if args.cpu else DEFAULT_MINUTES
    if args.warmup_steps is None:
        args.warmup_steps = 3 if args.cpu else 20
    if args.minutes <= 0:
        parser.error(f"--minutes must be positive, got {args.minutes}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if not args.cpu and not torch.cuda.is_available():
        log.error("no CUDA GPU is visible to torch %s; run on a GPU machine, or pass --cpu for the CPU check",
                  torch.__version__)
        return 2

    if args.data_dir:
        os.environ["NMT_DATA_DIR"] = str(args.data_dir)  # prepare reads NMT_DATA_DIR before data.local_dir
    cfg = compose_config(args)
    work_dir = args.work_dir or Path(tempfile.mkdtemp(prefix="nmt-gpu-check-"))
    work_dir.mkdir(parents=True, exist_ok=True)
    try:
        result = run_check(cfg, Paths(work_dir.resolve()), args.warmup_steps)
    finally:
        if args.work_dir is None:
            shutil.rmtree(work_dir, ignore_errors=True)

    print(f"device: {result['device']} ({result['accelerator']}, {result['precision']}, model {result['model']}, "
          f"{result['parameters']:,} parameters)")
    print(f"target tokens/s: {result['tgt_tokens_per_s']:,.0f} ({result['timed_steps']} timed steps in "
          f"{result['timed_seconds']:.1f} s, {result['steps']} steps in all)")
    reserved = f", {result['peak_reserved_gib']:.3f} GiB reserved" if "peak_reserved_gib" in result else ""
    print(f"peak memory: {result['peak_memory_gib']:.3f} GiB ({result['peak_memory_kind']}{reserved})")
    print(f"validation loss: {result['val_loss']:.4f}")
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")

    figures = (result["tgt_tokens_per_s"], result["peak_memory_gib"], result["val_loss"])
    if not all(math.isfinite(value) and value > 0 for value in figures):
        log.error("a figure is not a positive finite number: %s", figures)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
