"""Callbacks: per-weight gradient norms, validation BLEU and decoded samples, and stopping at a target loss."""

from __future__ import annotations

import logging
import time

import lightning as L
import torch

from nmt.decoding import translate_sentences
from nmt.evaluation import score

log = logging.getLogger(__name__)


class GradNormLogger(L.Callback):
    """Log the L2 norm of the gradient of every named weight every ``every_n_steps`` optimizer steps.

    Norms are taken before gradient clipping, under the names of ``Transformer.named_weights`` with a
    ``grad_norm/`` prefix. ``history`` keeps (step, {name: norm}) for the gradient-norm plot.
    """

    def __init__(self, every_n_steps: int) -> None:
        self.every_n_steps = max(1, every_n_steps)
        self.history: list[tuple[int, dict[str, float]]] = []

    def state_dict(self) -> dict:
        """Keep the history in checkpoints, so that a resumed run still plots the steps before the interruption."""
        return {"history": self.history}

    def load_state_dict(self, state_dict: dict) -> None:
        self.history = [(step, dict(norms)) for step, norms in state_dict.get("history", [])]

    def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
        step = trainer.global_step
        if step % self.every_n_steps != 0:
            return

        norms = {}
        for name, weight in pl_module.model.named_weights().items():
            if weight.grad is not None:
                norms[name] = float(torch.linalg.vector_norm(weight.grad.detach().float()))
        self.history.append((step, norms))
        if trainer.logger is not None and trainer.is_global_zero:
            trainer.logger.log_metrics({f"grad_norm/{name}": value for name, value in norms.items()}, step=step)


class ValidationTranslations(L.Callback):
    """At every validation, decode validation sentences greedily: log a few as samples and, optionally, BLEU.

    With ``bleu`` true the whole validation split (``sources``) is decoded and its corpus BLEU (detokenized
    sacrebleu, cased unless the tokenizers lowercase their input) is logged as ``val/bleu``, which
    ``ModelCheckpoint`` and early stopping can monitor. Every rank decodes the whole split, so the
    monitored value is the same on all of them. The first ``samples`` sentences are logged as a text artifact
    by rank 0.
    """

    def __init__(self, sources: list[str], references: list[str], tokenizers, decode_cfg, samples: int,
                 bleu: bool) -> None:
        self.sources = sources
        self.references = references
        self.tokenizers = tokenizers
        self.decode_cfg = decode_cfg
        self.samples = samples
        self.bleu = bleu

    def translate(self, model, sentences: list[str]) -> list[str]:
        return translate_sentences(
            model,
            self.tokenizers,
            sentences,
            batch_size=self.decode_cfg.batch_size,
            max_len_a=self.decode_cfg.max_len_a,
            max_len_b=self.decode_cfg.max_len_b,
        )

    def corpus_bleu(self, hypotheses: list[str]) -> float:
        """Return the corpus BLEU of validation hypotheses, lowercased when the tokenizers lowercase their input."""
        return score(hypotheses, self.references, lowercase=self.tokenizers.lowercase)["bleu"]

    def on_validation_epoch_end(self, trainer, pl_module) -> None:
        if trainer.sanity_checking or not self.sources:
            return
        if not self.bleu and not trainer.is_global_zero:
            return

        was_training = pl_module.training
        started = time.perf_counter()
        with torch.inference_mode():
            hypotheses = self.translate(pl_module.model, self.sources if self.bleu else self.sources[: self.samples])
        pl_module.train(was_training)

        if self.bleu:
            bleu = self.corpus_bleu(hypotheses)
            pl_module.log("val/bleu", bleu, prog_bar=True, sync_dist=False)
            log.info("epoch %d, step %d: validation BLEU %.2f (greedy, %d sentences in %.1f s)",
                     trainer.current_epoch, trainer.global_step, bleu, len(hypotheses), time.perf_counter() - started)
        if trainer.is_global_zero:
            self.log_samples(trainer, hypotheses[: self.samples])

    def log_samples(self, trainer, hypotheses: list[str]) -> None:
        blocks = []
        for number, (src, ref, hyp) in enumerate(zip(self.sources, self.references, hypotheses), start=1):
            blocks.append(f"[{number}] source:     {src}\n    reference:  {ref}\n    hypothesis: {hyp}\n")
        if not blocks:
            return
        text = f"epoch {trainer.current_epoch}, step {trainer.global_step}\n\n" + "\n".join(blocks)
        log.info("validation samples at epoch %d:\n%s", trainer.current_epoch, blocks[0])
        logger = trainer.logger
        if logger is not None and hasattr(logger, "run_id"):
            logger.experiment.log_text(logger.run_id, text, f"samples/epoch_{trainer.current_epoch:03d}.txt")


class StopAtTargetLoss(L.Callback):
    """Stop training once an epoch's mean training loss is at or below ``target_loss``."""

    def __init__(self, target_loss: float | None) -> None:
        self.target_loss = target_loss
        self.reached_at_epoch: int | None = None

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        if self.target_loss is None:
            return
        epoch_loss = trainer.callback_metrics.get("train/loss_epoch")
        reached = epoch_loss is not None and float(epoch_loss) <= self.target_loss
        # Lightning does not synchronize ``should_stop`` across ranks, and a rank that stops alone leaves the
        # others waiting in the next collective, so the ranks decide together (any rank that reached it stops all).
        if trainer.strategy.reduce_boolean_decision(reached, all=False):
            self.reached_at_epoch = trainer.current_epoch
            trainer.should_stop = True
            log.info("training loss %.4f reached target %.4f at epoch %d", float(epoch_loss), self.target_loss,
                     trainer.current_epoch)
