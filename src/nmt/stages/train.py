"""Stage ``train``: Lightning training of the Transformer, logged to MLflow.

Outputs: ``models/best.ckpt`` (lowest validation loss), ``models/last.ckpt``, ``models/train_summary.json``
(MLflow run id and training figures for ``evaluate``), and ``reports/grad_norms.png``.
Training stops at ``trainer.max_epochs``, ``trainer.max_time_minutes`` or ``train.target_loss``,
whichever comes first; the reason is logged and stored as the MLflow tag ``stop_reason``.
"""

from __future__ import annotations

import logging
import platform
import time

import lightning as L
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from omegaconf import OmegaConf

from nmt.config import Paths
from nmt.io import write_json_atomic
from nmt.plots import plot_grad_norms
from nmt.stages.common import run_stage
from nmt.tracking import flatten, make_logger
from nmt.training.callbacks import GradNormLogger, SampleTranslations, StopAtTargetLoss
from nmt.training.datamodule import TranslationDataModule
from nmt.training.module import TranslationModule

log = logging.getLogger(__name__)


def stop_reason(trainer: L.Trainer, target_stop: StopAtTargetLoss) -> str:
    """Name the limit that ended training: target_loss, max_epochs or max_time."""
    if target_stop.reached_at_epoch is not None:
        return "target_loss"
    if trainer.current_epoch >= trainer.max_epochs:
        return "max_epochs"
    return "max_time"


def build_trainer(cfg, paths: Paths, logger, callbacks: list) -> L.Trainer:
    t = cfg.trainer
    return L.Trainer(
        accelerator=t.accelerator,
        devices=t.devices,
        num_nodes=t.num_nodes,
        strategy=t.strategy,
        precision=t.precision,
        max_epochs=t.max_epochs,
        max_time={"minutes": t.max_time_minutes},
        deterministic=t.deterministic,
        gradient_clip_val=cfg.optim.grad_clip,
        log_every_n_steps=cfg.train.log_every_n_steps,
        logger=logger,
        callbacks=callbacks,
        default_root_dir=str(paths.models),
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        use_distributed_sampler=False,  # the token batch sampler splits batches across ranks itself
    )


def run(cfg, paths: Paths) -> dict:
    L.seed_everything(cfg.seed, workers=True)
    datamodule = TranslationDataModule(cfg, paths)
    datamodule.setup()
    vocab_size = datamodule.tokenizer.vocab_size
    module = TranslationModule(OmegaConf.to_container(cfg, resolve=True), vocab_size, vocab_size)
    parameters = module.model.num_parameters()

    logger = make_logger(cfg, run_name=f"{cfg.data.name}-{cfg.model.name}")
    logger.log_hyperparams(flatten(cfg))
    logger.experiment.set_tag(logger.run_id, "seed", str(cfg.seed))
    logger.experiment.log_dict(logger.run_id, library_versions(), "environment.json")

    val_source, val_target = datamodule.sentences["val"]
    samples = cfg.train.val_samples
    grad_norms = GradNormLogger(cfg.train.grad_norm_every_n_steps)
    target_stop = StopAtTargetLoss(cfg.train.target_loss)
    checkpoint = ModelCheckpoint(
        dirpath=paths.models, filename="best", monitor="val/loss", mode="min", save_last=True,
        enable_version_counter=False, auto_insert_metric_name=False,
    )
    callbacks = [
        checkpoint,
        grad_norms,
        SampleTranslations(val_source[:samples], val_target[:samples], datamodule.tokenizer, cfg.decode),
        target_stop,
    ]
    trainer = build_trainer(cfg, paths, logger, callbacks)

    log.info("training %s (%d parameters) on %d pairs", cfg.model.name, parameters, len(datamodule.examples["train"]))
    started = time.perf_counter()
    trainer.fit(module, datamodule=datamodule)
    wall_time = time.perf_counter() - started

    reason = stop_reason(trainer, target_stop)
    log.info("training stopped: %s after %d epochs, %d steps, %.0f s", reason, trainer.current_epoch,
             trainer.global_step, wall_time)

    summary = {
        "mlflow_run_id": logger.run_id,
        "wall_time_s": round(wall_time, 1),
        "epochs": trainer.current_epoch,
        "steps": trainer.global_step,
        "best_val_loss": round(float(checkpoint.best_model_score), 4),
        "parameters": parameters,
        "stop_reason": reason,
    }
    if trainer.is_global_zero:
        write_json_atomic(paths.models / "train_summary.json", summary)
        paths.reports.mkdir(parents=True, exist_ok=True)
        plot_grad_norms(grad_norms.history, paths.reports / "grad_norms.png")
        client = logger.experiment
        client.set_tag(logger.run_id, "stop_reason", reason)
        client.log_artifact(logger.run_id, str(paths.reports / "grad_norms.png"))
        for key in ("wall_time_s", "epochs", "steps", "best_val_loss"):
            client.log_metric(logger.run_id, f"train_summary/{key}", float(summary[key]))
    return summary


def library_versions() -> dict[str, str]:
    import hydra
    import mlflow
    import sacrebleu
    import sentencepiece

    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "lightning": L.__version__,
        "hydra-core": hydra.__version__,
        "mlflow": mlflow.__version__,
        "sentencepiece": sentencepiece.__version__,
        "sacrebleu": sacrebleu.__version__,
        "platform": platform.platform(),
    }


def main() -> None:
    run_stage(run)


if __name__ == "__main__":
    main()
