"""Resume state of an interrupted ``train`` stage: a checkpoint and the MLflow run id, outside DVC's outputs.

DVC deletes a stage's declared outputs before it runs the stage, so this state lives in
``checkpoints/train-<key>/`` (ignored by git, never a DVC output). ``<key>`` is a hash of everything that
determines the training result: the train stage's params (seed, model, optim, trainer and train, except
``train.checkpoint_every_n_steps``), the prepared train and val files, the tokenizer model and the source
files of the training code. A run only resumes from the state of its own key. States of other keys are
logged as ignored and left in place, so that switching back to their configuration resumes them.

The folder contains ``resume.ckpt`` (the latest full Lightning checkpoint: weights, optimizer, scheduler, loop
progress, callbacks and RNG states), ``state.json``, and ``models/best.ckpt`` and ``models/last.ckpt``
(ModelCheckpoint's files, copied into the project's ``models/`` when training succeeds).
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.callbacks import Checkpoint
from omegaconf import OmegaConf

import nmt
from nmt.config import Paths
from nmt.io import write_json_atomic
from nmt.tokenizer import tokenizer_files

log = logging.getLogger(__name__)

STATE_FILE = "state.json"
RESUME_CHECKPOINT = "resume.ckpt"
KEY_PARAMS = ("seed", "model", "optim", "trainer", "train")
KEY_IGNORED = {"train": ("checkpoint_every_n_steps",)}  # settings that cannot change the trained weights
# Source files of the package whose changes can change the trained weights (the train stage's code deps).
KEY_SOURCES = ("model", "training", "loss.py", "stages/train.py", "data/batching.py", "tokenizer.py")


def _sha256_file(path: Path, digest) -> None:
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)


def training_key(cfg, paths: Paths) -> str:
    """Return a 16-hex-digit hash of the params, input files and code that determine the training result."""
    params = {}
    for name in KEY_PARAMS:
        value = OmegaConf.to_container(cfg[name], resolve=True) if OmegaConf.is_config(cfg[name]) else cfg[name]
        if isinstance(value, dict):
            value = {k: v for k, v in value.items() if k not in KEY_IGNORED.get(name, ())}
        params[name] = value
    params["languages"] = [cfg.data.src_lang, cfg.data.tgt_lang]

    digest = hashlib.sha256(json.dumps(params, sort_keys=True).encode("utf-8"))
    inputs = [paths.split_file(split, lang) for split in ("train", "val")
              for lang in (cfg.data.src_lang, cfg.data.tgt_lang)]
    inputs.extend(tokenizer_files(paths.tokenizer_dir))
    package = Path(nmt.__file__).parent
    for entry in KEY_SOURCES:
        source = package / entry
        inputs.extend(sorted(source.rglob("*.py")) if source.is_dir() else [source])
    for path in inputs:
        digest.update(str(path.relative_to(package) if path.is_relative_to(package) else path.name).encode())
        _sha256_file(path, digest)
    return digest.hexdigest()[:16]


@dataclass
class ResumeState:
    """Contents of ``state.json`` for one training run in progress.

    ``checkpoint`` is the file name of the latest resume checkpoint in ``directory`` (None before the first
    one is saved). ``global_step``, ``epoch`` and ``batches_done`` are its position: after ``batches_done``
    batches of epoch ``epoch``, or at the end of that epoch where ``batches_done`` is None. ``wall_time_s`` is
    the training time spent up to it, summed over every process that worked on the run.
    """

    directory: Path
    key: str
    mlflow_run_id: str | None = None
    checkpoint: str | None = None
    global_step: int = 0
    epoch: int = 0
    batches_done: int | None = None
    wall_time_s: float = 0.0

    @property
    def checkpoint_path(self) -> Path | None:
        return self.directory / self.checkpoint if self.checkpoint else None

    @property
    def model_checkpoints(self) -> Path:
        """Folder of ModelCheckpoint's ``best.ckpt`` and ``last.ckpt``."""
        return self.directory / "models"

    def position(self) -> str:
        """Describe where the checkpoint is, for log messages."""
        within = f"end of epoch {self.epoch}" if self.batches_done is None else \
            f"epoch {self.epoch} after {self.batches_done} batches"
        return f"global step {self.global_step}, {within}"

    def save(self) -> None:
        """Write ``state.json`` atomically."""
        record = {k: v for k, v in asdict(self).items() if k != "directory"}
        write_json_atomic(self.directory / STATE_FILE, record)

    def remove(self) -> None:
        """Delete the whole resume folder (after the final outputs are written)."""
        shutil.rmtree(self.directory, ignore_errors=True)


def open_resume_state(root: Path, key: str, rank_zero: bool = True) -> tuple[ResumeState, str | None]:
    """Return the resume state for ``key`` and the MLflow run id of an interrupted run that cannot be resumed.

    The state is fresh (no checkpoint) unless ``root/train-<key>/state.json`` names a checkpoint that exists.
    Every state folder of another key is logged as ignored. The second value is the run id of a state of
    this key that has no usable checkpoint. The caller marks that MLflow run as killed and starts a new one.

    The other ranks of a multi-process run (``rank_zero`` false) start after rank 0 has written the state of
    the current run, so for them a state without a checkpoint is that run's: they log nothing and get None.
    """
    directory = root / f"train-{key}"
    if not rank_zero:
        path = directory / STATE_FILE
        if path.is_file():
            state = ResumeState(directory, **json.loads(path.read_text(encoding="utf-8")))
            if state.checkpoint_path is not None and state.checkpoint_path.is_file():
                return state, None
        return ResumeState(directory, key), None
    if root.is_dir():
        for other in sorted(root.glob("train-*")):
            if other != directory:
                log.warning(
                    "ignoring resume state %s: it was saved for another configuration, input data or code "
                    "version than this run (key %s); delete the folder if it is no longer needed",
                    other, key,
                )

    fresh = ResumeState(directory, key)
    path = directory / STATE_FILE
    if not path.is_file():
        return fresh, None
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
        state = ResumeState(directory, **record)
    except (ValueError, TypeError) as error:
        log.warning("ignoring unreadable resume state %s (%s); training starts over", path, error)
        return fresh, None
    if state.key != key:
        log.warning("ignoring resume state %s: its key %s differs from this run's key %s; training starts over",
                    path, state.key, key)
        return fresh, None
    if state.checkpoint_path is None or not state.checkpoint_path.is_file():
        log.warning(
            "the previous run (MLflow run %s) was interrupted before it saved a checkpoint in %s; "
            "training starts over", state.mlflow_run_id, directory,
        )
        return fresh, state.mlflow_run_id
    return state, None


def all_finite(module: torch.nn.Module) -> bool:
    """Return True if every parameter of ``module`` is finite."""
    return all(bool(torch.isfinite(p).all()) for p in module.parameters())


class ResumeCheckpoint(Checkpoint):
    """Save ``resume.ckpt`` every ``every_n_steps`` optimizer steps and at the end of every epoch.

    The epoch-end save happens in ``on_train_epoch_end``, after that epoch's validation, where
    ModelCheckpoint saves too. Lightning runs Checkpoint callbacks after the others, in list order; placed
    after the ModelCheckpoints that keep ``best.ckpt`` and ``last.ckpt``, it saves their updated state.
    ``state.json`` is rewritten after every save. A checkpoint whose weights are not all finite is not
    saved, so the folder always contains the last good one.
    """

    def __init__(self, state: ResumeState, every_n_steps: int | None, started: float) -> None:
        self.state = state
        self.every_n_steps = every_n_steps
        self.started = started
        self.previous_wall_time_s = state.wall_time_s

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        # The last batch of an epoch is saved by on_train_epoch_end, after that epoch's validation.
        progress = trainer.fit_loop.epoch_loop.batch_progress
        if self.every_n_steps and trainer.global_step % self.every_n_steps == 0 and not progress.is_last_batch:
            self.save(trainer, pl_module, batches_done=progress.current.processed)

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        self.save(trainer, pl_module, batches_done=None)

    def save(self, trainer: L.Trainer, pl_module: L.LightningModule, batches_done: int | None) -> None:
        if not all_finite(pl_module):
            log.warning("not saving a resume checkpoint at step %d: some weights are not finite; keeping %s",
                        trainer.global_step, self.state.checkpoint_path)
            return
        trainer.save_checkpoint(self.state.directory / RESUME_CHECKPOINT, weights_only=False)
        if trainer.is_global_zero:
            self.state.checkpoint = RESUME_CHECKPOINT
            self.state.global_step = trainer.global_step
            self.state.epoch = trainer.current_epoch
            self.state.batches_done = batches_done
            self.state.wall_time_s = round(self.previous_wall_time_s + time.perf_counter() - self.started, 1)
            self.state.save()
            log.debug("resume checkpoint saved at %s", self.state.position())
