"""Stage ``train``: Lightning training of the Transformer, logged to MLflow, resumable after a crash.

Outputs: ``models/best.ckpt`` (best validation score: ``val/bleu`` or ``val/loss``, as ``train.monitor`` says),
``models/last.ckpt``, ``models/average.ckpt`` (the mean of the weights at the last ``train.average_last_n``
validations, when that is 2 or more), ``models/train_summary.json`` (MLflow run id, training figures and the
checkpoint that ``evaluate`` and ``nmt translate`` use), ``reports/grad_norms.png`` and
``reports/environment.json`` (seed and library versions). All of them are written to temporary names and
renamed only after training has succeeded, so a failed run leaves none of them behind.
Training stops at ``trainer.max_epochs``, ``trainer.max_time_minutes``, ``train.target_loss`` or, with
``train.early_stopping_patience`` set, after that many validations without a better monitored score,
whichever comes first; the reason is logged and stored as the MLflow tag ``stop_reason``.

Model selection: the averaged model and the best checkpoint are scored again on the validation split with the
monitored metric, and the better one is named in ``train_summary.json`` under ``checkpoint``.

While it trains, the stage keeps a resume checkpoint in ``checkpoints/train-<key>/`` (see
``nmt.training.resume``), saved every ``train.checkpoint_every_n_steps`` steps and after every epoch. If the
process is killed, running the stage again with the same params, data and code continues from that
checkpoint (weights, optimizer, scheduler, loop position, RNG states) and logs into the same MLflow run. The
folder is deleted once the outputs are written. A NaN or infinite loss stops training with
``NonFiniteLossError``, marks the MLflow run FAILED and keeps the last good checkpoint.
"""

from __future__ import annotations

import contextlib
import json
import logging
import platform
import shutil
import time

import lightning as L
import numpy as np
import torch
from lightning.pytorch.callbacks import EarlyStopping, ModelCheckpoint
from lightning.pytorch.utilities import rank_zero_only
from omegaconf import OmegaConf

from nmt.config import Paths
from nmt.io import atomic_dir, atomic_path
from nmt.loss import sequence_loss
from nmt.plots import plot_grad_norms
from nmt.stages.common import run_stage
from nmt.tokenizer import PAD_ID
from nmt.tracking import client as tracking_client
from nmt.tracking import check_reachable, flatten, make_logger, tracking_uri
from nmt.training.averaging import WeightSnapshots
from nmt.training.callbacks import GradNormLogger, StopAtTargetLoss, ValidationTranslations
from nmt.training.datamodule import TranslationDataModule
from nmt.training.module import NonFiniteLossError, TranslationModule, load_model
from nmt.training.resume import ResumeCheckpoint, ResumeState, open_resume_state, training_key

log = logging.getLogger(__name__)


def completed_epochs(trainer: L.Trainer) -> int:
    """Return the number of epochs trained to their last batch.

    Lightning's ``current_epoch`` also counts the last epoch when a time limit stopped it part-way.
    """
    cut_short = trainer.current_epoch > 0 and not trainer.fit_loop.epoch_loop.batch_progress.is_last_batch
    return trainer.current_epoch - int(cut_short)


def stop_reason(trainer: L.Trainer, target_stop: StopAtTargetLoss, early_stop: EarlyStopping | None) -> str:
    """Name the limit that ended training: target_loss, early_stopping, max_epochs or max_time."""
    if target_stop.reached_at_epoch is not None:
        return "target_loss"
    if early_stop is not None and early_stop.stopped_epoch > 0:
        return "early_stopping"
    if completed_epochs(trainer) >= trainer.max_epochs:
        return "max_epochs"
    return "max_time"


def build_trainer(cfg, paths: Paths, logger, callbacks: list, **trainer_kwargs) -> L.Trainer:
    """Build the Lightning Trainer from ``cfg.trainer``. ``trainer_kwargs`` add or replace Trainer arguments."""
    t = cfg.trainer
    arguments = dict(
        accelerator=t.accelerator,
        devices=t.devices,
        num_nodes=t.num_nodes,
        strategy=t.strategy,
        precision=t.precision,
        max_epochs=t.max_epochs,
        max_time=None if t.max_time_minutes is None else {"minutes": t.max_time_minutes},
        deterministic=t.deterministic,
        gradient_clip_val=cfg.optim.grad_clip,
        log_every_n_steps=cfg.train.log_every_n_steps,
        logger=logger,
        callbacks=callbacks,
        default_root_dir=str(paths.checkpoints),  # not models/, which is only written once training succeeded
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        use_distributed_sampler=False,  # the token batch sampler splits batches across ranks itself
    )
    arguments.update(trainer_kwargs)
    return L.Trainer(**arguments)


def open_mlflow_run(cfg, state: ResumeState, interrupted_run_id: str | None):
    """Return the MLflow logger: the resumed run of ``state``, or a new run with params, seed and environment.

    ``interrupted_run_id`` names a run that was killed before its first checkpoint; it is marked KILLED.
    """
    from mlflow.exceptions import MlflowException

    run_name = f"{cfg.data.name}-{cfg.model.name}"
    if state.checkpoint is not None and state.mlflow_run_id is not None:
        logger = make_logger(cfg, run_name, run_id=state.mlflow_run_id)
        try:
            logger.experiment.update_run(state.mlflow_run_id, status="RUNNING")
            logger.experiment.set_tag(state.mlflow_run_id, "resumed_from_step", str(state.global_step))
            return logger
        except MlflowException as error:
            log.warning("MLflow run %s of the resume state cannot be reopened (%s); logging into a new run",
                        state.mlflow_run_id, error)

    if interrupted_run_id is not None:
        try:
            tracking_client(cfg).set_terminated(interrupted_run_id, "KILLED")
        except MlflowException as error:
            log.warning("failed to mark the interrupted MLflow run %s as KILLED: %s", interrupted_run_id, error)

    logger = make_logger(cfg, run_name)
    logger.log_hyperparams(flatten(cfg))
    logger.experiment.set_tag(logger.run_id, "seed", str(cfg.seed))
    logger.experiment.log_dict(logger.run_id, environment(cfg), "environment.json")
    return logger


def run(cfg, paths: Paths) -> dict:
    """Train, resuming from this configuration's resume checkpoint if one exists; return the training summary.

    The summary has the keys mlflow_run_id, wall_time_s (summed over resumed processes), epochs, steps,
    best_val_loss, parameters, stop_reason and resumed_from_step (None unless this process resumed).
    """
    check_reachable(tracking_uri(cfg))  # before the data and model are built
    L.seed_everything(cfg.seed, workers=True)
    datamodule = TranslationDataModule(cfg, paths)
    datamodule.setup()
    tokenizers = datamodule.tokenizers
    module = TranslationModule(OmegaConf.to_container(cfg, resolve=True), tokenizers.source.vocab_size,
                               tokenizers.target.vocab_size)
    parameters = module.model.num_parameters()

    rank_zero = rank_zero_only.rank == 0
    state, interrupted_run_id = open_resume_state(paths.checkpoints, training_key(cfg, paths), rank_zero)
    resumed_from_step = state.global_step if state.checkpoint is not None else None
    logger = open_mlflow_run(cfg, state, interrupted_run_id)
    if rank_zero:  # other ranks of a multi-process run only read the resume state
        if resumed_from_step is None and state.directory.exists():
            shutil.rmtree(state.directory)  # files of a run that was killed before its first resume checkpoint
        state.directory.mkdir(parents=True, exist_ok=True)
        if state.mlflow_run_id != logger.run_id:
            state.mlflow_run_id = logger.run_id
            state.save()

    val_source, val_target = datamodule.sentences["val"]
    monitor, mode = cfg.train.monitor, "max" if cfg.train.monitor == "val/bleu" else "min"
    grad_norms = GradNormLogger(cfg.train.grad_norm_every_n_steps)
    target_stop = StopAtTargetLoss(cfg.train.target_loss)
    validation = ValidationTranslations(val_source, val_target, tokenizers, cfg.decode,
                                        cfg.train.val_samples, bleu=cfg.train.val_bleu)
    # Two callbacks: with save_last, Lightning refreshes last.ckpt only when best.ckpt changes.
    checkpoint = ModelCheckpoint(
        dirpath=state.model_checkpoints, filename="best", monitor=monitor, mode=mode,
        enable_version_counter=False, auto_insert_metric_name=False,
    )
    last_checkpoint = ModelCheckpoint(
        dirpath=state.model_checkpoints, filename="last", monitor=None, save_top_k=1,
        enable_version_counter=False, auto_insert_metric_name=False,
    )
    started = time.perf_counter()
    previous_wall_time = state.wall_time_s
    callbacks = [validation, checkpoint, last_checkpoint, grad_norms, target_stop]
    early_stop = None
    if cfg.train.early_stopping_patience is not None:
        early_stop = EarlyStopping(monitor=monitor, mode=mode, patience=cfg.train.early_stopping_patience)
        callbacks.append(early_stop)
    snapshots = WeightSnapshots(cfg.train.average_last_n) if cfg.train.average_last_n > 1 else None
    if snapshots is not None:
        callbacks.append(snapshots)
    callbacks.append(ResumeCheckpoint(state, cfg.train.checkpoint_every_n_steps, started))  # last: see its doc
    trainer = build_trainer(cfg, paths, logger, callbacks)

    if rank_zero and resumed_from_step is None:
        log.info("training %s (%d parameters) on %d pairs; MLflow run %s", cfg.model.name, parameters,
                 len(datamodule.examples["train"]), logger.run_id)
    elif rank_zero:
        log.info("resumed training from %s (%s); logging into MLflow run %s", state.checkpoint_path,
                 state.position(), logger.run_id)
    try:
        trainer.fit(module, datamodule=datamodule, ckpt_path=state.checkpoint_path, weights_only=False)
    except NonFiniteLossError as error:
        if state.checkpoint is not None:
            checkpoint_note = (f"the last good checkpoint, {state.checkpoint_path} (global step {state.global_step}), "
                               "is kept and a rerun with the same configuration resumes from it")
        else:
            checkpoint_note = "no checkpoint was saved before it"
        raise NonFiniteLossError(
            f"{error}. Training stopped and MLflow run {logger.run_id} is marked FAILED; {checkpoint_note}.",
            step=error.step, value=error.value,
        ) from error
    wall_time = previous_wall_time + time.perf_counter() - started

    reason = stop_reason(trainer, target_stop, early_stop)
    epochs = completed_epochs(trainer)
    log.info("training stopped: %s after %d complete epochs, %d steps, %.0f s", reason, epochs,
             trainer.global_step, wall_time)

    summary = {
        "mlflow_run_id": logger.run_id,
        "wall_time_s": round(wall_time, 1),
        "epochs": epochs,
        "steps": trainer.global_step,
        "best_val_loss": None,
        "monitor": monitor,
        "best_score": round(float(checkpoint.best_model_score), 4),
        "parameters": parameters,
        "stop_reason": reason,
        "resumed_from_step": resumed_from_step,
    }
    if trainer.is_global_zero:
        client = logger.experiment
        try:
            selection = select_model(cfg, datamodule, validation, state, snapshots)
            summary.update(selection.pop("summary"))
            write_outputs(cfg, paths, state, summary, grad_norms.history, selection.get("average"))
        except BaseException:
            client.set_terminated(logger.run_id, "FAILED")
            raise
        client.set_tag(logger.run_id, "stop_reason", reason)
        client.log_artifact(logger.run_id, str(paths.reports / "grad_norms.png"))
        client.set_tag(logger.run_id, "checkpoint", summary["checkpoint"])
        for key in ("wall_time_s", "epochs", "steps", "best_val_loss", "best_val_bleu", "average_val_loss",
                    "average_val_bleu"):
            if summary.get(key) is not None:
                client.log_metric(logger.run_id, f"train_summary/{key}", float(summary[key]))
        state.remove()
    return summary


def validation_loss(model, datamodule: TranslationDataModule) -> float:
    """Return the cross-entropy (no label smoothing) of ``model`` over every real target token of ``val``, in fp32."""
    model.eval()
    loss_sum, tokens = 0.0, 0
    with torch.inference_mode():
        for batch in datamodule.whole_val_dataloader():
            loss, n_tokens = sequence_loss(model, batch["src"], batch["tgt_in"], batch["tgt_out"], PAD_ID)
            loss_sum += float(loss) * n_tokens
            tokens += n_tokens
    return loss_sum / max(tokens, 1)


def validation_scores(model, datamodule: TranslationDataModule, validation: ValidationTranslations) -> dict:
    """Return val loss and, when validation BLEU is on, greedy val BLEU of ``model``."""
    scores = {"val_loss": round(validation_loss(model, datamodule), 4), "val_bleu": None}
    if validation.bleu:
        hypotheses = validation.translate(model, validation.sources)   # greedy decoding runs in inference mode
        scores["val_bleu"] = validation.corpus_bleu(hypotheses)
    return scores


def select_model(cfg, datamodule, validation: ValidationTranslations, state: ResumeState,
                 snapshots: WeightSnapshots | None) -> dict:
    """Score the best checkpoint and the averaged weights on ``val``, and name the better one for evaluation.

    Both are scored again in fp32 with the same functions, so the comparison does not depend on the training
    precision. Returns {"summary": fields for train_summary.json, "average": averaged state dict or absent}.
    """
    higher_is_better = cfg.train.monitor == "val/bleu"
    key = "val_bleu" if higher_is_better else "val_loss"

    best_model, _ = load_model(state.model_checkpoints / "best.ckpt")
    best = validation_scores(best_model, datamodule, validation)
    summary = {"checkpoint": "best.ckpt", "best_val_loss": best["val_loss"], "best_val_bleu": best["val_bleu"]}
    if snapshots is None or len(snapshots.snapshots) < 2:
        return {"summary": summary}

    averaged_state = snapshots.average()
    best_model.load_state_dict(averaged_state)
    average = validation_scores(best_model, datamodule, validation)
    summary.update(average_val_loss=average["val_loss"], average_val_bleu=average["val_bleu"],
                   averaged_steps=snapshots.steps)
    improved = average[key] > best[key] if higher_is_better else average[key] < best[key]
    if improved:
        summary["checkpoint"] = "average.ckpt"
    log.info("validation %s: best checkpoint %s, average of the last %d validations %s; evaluating %s",
             key, best[key], len(snapshots.snapshots), average[key], summary["checkpoint"])
    return {"summary": summary, "average": averaged_state}


def write_outputs(cfg, paths: Paths, state: ResumeState, summary: dict, grad_norm_history: list,
                  averaged_state: dict | None = None) -> None:
    """Write every declared output of the stage under a temporary name, then rename them all together."""
    with contextlib.ExitStack() as stack:
        models = stack.enter_context(atomic_dir(paths.models))
        plot = stack.enter_context(atomic_path(paths.reports / "grad_norms.png"))
        environment_file = stack.enter_context(atomic_path(paths.reports / "environment.json"))

        for name in ("best.ckpt", "last.ckpt"):
            shutil.copy2(state.model_checkpoints / name, models / name)
        if averaged_state is not None:
            save_averaged(state.model_checkpoints / "last.ckpt", averaged_state, models / "average.ckpt")
        (models / "train_summary.json").write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
        plot_grad_norms(grad_norm_history, plot)
        environment_file.write_text(json.dumps(environment(cfg), indent=2) + "\n", encoding="utf-8")


def save_averaged(template_path, averaged_state: dict, path) -> None:
    """Save averaged weights as a Lightning-style checkpoint (hyperparameters of ``template_path``, no optimizer)."""
    template = torch.load(template_path, map_location="cpu", weights_only=False)
    checkpoint = {
        "hyper_parameters": template["hyper_parameters"],
        "state_dict": {f"model.{key}": value for key, value in averaged_state.items()},
        "epoch": template.get("epoch"),
        "global_step": template.get("global_step"),
    }
    torch.save(checkpoint, path)


def environment(cfg) -> dict:
    """Return what a rerun needs to reproduce this training: the seed, numeric settings and library versions."""
    record = {
        "seed": cfg.seed,
        "precision": str(cfg.trainer.precision),
        "deterministic": cfg.trainer.deterministic,
        "accelerator": cfg.trainer.accelerator,
        "torch_threads": torch.get_num_threads(),
        "libraries": library_versions(),
    }
    if torch.cuda.is_available():
        record["cuda"] = {"version": torch.version.cuda, "device": torch.cuda.get_device_name(0)}
    return record


def library_versions() -> dict[str, str]:
    import hydra
    import mlflow
    import sacrebleu
    import sentencepiece

    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "lightning": L.__version__,
        "numpy": np.__version__,
        "hydra-core": hydra.__version__,
        "mlflow": mlflow.__version__,
        "sentencepiece": sentencepiece.__version__,
        "sacrebleu": sacrebleu.__version__,
        "platform": platform.platform(),
    }


def main() -> None:
    run_stage(run, errors=(NonFiniteLossError,))


if __name__ == "__main__":
    main()
