"""The Lightning DataModule: prepared text + tokenizer -> token-count batches."""

from __future__ import annotations

import lightning as L
from torch.utils.data import DataLoader

from nmt.config import Paths
from nmt.data.batching import TokenBatchSampler, collate, make_examples
from nmt.data.parallel import read_lines
from nmt.tokenizer import Tokenizer


class TranslationDataModule(L.LightningDataModule):
    """Serve the prepared ``train`` and ``val`` splits of one language pair as id batches."""

    def __init__(self, cfg, paths: Paths) -> None:
        super().__init__()
        self.cfg = cfg
        self.paths = paths
        self.tokenizer = Tokenizer(paths.tokenizer_model)
        self.examples: dict[str, list] = {}
        self.sentences: dict[str, tuple[list[str], list[str]]] = {}

    def load_split(self, split: str) -> None:
        src_lang, tgt_lang = self.cfg.data.src_lang, self.cfg.data.tgt_lang
        source = read_lines(self.paths.split_file(split, src_lang))
        target = read_lines(self.paths.split_file(split, tgt_lang))
        self.sentences[split] = (source, target)
        self.examples[split] = make_examples(
            self.tokenizer.encode(source), self.tokenizer.encode(target), self.cfg.model.max_positions
        )

    def setup(self, stage: str | None = None) -> None:
        for split in ("train", "val"):
            if split not in self.examples:
                self.load_split(split)

    def _loader(self, split: str, shuffle: bool) -> DataLoader:
        examples = self.examples[split]
        sampler = TokenBatchSampler(
            [(len(e.src), len(e.tgt)) for e in examples],
            max_tokens=self.cfg.train.max_tokens,
            shuffle=shuffle,
            seed=self.cfg.seed,
            num_replicas=self.trainer.world_size if self.trainer else 1,
            rank=self.trainer.global_rank if self.trainer else 0,
        )
        return DataLoader(examples, batch_sampler=sampler, collate_fn=collate)

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", shuffle=False)
