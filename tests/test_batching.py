"""Token-count batches: budget, coverage, determinism, and the split across ranks."""

from __future__ import annotations

import random

import pytest

from nmt.data.batching import Example, TokenBatchSampler, collate
from nmt.tokenizer import BOS_ID, EOS_ID, PAD_ID
from nmt.training.datamodule import ResumableDataLoader


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


@pytest.mark.parametrize("epoch", [0, 1, 2])
def test_rank_batches_form_global_batches_each_epoch(epoch):
    """Step k of rank r trains on global batch k * ranks + r, and every epoch has its own order."""
    lengths = random_lengths(301, seed=7)
    ranks = 2
    samplers = [TokenBatchSampler(lengths, 300, seed=3, num_replicas=ranks, rank=r) for r in range(ranks)]
    for sampler in samplers:
        sampler.set_epoch(epoch)
    global_batches = samplers[0].batches()
    per_rank = [list(sampler) for sampler in samplers]

    assert [sampler.batches() for sampler in samplers[1:]] == [global_batches] * (ranks - 1)
    for step, rank_batches in enumerate(zip(*per_rank)):
        assert list(rank_batches) == global_batches[step * ranks : (step + 1) * ranks]
    for batches in per_rank:
        for batch in batches:
            assert max(max(lengths[i]) for i in batch) * len(batch) <= 300
    seen = sorted(i for batches in per_rank for batch in batches for i in batch)
    assert seen == list(range(301))

    other_epoch = TokenBatchSampler(lengths, 300, seed=3, num_replicas=ranks, rank=0)
    other_epoch.set_epoch(epoch + 1)
    assert list(other_epoch) != per_rank[0]


def test_fewer_batches_than_ranks_split():
    lengths = [(3, 4), (5, 2), (4, 4)]  # one batch of 3 examples within the budget
    samplers = [TokenBatchSampler(lengths, 300, seed=0, num_replicas=2, rank=r) for r in range(2)]
    per_rank = [list(sampler) for sampler in samplers]
    assert [len(batches) for batches in per_rank] == [1, 1]
    assert sorted(i for batches in per_rank for batch in batches for i in batch) == [0, 1, 2]


def test_fewer_examples_than_ranks_rejected():
    sampler = TokenBatchSampler([(3, 4)], 300, num_replicas=2, rank=0)
    with pytest.raises(ValueError, match="use fewer devices"):
        list(sampler)


def test_rank_resumes_after_skipped_batches():
    lengths = random_lengths(200, seed=2)
    for rank in range(2):
        sampler = TokenBatchSampler(lengths, 300, seed=1, num_replicas=2, rank=rank)
        full = list(sampler)
        sampler.skip_next(3)
        assert list(sampler) == full[3:]
        assert list(sampler) == full  # the skip applies to one iteration only


def resumable_loader(lengths, epoch: list[int]) -> ResumableDataLoader:
    examples = [Example(i, [5] * (src - 1) + [EOS_ID], [6] * (tgt - 1) + [EOS_ID])
                for i, (src, tgt) in enumerate(lengths)]
    sampler = TokenBatchSampler(lengths, 300, seed=4)
    return ResumableDataLoader(examples, batch_sampler=sampler, collate_fn=collate, batches_done=lambda: 0,
                               epoch=lambda: epoch[0])


def batch_indices(loader) -> list[list[int]]:
    return [batch["index"].tolist() for batch in loader]


def test_loader_sets_sampler_epoch_on_iteration():
    lengths = random_lengths(200, seed=5)
    epoch = [0]
    loader = resumable_loader(lengths, epoch)
    first = batch_indices(loader)
    epoch[0] = 1
    second = batch_indices(loader)

    reference = TokenBatchSampler(lengths, 300, seed=4)
    assert first == list(reference)
    reference.set_epoch(1)
    assert second == list(reference)
    assert second != first


def test_loader_resumes_mid_epoch_not_after_epoch_end():
    lengths = random_lengths(200, seed=6)
    epoch = [1]
    loader = resumable_loader(lengths, epoch)
    full_epoch_1 = batch_indices(loader)

    # Saved after 4 batches of epoch 1 and resumed in epoch 1: the first 4 batches are skipped, once.
    loader.load_state_dict({"epoch": 1, "batches_done": 4})
    assert batch_indices(loader) == full_epoch_1[4:]
    assert batch_indices(loader) == full_epoch_1

    # Saved at the end of epoch 0 and resumed at the start of epoch 1: nothing is skipped.
    loader.load_state_dict({"epoch": 0, "batches_done": 12})
    assert batch_indices(loader) == full_epoch_1


def test_budget_below_longest_example_rejected():
    with pytest.raises(ValueError, match="max_tokens=10"):
        TokenBatchSampler([(5, 12)], max_tokens=10)


def test_collate_shifts_target_for_teacher_forcing():
    batch = collate([Example(0, [5, 6, EOS_ID], [7, 8, 9, EOS_ID]), Example(1, [5, EOS_ID], [7, EOS_ID])])
    assert batch["tgt_in"].tolist() == [[BOS_ID, 7, 8, 9], [BOS_ID, 7, PAD_ID, PAD_ID]]
    assert batch["tgt_out"].tolist() == [[7, 8, 9, EOS_ID], [7, EOS_ID, PAD_ID, PAD_ID]]
    assert batch["src"].tolist() == [[5, 6, EOS_ID], [5, EOS_ID, PAD_ID]]
