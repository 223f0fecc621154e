"""The Lightning DataModule: prepared text + tokenizer -> token-count batches."""

from __future__ import annotations

from typing import Callable

import lightning as L
import torch
from torch.utils.data import DataLoader

from nmt.config import ConfigError, Paths
from nmt.data.batching import TokenBatchSampler, collate, make_examples
from nmt.data.parallel import check_aligned, read_lines
from nmt.tokenizer import load_tokenizers


class ResumableDataLoader(DataLoader):
    """A DataLoader over a ``TokenBatchSampler`` that sets the sampler's epoch and saves its position in checkpoints.

    Lightning calls ``set_epoch`` on a DataLoader's ``sampler`` and on ``batch_sampler.sampler`` only (Lightning
    2.6, ``lightning.fabric.utilities.data._set_sampler_epoch``), never on the batch sampler itself. So every
    ``iter()`` sets the sampler's epoch to ``epoch()``, the training loop's epoch counter, and each epoch gets
    its own batch order.

    Lightning stores ``state_dict()`` in every checkpoint and, when training resumes from one, calls
    ``load_state_dict`` before it iterates again. If that iteration is for the saved epoch, it starts after the
    batches that were already trained on, so a run resumed mid-epoch trains on the same batches as an
    uninterrupted one. ``batches_done`` returns how many batches of the current epoch the training loop has
    processed.
    """

    def __init__(self, *args, batches_done: Callable[[], int], epoch: Callable[[], int], **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.batches_done = batches_done
        self.epoch = epoch
        self._resume_position: tuple[int, int] | None = None

    def __iter__(self):
        epoch = self.epoch()
        self.batch_sampler.set_epoch(epoch)
        if self._resume_position is not None:
            saved_epoch, batches_done = self._resume_position
            self._resume_position = None
            # A checkpoint saved at the end of an epoch resumes at the start of the next one, with no batch skipped.
            if saved_epoch == epoch:
                self.batch_sampler.skip_next(batches_done)
        return super().__iter__()

    def state_dict(self) -> dict:
        return {"epoch": self.batch_sampler.epoch, "batches_done": int(self.batches_done())}

    def load_state_dict(self, state: dict) -> None:
        self._resume_position = (state["epoch"], state["batches_done"])


class TranslationDataModule(L.LightningDataModule):
    """Serve the prepared ``train`` and ``val`` splits of one language pair as id batches."""

    def __init__(self, cfg, paths: Paths) -> None:
        super().__init__()
        self.cfg = cfg
        self.paths = paths
        self.tokenizers = load_tokenizers(paths.tokenizer_dir)
        if self.tokenizers.joint != bool(cfg.tokenizer.joint):
            layout = "one joint model" if self.tokenizers.joint else "one model per side"
            raise ConfigError(
                f"tokenizer.joint={str(cfg.tokenizer.joint).lower()}, but {paths.tokenizer_dir} has {layout}; "
                "rerun the tokenizer stage (dvc repro tokenizer)"
            )
        lowercase = bool(cfg.tokenizer.get("lowercase", False))
        if self.tokenizers.lowercase != lowercase:
            trained = "lowercased text" if self.tokenizers.lowercase else "text as written"
            raise ConfigError(
                f"tokenizer.lowercase={str(lowercase).lower()}, but {paths.tokenizer_dir} was trained on {trained}; "
                "rerun the tokenizer stage (dvc repro tokenizer)"
            )
        self.examples: dict[str, list] = {}
        self.sentences: dict[str, tuple[list[str], list[str]]] = {}

    def load_split(self, split: str) -> None:
        """Read and encode one prepared split; raise DataError if its two sides are not aligned."""
        src_lang, tgt_lang = self.cfg.data.src_lang, self.cfg.data.tgt_lang
        src_path, tgt_path = self.paths.split_file(split, src_lang), self.paths.split_file(split, tgt_lang)
        names = (str(src_path), str(tgt_path))
        source = read_lines(src_path)
        target = read_lines(tgt_path)
        check_aligned(f"reading the prepared {split} split", source, target, names)

        src_ids = self.tokenizers.source.encode(source)
        tgt_ids = self.tokenizers.target.encode(target)
        check_aligned(f"tokenizing the {split} split", src_ids, tgt_ids, names)

        self.sentences[split] = (source, target)
        self.examples[split] = make_examples(src_ids, tgt_ids, self.cfg.model.max_positions)

    def setup(self, stage: str | None = None) -> None:
        for split in ("train", "val"):
            if split not in self.examples:
                self.load_split(split)

    def _loader(self, split: str, shuffle: bool, all_ranks: bool = False) -> DataLoader:
        """Return the batches of ``split`` for this rank, or every rank's batches when ``all_ranks`` is true."""
        examples = self.examples[split]
        split_across_ranks = self.trainer is not None and not all_ranks
        sampler = TokenBatchSampler(
            [(len(e.src), len(e.tgt)) for e in examples],
            max_tokens=self.cfg.train.max_tokens,
            shuffle=shuffle,
            seed=self.cfg.seed,
            num_replicas=self.trainer.world_size if split_across_ranks else 1,
            rank=self.trainer.global_rank if split_across_ranks else 0,
        )
        # A private generator: creating a DataLoader iterator draws a seed from its generator, and drawing it
        # from the global one would shift the dropout masks between an interrupted and an uninterrupted run.
        generator = torch.Generator().manual_seed(self.cfg.seed)
        if split != "train":
            return DataLoader(examples, batch_sampler=sampler, collate_fn=collate, generator=generator)
        return ResumableDataLoader(
            examples, batch_sampler=sampler, collate_fn=collate, generator=generator,
            batches_done=self._train_batches_done, epoch=self._train_epoch,
        )

    def _train_batches_done(self) -> int:
        """Return the number of batches of the current epoch that the training loop has processed."""
        if self.trainer is None:
            return 0
        return self.trainer.fit_loop.epoch_loop.batch_progress.current.processed

    def _train_epoch(self) -> int:
        """Return the epoch that the training loop is in or about to start, the value Lightning gives samplers."""
        if self.trainer is None:
            return 0
        return self.trainer.fit_loop.epoch_progress.current.processed

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", shuffle=False)

    def whole_val_dataloader(self) -> DataLoader:
        """Return every validation batch, also on one rank of a multi-process run (for scoring after training)."""
        return self._loader("val", shuffle=False, all_ranks=True)
