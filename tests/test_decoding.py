"""Greedy decoding and beam search on a small model trained for a few seconds to reverse symbol sequences.

The model is only partly trained, so its next-token distributions are spread out and end tokens compete
with longer continuations, which is where beam search bookkeeping goes wrong.
"""

from __future__ import annotations

import itertools
import random

import pytest
import torch

from nmt.data.batching import pad
from nmt.data.parallel import read_lines
from nmt.decoding import (
    beam_search,
    greedy_decode,
    greedy_search,
    greedy_steps,
    length_penalty,
    translate,
    translate_sentences,
)
from nmt.decoding.common import FORBIDDEN_OUTPUT_IDS, max_output_lengths, output_log_probs
from nmt.loss import sequence_loss
from nmt.model import ModelConfig, Transformer
from nmt.tokenizer import BOS_ID, EOS_ID, PAD_ID, Tokenizer, train_sentencepiece

VOCAB_SIZE = 12                      # 4 special ids and 8 symbols
SYMBOLS = range(4, VOCAB_SIZE)


def random_sources(count: int, seed: int, min_length: int = 2, max_length: int = 9) -> list[list[int]]:
    """Return symbol sequences of varied length, each ending with EOS."""
    rng = random.Random(seed)
    return [
        [rng.choice(SYMBOLS) for _ in range(rng.randint(min_length, max_length))] + [EOS_ID]
        for _ in range(count)
    ]


def new_model(seed: int) -> Transformer:
    torch.manual_seed(seed)
    config = ModelConfig(
        src_vocab_size=VOCAB_SIZE, tgt_vocab_size=VOCAB_SIZE, d_model=32, n_heads=2, n_encoder_layers=2,
        n_decoder_layers=2, d_ff=64, dropout=0.0, max_positions=32, norm_first=True,
    )
    return Transformer(config)


@pytest.fixture(scope="module")
def model() -> Transformer:
    """A model trained for 150 steps (about a second) to output the source symbols reversed."""
    model = new_model(seed=0)
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    model.train()
    for step in range(150):
        sources = random_sources(32, seed=1000 + step)
        targets = [src[:-1][::-1] + [EOS_ID] for src in sources]
        loss, _ = sequence_loss(
            model, pad(sources), pad([[BOS_ID] + t[:-1] for t in targets]), pad(targets), PAD_ID
        )
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return model.eval()


@pytest.fixture(scope="module")
def batch() -> tuple[torch.Tensor, torch.Tensor]:
    """A padded source batch of 12 sentences of 2 to 9 symbols, and each sentence's output limit."""
    src = pad(random_sources(12, seed=5))
    limits = max_output_lengths(src.ne(PAD_ID).sum(dim=1), 1.5, 3, max_positions=32)
    return src, limits


def unpadded(src: torch.Tensor, row: int) -> torch.Tensor:
    return src[row : row + 1, : int(src[row].ne(PAD_ID).sum())]


def tokens_of(nbest_lists) -> list[list[list[int]]]:
    return [[h.tokens for h in hypotheses] for hypotheses in nbest_lists]


@torch.inference_mode()
def force_decode_log_probs(model, src: torch.Tensor, outputs: list[list[int]]) -> list[float]:
    """Return log P(output | source row) by teacher forcing, with the searches' softmax over allowed ids."""
    memory, key_padding_mask = model.encode(src)
    decoder_input = pad([[BOS_ID] + output[:-1] for output in outputs])
    hidden, _ = model.decode(decoder_input, memory, key_padding_mask)
    log_probs = output_log_probs(model.output(hidden).flatten(0, 1)).view(*hidden.shape[:2], -1)
    targets = pad(outputs)
    picked = log_probs.gather(2, targets[:, :, None])[:, :, 0].masked_fill(targets.eq(PAD_ID), 0.0)
    return picked.sum(dim=1).tolist()


# Greedy: cached and textbook decoders


def test_cached_greedy_tokens_match_textbook(model, batch):
    src, limits = batch
    assert greedy_decode(model, src, limits, "cached") == greedy_decode(model, src, limits, "textbook")


def test_cached_step_logits_match_textbook(model, batch):
    src, limits = batch
    cached = list(greedy_steps(model, src, limits, "cached"))
    textbook = list(greedy_steps(model, src, limits, "textbook"))
    assert len(cached) == len(textbook)
    for step, (fast, reference) in enumerate(zip(cached, textbook), start=1):
        assert torch.equal(fast.tokens, reference.tokens), f"step {step}"
        assert torch.allclose(fast.logits, reference.logits, atol=1e-5, rtol=0), f"step {step}"


def test_greedy_respects_per_sentence_limits(model, batch):
    src, limits = batch
    for output, limit in zip(greedy_decode(model, src, limits), limits.tolist()):
        assert len(output) <= limit


def test_greedy_never_outputs_pad_or_bos(model, batch):
    src, limits = batch
    for output in greedy_decode(model, src, limits):
        assert not set(output) & set(FORBIDDEN_OUTPUT_IDS)


def test_greedy_search_scores_rescore(model, batch):
    src, limits = batch
    hypotheses = greedy_search(model, src, limits, alpha=0.6)
    rescored = force_decode_log_probs(model, src, [h.tokens for h in hypotheses])
    for hypothesis, log_prob in zip(hypotheses, rescored):
        assert hypothesis.log_prob == pytest.approx(log_prob, abs=1e-4)
        assert hypothesis.score == pytest.approx(log_prob / length_penalty(len(hypothesis.tokens), 0.6), abs=1e-4)


# Beam search against greedy decoding


@pytest.mark.parametrize("alpha", [0.0, 1.0])
def test_beam1_matches_greedy(model, batch, alpha):
    src, limits = batch
    greedy = greedy_search(model, src, limits, alpha=alpha)
    beam = beam_search(model, src, limits, beam_size=1, alpha=alpha)
    assert [h.tokens for h in greedy] == [hypotheses[0].tokens for hypotheses in beam]
    for greedy_hypothesis, hypotheses in zip(greedy, beam):
        assert hypotheses[0].score == pytest.approx(greedy_hypothesis.score, abs=1e-4)


def test_beam1_matches_greedy_untrained_model(batch):
    src, limits = batch
    untrained = new_model(seed=3).eval()
    greedy = greedy_decode(untrained, src, limits)
    beam = beam_search(untrained, src, limits, beam_size=1)
    assert greedy == [hypotheses[0].tokens for hypotheses in beam]


# Beam search: independence from the batch


def test_beam_batch_size_invariance(model, batch):
    src, limits = batch
    together = beam_search(model, src, limits, beam_size=4, n_best=3)
    for row in range(src.shape[0]):
        alone = beam_search(model, unpadded(src, row), limits[row : row + 1], beam_size=4, n_best=3)[0]
        assert [h.tokens for h in alone] == [h.tokens for h in together[row]], f"sentence {row}"
        assert [h.score for h in alone] == pytest.approx([h.score for h in together[row]], abs=1e-4)


def test_beam_order_invariance(model, batch):
    src, limits = batch
    order = list(range(src.shape[0]))
    random.Random(1).shuffle(order)
    forward = beam_search(model, src, limits, beam_size=4, n_best=3)
    shuffled = beam_search(model, src[order], limits[order], beam_size=4, n_best=3)
    assert tokens_of(shuffled) == [tokens_of(forward)[i] for i in order]


def test_beam_composition_invariance(model, batch):
    src, limits = batch
    short_row = int(src.ne(PAD_ID).sum(dim=1).argmin())
    long_sources = random_sources(3, seed=9, min_length=20, max_length=24)
    mixed = pad([unpadded(src, short_row)[0].tolist()] + long_sources)
    mixed_limits = max_output_lengths(mixed.ne(PAD_ID).sum(dim=1), 1.5, 3, max_positions=32)
    assert int(mixed_limits[0]) == int(limits[short_row])
    in_mixed_batch = beam_search(model, mixed, mixed_limits, beam_size=4, n_best=3)[0]
    alone = beam_search(model, unpadded(src, short_row), limits[short_row : short_row + 1], beam_size=4, n_best=3)[0]
    assert [h.tokens for h in in_mixed_batch] == [h.tokens for h in alone]


# Beam search: n-best lists, scores and end tokens


def test_nbest_sorted_by_score(model, batch):
    src, limits = batch
    for hypotheses in beam_search(model, src, limits, beam_size=5, n_best=5):
        scores = [h.score for h in hypotheses]
        assert scores == sorted(scores, reverse=True)


def test_nbest_has_n_distinct_hypotheses(model, batch):
    src, limits = batch
    for hypotheses in beam_search(model, src, limits, beam_size=5, n_best=5):
        assert len(hypotheses) == 5
        assert len({tuple(h.tokens) for h in hypotheses}) == 5


def test_beam_scores_match_rescoring(model, batch):
    src, limits = batch
    alpha = 0.8
    nbest_lists = beam_search(model, src, limits, beam_size=5, alpha=alpha, n_best=5)
    rows = [row for row, hypotheses in enumerate(nbest_lists) for _ in hypotheses]
    hypotheses = [h for nbest in nbest_lists for h in nbest]
    rescored = force_decode_log_probs(model, src[rows], [h.tokens for h in hypotheses])
    for hypothesis, log_prob in zip(hypotheses, rescored):
        assert hypothesis.log_prob == pytest.approx(log_prob, abs=1e-4)
        assert hypothesis.score == pytest.approx(log_prob / length_penalty(len(hypothesis.tokens), alpha), abs=1e-4)


@pytest.mark.parametrize("seed", [None, 3])
def test_at_most_one_eos_at_end(model, batch, seed):
    src, limits = batch
    decoder = model if seed is None else new_model(seed).eval()
    for hypotheses in beam_search(decoder, src, limits, beam_size=5, n_best=5):
        for hypothesis in hypotheses:
            assert hypothesis.tokens.count(EOS_ID) <= 1
            assert EOS_ID not in hypothesis.tokens[:-1]
            assert not set(hypothesis.tokens) & set(FORBIDDEN_OUTPUT_IDS)


def test_beam_respects_per_sentence_limits(batch):
    src, limits = batch
    untrained = new_model(seed=3).eval()
    nbest_lists = beam_search(untrained, src, limits, beam_size=3, n_best=3)
    for hypotheses, limit in zip(nbest_lists, limits.tolist()):
        assert all(len(h.tokens) <= limit for h in hypotheses)


def test_beam_limit_hypotheses_have_no_eos(batch):
    src, limits = batch
    untrained = new_model(seed=3).eval()
    at_limit = [
        h for hypotheses, limit in zip(beam_search(untrained, src, limits, 3, n_best=3), limits.tolist())
        for h in hypotheses if len(h.tokens) == limit
    ]
    assert at_limit, "expected some hypotheses to reach the output limit"
    assert any(h.tokens[-1] != EOS_ID for h in at_limit)


@pytest.mark.parametrize("alpha", [0.0, 1.0, 2.0])
def test_wide_beam_finds_exact_best(model, alpha):
    # With a beam wider than every candidate set, beam search is exhaustive, so the stopping rule alone
    # decides whether it returns the true best outputs under the length penalty.
    src = torch.tensor([[5, 9, 7, EOS_ID]])
    limit = 3
    allowed = [i for i in range(VOCAB_SIZE) if i not in FORBIDDEN_OUTPUT_IDS]
    continuing = [i for i in allowed if i != EOS_ID]
    outputs = []
    for length in range(limit):
        outputs += [list(prefix) + [EOS_ID] for prefix in itertools.product(continuing, repeat=length)]
    outputs += [list(prefix) for prefix in itertools.product(continuing, repeat=limit)]       # cut at the limit

    log_probs = force_decode_log_probs(model, src.expand(len(outputs), -1), outputs)
    scores = [lp / length_penalty(len(output), alpha) for output, lp in zip(outputs, log_probs)]
    ranked = sorted(range(len(outputs)), key=lambda i: -scores[i])[:3]

    found = beam_search(model, src, limit, beam_size=1000, alpha=alpha, n_best=3)[0]
    assert [h.tokens for h in found] == [outputs[i] for i in ranked]
    assert [h.score for h in found] == pytest.approx([scores[i] for i in ranked], abs=1e-4)


def test_beam_rejects_nbest_above_beam(model, batch):
    src, limits = batch
    with pytest.raises(ValueError, match="n_best"):
        beam_search(model, src, limits, beam_size=2, n_best=3)


# translate(): real sentences with a SentencePiece model


@pytest.fixture(scope="module")
def tokenizer(data_dir, tmp_path_factory) -> Tokenizer:
    lines = read_lines(data_dir / "train.en.gz")[:300] + read_lines(data_dir / "train.fr.gz")[:300]
    folder = tmp_path_factory.mktemp("spm")
    return Tokenizer(train_sentencepiece(lines, folder / "spm", vocab_size=500))


@pytest.fixture(scope="module")
def text_model(tokenizer) -> Transformer:
    torch.manual_seed(0)
    config = ModelConfig(
        src_vocab_size=tokenizer.vocab_size, tgt_vocab_size=tokenizer.vocab_size, d_model=32, n_heads=2,
        n_encoder_layers=1, n_decoder_layers=1, d_ff=64, dropout=0.0, max_positions=48,
    )
    return Transformer(config).eval()


@pytest.fixture(scope="module")
def sentences(data_dir) -> list[str]:
    return read_lines(data_dir / "test_2016_flickr.en.gz")[:10]


def test_translate_greedy_matches_translate_sentences(text_model, tokenizer, sentences):
    results = translate(text_model, tokenizer, sentences, beam_size=1, batch_size=4)
    assert [r[0].text for r in results] == translate_sentences(text_model, tokenizer, sentences, batch_size=4)


def test_translate_batch_size_invariance(text_model, tokenizer, sentences):
    small = translate(text_model, tokenizer, sentences, beam_size=3, n_best=2, batch_size=1)
    large = translate(text_model, tokenizer, sentences, beam_size=3, n_best=2, batch_size=10)
    assert [[t.tokens for t in r] for r in small] == [[t.tokens for t in r] for r in large]


def test_translate_empty_sentence_not_decoded(text_model, tokenizer):
    results = translate(text_model, tokenizer, ["A dog runs.", "", "   \t "], beam_size=2)
    assert len(results[0]) == 1
    assert results[1] == []
    assert results[2] == []


def test_translate_warns_on_truncation(text_model, tokenizer, caplog):
    long_sentence = " ".join(["dog"] * 100)
    with caplog.at_level("WARNING"):
        results = translate(text_model, tokenizer, ["A cat.", long_sentence], beam_size=2)
    assert len(results[1]) == 1
    assert "line 2:" in caplog.text
    assert "source positions" in caplog.text
