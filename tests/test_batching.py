"""Token-count batches: budget, coverage, determinism, and the split across ranks."""

from __future__ import annotations

import random

import pytest

from nmt.data.batching import Example, TokenBatchSampler, collate
from nmt.tokenizer import BOS_ID, EOS_ID, PAD_ID


def random_lengths(count: int, seed: int = 0) -> list[tuple[int, int]]:
    rng = random.Random(seed)
    return [(rng.randint(2, 40), rng.randint(2, 40)) for _ in range(count)]


def test_batches_fit_token_budget():
    lengths = random_lengths(500)
    for batch in TokenBatchSampler(lengths, max_tokens=300):
        longest = max(max(lengths[i]) for i in batch)
        assert longest * len(batch) <= 300


def test_every_example_once_per_epoch():
    lengths = random_lengths(500)
    seen = sorted(i for batch in TokenBatchSampler(lengths, max_tokens=300) for i in batch)
    assert seen == list(range(500))


def test_same_seed_same_batches_new_epoch_new_order():
    lengths = random_lengths(500)
    first, second = TokenBatchSampler(lengths, 300, seed=5), TokenBatchSampler(lengths, 300, seed=5)
    assert list(first) == list(second)
    second.set_epoch(1)
    assert list(first) != list(second)


@pytest.mark.parametrize("ranks", [2, 3, 4])
def test_ranks_split_without_duplicates_or_drops(ranks):
    lengths = random_lengths(1001, seed=ranks)
    samplers = [TokenBatchSampler(lengths, 300, seed=1, num_replicas=ranks, rank=r) for r in range(ranks)]
    per_rank = [list(sampler) for sampler in samplers]

    assert len({len(batches) for batches in per_rank}) == 1
    assert all(len(sampler) == len(per_rank[0]) for sampler in samplers)
    seen = sorted(i for batches in per_rank for batch in batches for i in batch)
    assert seen == list(range(1001))


def test_budget_below_longest_example_rejected():
    with pytest.raises(ValueError, match="max_tokens=10"):
        TokenBatchSampler([(5, 12)], max_tokens=10)


def test_collate_shifts_target_for_teacher_forcing():
    batch = collate([Example(0, [5, 6, EOS_ID], [7, 8, 9, EOS_ID]), Example(1, [5, EOS_ID], [7, EOS_ID])])
    assert batch["tgt_in"].tolist() == [[BOS_ID, 7, 8, 9], [BOS_ID, 7, PAD_ID, PAD_ID]]
    assert batch["tgt_out"].tolist() == [[7, 8, 9, EOS_ID], [7, EOS_ID, PAD_ID, PAD_ID]]
    assert batch["src"].tolist() == [[5, 6, EOS_ID], [5, EOS_ID, PAD_ID]]
