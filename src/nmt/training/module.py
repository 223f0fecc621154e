"""The LightningModule: teacher-forced training of the Transformer with token-level cross-entropy."""

from __future__ import annotations

import json
import logging
import random
from pathlib import Path

import lightning as L
import numpy as np
import torch
from lightning.pytorch.callbacks import Timer
from omegaconf import OmegaConf

from nmt.loss import sequence_loss
from nmt.model import ModelConfig, Transformer
from nmt.tokenizer import PAD_ID
from nmt.training.schedule import cooldown_multiplier, lr_multiplier

log = logging.getLogger(__name__)

# How often (in optimizer steps) the share of the time budget spent is measured again for the lr cooldown.
COOLDOWN_REFRESH_STEPS = 10


class NonFiniteLossError(RuntimeError):
    """Raised when a training or validation loss is NaN or infinite at global step ``step``, with loss ``value``."""

    def __init__(self, message: str, step: int, value: float) -> None:
        super().__init__(message)
        self.step = step
        self.value = value


def rng_states() -> dict:
    """Return the global RNG states of Python, NumPy and torch (CPU, and CUDA where available)."""
    states = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        states["torch_cuda"] = torch.cuda.get_rng_state_all()
    return states


def set_rng_states(states: dict) -> None:
    """Restore the global RNG states that ``rng_states`` returned."""
    random.setstate(states["python"])
    np.random.set_state(states["numpy"])
    torch.set_rng_state(states["torch"])
    if "torch_cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["torch_cuda"])


class TranslationModule(L.LightningModule):
    """Wrap the Transformer for Lightning; ``cfg`` is the composed config as a plain dict."""

    def __init__(self, cfg: dict, src_vocab_size: int, tgt_vocab_size: int) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.cfg = OmegaConf.create(cfg)
        model_config = ModelConfig.from_dict(
            cfg["model"], src_vocab_size=src_vocab_size, tgt_vocab_size=tgt_vocab_size, pad_id=PAD_ID
        )
        self.model = Transformer(model_config)
        self._val_loss_sum = 0.0
        self._val_tokens = 0
        self._time_fraction = None  # share of trainer.max_time_minutes spent; read by the lr cooldown

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        loss, n_tokens = sequence_loss(
            self.model, batch["src"], batch["tgt_in"], batch["tgt_out"], PAD_ID, self.cfg.train.label_smoothing
        )
        if self.trainer.world_size > 1:
            return self._distributed_training_step(loss, n_tokens, batch_idx)

        if not bool(torch.isfinite(loss)):
            self._raise_non_finite("training", float(loss.detach()), batch_idx)
        self.log("train/loss", loss, on_step=True, on_epoch=True, prog_bar=True, batch_size=n_tokens)
        self.log("train/lr", self.optimizers().param_groups[0]["lr"], on_step=True, on_epoch=False)
        return loss

    def _distributed_training_step(self, loss: torch.Tensor, n_tokens: int, batch_idx: int) -> torch.Tensor:
        """Return this rank's loss scaled so that DDP's gradient average is the gradient of the global token mean.

        Each rank's ``loss`` is the mean over its own ``n_tokens`` target tokens, and DDP averages the gradients
        of the ``W`` ranks. Rank r scales its loss by ``W * n_r / N``, where ``N`` is the token count of all
        ranks. The average then becomes ``sum_r (n_r / N) * grad(loss_r)``, the gradient of the mean over all N
        tokens, which one process that trains on the union of the ranks' batches would compute.
        """
        # One all-reduce gives the global token count, the global loss sum and the number of ranks whose loss is
        # not finite. Every rank then takes the same decision, so no rank raises alone and leaves the others
        # waiting in the gradient all-reduce.
        local = torch.stack([
            torch.tensor(float(n_tokens), dtype=torch.float64, device=loss.device),
            loss.detach().to(torch.float64) * n_tokens,
            (~torch.isfinite(loss.detach())).to(torch.float64),
        ])
        global_tokens, global_loss_sum, non_finite_ranks = self.trainer.strategy.reduce(local, reduce_op="sum").tolist()
        global_loss = global_loss_sum / global_tokens
        if non_finite_ranks > 0:
            self._raise_non_finite("training", global_loss, batch_idx)

        # Every rank logs the same global value, so the epoch mean (weighted by tokens) is equal on all ranks too.
        self.log("train/loss", global_loss, on_step=True, on_epoch=True, prog_bar=True,
                 batch_size=int(global_tokens))
        self.log("train/lr", self.optimizers().param_groups[0]["lr"], on_step=True, on_epoch=False)
        return loss * (self.trainer.world_size * n_tokens / global_tokens)

    def on_train_batch_start(self, batch: dict, batch_idx: int) -> None:
        """Measure the share of the time budget spent, for the lr cooldown (``optim.cooldown_fraction``).

        It is measured every ``COOLDOWN_REFRESH_STEPS`` steps. Under DDP rank 0's value is broadcast, so every
        rank applies the same learning rate and the replicas stay equal.
        """
        if self.cfg.optim.get("cooldown_fraction") is None:
            return
        if self._time_fraction is not None and self.global_step % COOLDOWN_REFRESH_STEPS:
            return

        timer = next((c for c in self.trainer.callbacks if isinstance(c, Timer)), None)
        if timer is None:
            raise RuntimeError(
                f"optim.cooldown_fraction={self.cfg.optim.cooldown_fraction} needs a time limit; "
                "set trainer.max_time_minutes or use optim.cooldown_fraction=null"
            )
        spent = timer.time_elapsed() / (60.0 * self.cfg.trainer.max_time_minutes)
        self._time_fraction = float(self.trainer.strategy.broadcast(spent, src=0))

    def on_validation_epoch_start(self) -> None:
        self._val_loss_sum, self._val_tokens = 0.0, 0

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        loss, n_tokens = sequence_loss(self.model, batch["src"], batch["tgt_in"], batch["tgt_out"], PAD_ID)
        self._val_loss_sum += float(loss) * n_tokens
        self._val_tokens += n_tokens

    def on_validation_epoch_end(self) -> None:
        totals = torch.tensor([self._val_loss_sum, float(self._val_tokens)], dtype=torch.float64)
        totals = self.all_gather(totals).reshape(-1, 2).sum(dim=0) if self.trainer.world_size > 1 else totals
        val_loss = float(totals[0] / totals[1].clamp(min=1.0))
        if not torch.isfinite(torch.tensor(val_loss)):
            self._raise_non_finite("validation", val_loss, None)
        # Cross-entropy without label smoothing, averaged over every real target token of the split.
        self.log("val/loss", val_loss, prog_bar=True, sync_dist=False)
        self.log("val/ppl", float(torch.exp(torch.tensor(val_loss))), sync_dist=False)

        train_loss = self.trainer.callback_metrics.get("train/loss_epoch")
        log.info(
            "epoch %d, step %d: val loss %.4f, last epoch's train loss %s",
            self.current_epoch, self.global_step, val_loss,
            "n/a" if train_loss is None else f"{float(train_loss):.4f}",
        )

    def _raise_non_finite(self, kind: str, value: float, batch_idx: int | None) -> None:
        where = f"epoch {self.current_epoch}" + ("" if batch_idx is None else f", batch {batch_idx}")
        lr = self.optimizers().param_groups[0]["lr"]
        fixes = [f"lower optim.lr (now {self.cfg.optim.lr})"]
        if self.cfg.optim.get("grad_clip") is None:
            fixes.append("set optim.grad_clip")
        if str(self.cfg.trainer.precision) not in ("32-true", "32", "64-true", "64"):
            fixes.append("use trainer.precision=32-true")
        raise NonFiniteLossError(
            f"{kind} loss is {value} at global step {self.global_step} ({where}, learning rate {lr:.3g}); "
            + ", ".join(fixes[:-1]) + (" or " if len(fixes) > 1 else "") + fixes[-1],
            step=self.global_step,
            value=value,
        )

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        """Store the global RNG states, so that a resumed run draws the same dropout masks as an uninterrupted one."""
        checkpoint["rng_states"] = rng_states()

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        if "rng_states" in checkpoint:
            set_rng_states(checkpoint["rng_states"])
        else:
            log.warning("the checkpoint has no RNG states; dropout after resuming differs from an uninterrupted run")

    def configure_optimizers(self):
        optim = self.cfg.optim
        if optim.name == "adam":
            optimizer = torch.optim.Adam(
                self.parameters(), lr=optim.lr, betas=tuple(optim.betas), eps=optim.eps, weight_decay=optim.weight_decay
            )
        else:
            optimizer = torch.optim.SGD(self.parameters(), lr=optim.lr, momentum=0.0, weight_decay=0.0)

        def multiplier(step: int) -> float:
            factor = lr_multiplier(step, optim.scheduler, optim.warmup_steps)
            return factor * cooldown_multiplier(self._time_fraction or 0.0, optim.get("cooldown_fraction"))

        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, multiplier)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}


def load_model(checkpoint_path, map_location: str = "cpu") -> tuple[Transformer, dict]:
    """Load the Transformer and the config it was trained with from a Lightning checkpoint."""
    checkpoint = torch.load(checkpoint_path, map_location=map_location, weights_only=False)
    hparams = checkpoint["hyper_parameters"]
    model_config = ModelConfig.from_dict(
        hparams["cfg"]["model"],
        src_vocab_size=hparams["src_vocab_size"],
        tgt_vocab_size=hparams["tgt_vocab_size"],
        pad_id=PAD_ID,
    )
    model = Transformer(model_config)
    state = {k.removeprefix("model."): v for k, v in checkpoint["state_dict"].items() if k.startswith("model.")}
    model.load_state_dict(state)
    model.eval()
    return model, hparams["cfg"]


def selected_checkpoint(models_dir) -> Path:
    """Return the checkpoint that training selected for evaluation: ``train_summary.json``'s ``checkpoint`` in
    ``models_dir`` (``best.ckpt`` or ``average.ckpt``), or ``best.ckpt`` when the summary does not name one."""
    models_dir = Path(models_dir)
    summary_path = models_dir / "train_summary.json"
    name = "best.ckpt"
    if summary_path.is_file():
        name = json.loads(summary_path.read_text(encoding="utf-8")).get("checkpoint") or name
    return models_dir / name
