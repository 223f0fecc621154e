"""Token-count batches with length bucketing, and padding of id sequences into tensors.

A batch holds sentences of similar length, so little of it is padding, and its cost
``n_sentences * max(longest source, longest target)`` stays within ``max_tokens``.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import torch

from nmt.tokenizer import BOS_ID, EOS_ID, PAD_ID


@dataclass
class Example:
    """One sentence pair as ids, each ending with the end-of-sequence token."""

    index: int
    src: list[int]
    tgt: list[int]


def make_examples(src_ids: list[list[int]], tgt_ids: list[list[int]], max_positions: int) -> list[Example]:
    """Append the end token and truncate so that source and decoder input both fit ``max_positions``."""
    examples = []
    for index, (src, tgt) in enumerate(zip(src_ids, tgt_ids)):
        src = src[: max_positions - 1] + [EOS_ID]
        tgt = tgt[: max_positions - 1] + [EOS_ID]
        examples.append(Example(index, src, tgt))
    return examples


class TokenBatchSampler:
    """Yield lists of example positions whose padded size fits ``max_tokens``.

    Examples are sorted by length (ties broken randomly), cut into batches, and the batch order is shuffled
    each epoch from ``seed + epoch``. With ``num_replicas`` > 1 each rank takes every num_replicas-th batch.
    To give every rank the same number of steps without dropping or repeating a sentence, the largest
    batches are split in two until the batch count divides evenly.
    """

    def __init__(
        self,
        lengths: list[tuple[int, int]],
        max_tokens: int,
        shuffle: bool = True,
        seed: int = 0,
        num_replicas: int = 1,
        rank: int = 0,
    ) -> None:
        longest = max((max(pair) for pair in lengths), default=0)
        if max_tokens < longest:
            raise ValueError(f"max_tokens={max_tokens} is smaller than the longest example ({longest} tokens); raise it")
        self.lengths = lengths
        self.max_tokens = max_tokens
        self.shuffle = shuffle
        self.seed = seed
        self.num_replicas = num_replicas
        self.rank = rank
        self.epoch = 0
        self._skip = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def skip_next(self, batches: int) -> None:
        """Start the next iteration after this rank's first ``batches`` batches of the epoch (mid-epoch resume)."""
        self._skip = batches

    def batches(self) -> list[list[int]]:
        """Return every batch of this epoch, for all ranks."""
        rng = random.Random(self.seed + self.epoch)
        order = list(range(len(self.lengths)))
        if self.shuffle:
            rng.shuffle(order)
        order.sort(key=lambda i: self.lengths[i])  # stable sort keeps the random order among equal lengths

        batches, current, longest = [], [], 0
        for i in order:
            candidate = max(longest, *self.lengths[i])
            if current and candidate * (len(current) + 1) > self.max_tokens:
                batches.append(current)
                current, candidate = [], max(self.lengths[i])
            current.append(i)
            longest = candidate
        if current:
            batches.append(current)

        if self.shuffle:
            rng.shuffle(batches)
        if self.num_replicas > 1:
            batches = split_until_divisible(batches, self.num_replicas)
        return batches

    def __iter__(self):
        skip, self._skip = self._skip, 0
        yield from self.batches()[self.rank :: self.num_replicas][skip:]

    def __len__(self) -> int:
        return len(self.batches()) // self.num_replicas


def split_until_divisible(batches: list[list[int]], parts: int) -> list[list[int]]:
    """Split the largest batches in two, in place of themselves, until ``len(batches) % parts == 0``."""
    batches = list(batches)
    if sum(len(b) for b in batches) < parts:
        raise ValueError(f"{sum(len(b) for b in batches)} examples cannot fill {parts} ranks; use fewer devices")
    while len(batches) % parts:
        largest = max(range(len(batches)), key=lambda i: len(batches[i]))
        batch = batches[largest]
        middle = len(batch) // 2
        batches[largest : largest + 1] = [batch[:middle], batch[middle:]]
    return batches


def pad(sequences: list[list[int]], pad_id: int = PAD_ID) -> torch.Tensor:
    """Stack id lists into a (B, L) LongTensor padded on the right."""
    length = max(len(seq) for seq in sequences)
    out = torch.full((len(sequences), length), pad_id, dtype=torch.long)
    for row, seq in enumerate(sequences):
        out[row, : len(seq)] = torch.tensor(seq, dtype=torch.long)
    return out


def collate(examples: list[Example]) -> dict[str, torch.Tensor]:
    """Build a teacher-forcing batch: src (B, N), tgt_in = [BOS] + y (B, M), tgt_out = y + [EOS] (B, M)."""
    return {
        "index": torch.tensor([e.index for e in examples]),
        "src": pad([e.src for e in examples]),
        "tgt_in": pad([[BOS_ID] + e.tgt[:-1] for e in examples]),
        "tgt_out": pad([e.tgt for e in examples]),
    }
