"""Checks of the model's math: a reference implementation, masks, padding, loss, update rule and gradients.

Most checks run a small model in float64, where differences that should be zero stay below 1e-12.
"""

from __future__ import annotations

from pathlib import Path

import lightning as L
import pytest
import torch
import torch.nn.functional as F
from omegaconf import OmegaConf
from torch import nn

from nmt.config import compose
from nmt.data.batching import pad
from nmt.decoding import greedy_decode
from nmt.gradcheck import (
    DEFAULT_EPS,
    DEFAULT_THRESHOLD,
    DEFAULT_VOCAB_SIZE,
    build_model,
    check_gradients,
    compare_gradients,
    fixed_batch,
    run_gradcheck,
)
import nmt.loss
from nmt.loss import sequence_loss, token_cross_entropy
from nmt.model import ModelConfig, Transformer
from nmt.model.attention import MultiHeadAttention, causal_mask, padding_mask_to_attn_mask
from nmt.model.dropout import Dropout
from nmt.tokenizer import BOS_ID, EOS_ID, PAD_ID
from nmt.training.module import TranslationModule

CONFIG_DIR = Path(__file__).resolve().parents[1] / "conf"
VOCAB_SIZE = 24


def make_model(
    dtype: torch.dtype = torch.float64, tie_embeddings: bool = False, norm_first: bool = False, seed: int = 0
) -> Transformer:
    """Return a 2+2-layer, 2-head model with dropout 0 in ``dtype``, in training mode."""
    config = ModelConfig(
        src_vocab_size=VOCAB_SIZE,
        tgt_vocab_size=VOCAB_SIZE,
        d_model=16,
        n_heads=2,
        n_encoder_layers=2,
        n_decoder_layers=2,
        d_ff=32,
        dropout=0.0,
        norm_first=norm_first,
        tie_embeddings=tie_embeddings,
        max_positions=64,
        pad_id=PAD_ID,
    )
    torch.manual_seed(seed)
    return Transformer(config).to(dtype).train()


def make_batch() -> dict[str, torch.Tensor]:
    """Return a padded batch of three sentence pairs of different lengths (ids below VOCAB_SIZE)."""
    return fixed_batch(VOCAB_SIZE)


def append_padding(ids: torch.Tensor, extra: int) -> torch.Tensor:
    return torch.cat([ids, torch.full((ids.shape[0], extra), PAD_ID, dtype=ids.dtype)], dim=1)


def real_positions(batch: dict[str, torch.Tensor]) -> torch.Tensor:
    return batch["tgt_out"].ne(PAD_ID)


# Reference equivalence with torch.nn.Transformer


def copy_attention(ours: MultiHeadAttention, reference: nn.MultiheadAttention) -> None:
    # nn.MultiheadAttention computes x @ weight.T, and our weights are applied as x @ W, so weight = W.T.
    reference.in_proj_weight.copy_(torch.cat([ours.W_Q.T, ours.W_K.T, ours.W_V.T], dim=0))
    reference.in_proj_bias.zero_()
    reference.out_proj.weight.copy_(ours.W_O.T)
    reference.out_proj.bias.zero_()


def copy_feed_forward(ours, reference_layer) -> None:
    reference_layer.linear1.weight.copy_(ours.W_1.T)
    reference_layer.linear1.bias.copy_(ours.b_1)
    reference_layer.linear2.weight.copy_(ours.W_2.T)
    reference_layer.linear2.bias.copy_(ours.b_2)


def copy_norm(ours: nn.LayerNorm, reference: nn.LayerNorm) -> None:
    reference.weight.copy_(ours.weight)
    reference.bias.copy_(ours.bias)


def make_reference(model: Transformer) -> nn.Transformer:
    """Return an ``nn.Transformer`` holding ``model``'s encoder and decoder weights, in evaluation mode."""
    c = model.config
    reference = nn.Transformer(
        d_model=c.d_model,
        nhead=c.n_heads,
        num_encoder_layers=c.n_encoder_layers,
        num_decoder_layers=c.n_decoder_layers,
        dim_feedforward=c.d_ff,
        dropout=0.0,
        activation="relu",
        batch_first=True,
        norm_first=c.norm_first,
        dtype=model.positions.dtype,
    )
    with torch.no_grad():
        for ours, theirs in zip(model.encoder_layers, reference.encoder.layers):
            copy_attention(ours.self_attn, theirs.self_attn)
            copy_feed_forward(ours.ffn, theirs)
            copy_norm(ours.norm1, theirs.norm1)
            copy_norm(ours.norm2, theirs.norm2)
        for ours, theirs in zip(model.decoder_layers, reference.decoder.layers):
            copy_attention(ours.self_attn, theirs.self_attn)
            copy_attention(ours.cross_attn, theirs.multihead_attn)
            copy_feed_forward(ours.ffn, theirs)
            copy_norm(ours.norm1, theirs.norm1)
            copy_norm(ours.norm2, theirs.norm2)
            copy_norm(ours.norm3, theirs.norm3)
        if c.norm_first:
            copy_norm(model.encoder_norm, reference.encoder.norm)
            copy_norm(model.decoder_norm, reference.decoder.norm)
    if not c.norm_first:
        # nn.Transformer adds a final LayerNorm after each stack even in post-LN, but our post-LN model has none.
        reference.encoder.norm = nn.Identity()
        reference.decoder.norm = nn.Identity()
    return reference.eval()


def run_reference(model: Transformer, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Return (encoder output, logits) of the reference fed with our embeddings and our output layer."""
    reference = make_reference(model)
    src, tgt_in = batch["src"], batch["tgt_in"]
    src_padding = src.eq(PAD_ID)
    # nn.Transformer masks where the boolean mask is True, the opposite of our attention masks.
    future = ~causal_mask(tgt_in.shape[1])
    with torch.no_grad():
        memory = reference.encoder(model.embed(model.src_embed, src), src_key_padding_mask=src_padding)
        hidden = reference.decoder(
            model.embed(model.tgt_embed, tgt_in), memory, tgt_mask=future, memory_key_padding_mask=src_padding
        )
        return memory, model.output(hidden)


@pytest.mark.parametrize("dtype, tolerance", [(torch.float32, 1e-5), (torch.float64, 1e-10)])
@pytest.mark.parametrize("norm_first", [False, True], ids=["post_ln", "pre_ln"])
def test_reference_transformer_matches(dtype, tolerance, norm_first):
    model = make_model(dtype, norm_first=norm_first).eval()
    batch = make_batch()
    reference_memory, reference_logits = run_reference(model, batch)
    with torch.no_grad():
        memory, _ = model.encode(batch["src"])
        logits = model(batch["src"], batch["tgt_in"])

    # The reference may return other values (or zeros) at padded query positions, so compare real ones.
    real_source = batch["src"].ne(PAD_ID)
    real_target = real_positions(batch)
    torch.testing.assert_close(memory[real_source], reference_memory[real_source], atol=tolerance, rtol=0)
    torch.testing.assert_close(logits[real_target], reference_logits[real_target], atol=tolerance, rtol=0)


# Causal mask


def test_causal_mask_every_value():
    for length in range(1, 8):
        mask = causal_mask(length)
        assert mask.dtype == torch.bool
        assert mask.shape == (length, length)
        for i in range(length):
            for j in range(length):
                assert bool(mask[i, j]) == (j <= i), f"causal_mask({length})[{i}, {j}]"


@pytest.mark.parametrize("mode", ["train", "eval"])
def test_future_token_leaves_past_logits(mode):
    model = make_model()
    model.train(mode == "train")
    batch = make_batch()
    src, tgt_in = batch["src"], batch["tgt_in"]
    with torch.no_grad():
        logits = model(src, tgt_in)
        for k in range(1, tgt_in.shape[1]):
            changed = tgt_in.clone()
            changed[:, k] = (changed[:, k] + 5) % (VOCAB_SIZE - 4) + 4   # another ordinary piece
            changed_logits = model(src, changed)

            torch.testing.assert_close(changed_logits[:, :k], logits[:, :k], atol=1e-12, rtol=0)
            difference = (changed_logits[:, k] - logits[:, k]).abs().amax(dim=-1)
            assert bool((difference > 1e-6).all()), f"position {k} ignores its own input token"


# Padding


@pytest.mark.parametrize("tie_embeddings", [False, True], ids=["untied", "tied"])
@pytest.mark.parametrize("where", ["src", "tgt", "both"])
def test_extra_padding_leaves_outputs(tie_embeddings, where):
    model = make_model(tie_embeddings=tie_embeddings)
    batch = make_batch()
    src, tgt_in = batch["src"], batch["tgt_in"]
    padded_src = append_padding(src, 3) if where in ("src", "both") else src
    padded_tgt_in = append_padding(tgt_in, 4) if where in ("tgt", "both") else tgt_in
    real = real_positions(batch)
    with torch.no_grad():
        logits = model(src, tgt_in)
        padded_logits = model(padded_src, padded_tgt_in)[:, : tgt_in.shape[1]]
    torch.testing.assert_close(padded_logits[real], logits[real], atol=1e-12, rtol=0)


def decoder_states(model: Transformer, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Return (encoder output, decoder output before the output layer)."""
    memory, src_key_padding_mask = model.encode(batch["src"])
    hidden, _ = model.decode(batch["tgt_in"], memory, src_key_padding_mask)
    return memory, hidden


@pytest.mark.parametrize("tie_embeddings", [False, True], ids=["untied", "tied"])
def test_padding_embedding_row_ignored(tie_embeddings):
    model = make_model(tie_embeddings=tie_embeddings)
    batch = make_batch()
    real_source = batch["src"].ne(PAD_ID)
    real = real_positions(batch)
    with torch.no_grad():
        memory, hidden = decoder_states(model, batch)
        logits = model.output(hidden)
        for embedding in {id(model.src_embed): model.src_embed, id(model.tgt_embed): model.tgt_embed}.values():
            embedding.weight[PAD_ID] = torch.linspace(-3.0, 5.0, model.config.d_model, dtype=torch.float64)
        changed_memory, changed_hidden = decoder_states(model, batch)
        changed_logits = model.output(changed_hidden)

    torch.testing.assert_close(changed_memory[real_source], memory[real_source], atol=1e-12, rtol=0)
    torch.testing.assert_close(changed_hidden[real], hidden[real], atol=1e-12, rtol=0)
    # With tied embeddings the padding row is also W_out's column for the <pad> logit, so only the
    # logits of the other tokens must stay the same.
    other_tokens = torch.arange(VOCAB_SIZE) != PAD_ID
    torch.testing.assert_close(changed_logits[real][:, other_tokens], logits[real][:, other_tokens], atol=1e-12, rtol=0)
    if not tie_embeddings:
        torch.testing.assert_close(changed_logits[real], logits[real], atol=1e-12, rtol=0)


@pytest.mark.parametrize("mode", ["train", "eval"])
def test_padded_keys_get_zero_weight(mode):
    torch.manual_seed(0)
    attention = MultiHeadAttention(d_model=16, n_heads=2).double().train(mode == "train")
    x = torch.randn(3, 6, 16, dtype=torch.float64)
    key_padding_mask = torch.tensor([[False] * 6, [False] * 4 + [True] * 2, [False] + [True] * 5])
    _, weights = attention(x, attn_mask=padding_mask_to_attn_mask(key_padding_mask), need_weights=True)

    assert weights.shape == (3, 2, 6, 6)
    padded_keys = key_padding_mask[:, None, None, :].expand_as(weights)
    assert bool((weights[padded_keys] == 0).all())
    assert bool((weights[~padded_keys] > 0).all())
    torch.testing.assert_close(weights.sum(dim=-1), torch.ones(3, 2, 6, dtype=torch.float64))


def test_cross_attention_skips_padded_source():
    model = make_model().eval()
    batch = make_batch()
    with torch.no_grad():
        memory, src_key_padding_mask = model.encode(batch["src"])
        _, cross_weights = model.decode(batch["tgt_in"], memory, src_key_padding_mask, need_weights=True)
    assert len(cross_weights) == model.config.n_decoder_layers
    for weights in cross_weights:
        padded_keys = src_key_padding_mask[:, None, None, :].expand_as(weights)
        assert bool((weights[padded_keys] == 0).all())


def empty_source_batch() -> dict[str, torch.Tensor]:
    """Return a batch whose middle row has an empty source: EOS, then padding."""
    sources = [[5, 9, 14, 7, EOS_ID], [EOS_ID], [12, 6, EOS_ID]]
    targets = [[13, 4, 19], [10, 23, 6, 15], [9]]
    return {
        "src": pad(sources),
        "tgt_in": pad([[BOS_ID] + target for target in targets]),
        "tgt_out": pad([target + [EOS_ID] for target in targets]),
    }


def trim_row(batch: dict[str, torch.Tensor], row: int) -> dict[str, torch.Tensor]:
    """Return row ``row`` of ``batch`` as a batch of one, without its padding columns."""
    src = batch["src"][row : row + 1]
    tgt_in = batch["tgt_in"][row : row + 1]
    tgt_out = batch["tgt_out"][row : row + 1]
    src_length = int(src.ne(PAD_ID).sum())
    tgt_length = int(tgt_out.ne(PAD_ID).sum())
    return {"src": src[:, :src_length], "tgt_in": tgt_in[:, :tgt_length], "tgt_out": tgt_out[:, :tgt_length]}


@pytest.mark.parametrize("mode", ["train", "eval"])
def test_empty_source_finite_outputs(mode):
    model = make_model()
    model.train(mode == "train")
    batch = empty_source_batch()
    with torch.no_grad():
        memory, _ = model.encode(batch["src"])
        logits = model(batch["src"], batch["tgt_in"])
    assert bool(torch.isfinite(memory).all())
    assert bool(torch.isfinite(logits).all())


def test_empty_source_finite_loss_and_gradients():
    model = make_model()
    batch = empty_source_batch()
    loss, n_tokens = sequence_loss(model, batch["src"], batch["tgt_in"], batch["tgt_out"], PAD_ID, 0.1)
    loss.backward()

    assert n_tokens == 11
    assert bool(torch.isfinite(loss))
    for name, parameter in model.named_parameters():
        assert parameter.grad is not None, name
        assert bool(torch.isfinite(parameter.grad).all()), name


@pytest.mark.parametrize("mode", ["train", "eval"])
def test_empty_source_other_rows_match_alone(mode):
    model = make_model()
    model.train(mode == "train")
    batch = empty_source_batch()
    with torch.no_grad():
        logits = model(batch["src"], batch["tgt_in"])
        for row in (0, 2):
            alone = trim_row(batch, row)
            alone_logits = model(alone["src"], alone["tgt_in"])[0]
            length = alone_logits.shape[0]
            torch.testing.assert_close(logits[row, :length], alone_logits, atol=1e-12, rtol=0)


@pytest.mark.parametrize("method", ["cached", "textbook"])
def test_empty_source_greedy_matches_alone(method):
    model = make_model().eval()
    batch = empty_source_batch()
    max_len = 8
    outputs = greedy_decode(model, batch["src"], max_len, method)

    assert len(outputs) == 3
    assert len(outputs[1]) >= 1
    for row in (0, 2):
        alone = trim_row(batch, row)
        assert outputs[row] == greedy_decode(model, alone["src"], max_len, method)[0], f"row {row}"


# Training and evaluation paths


@pytest.mark.parametrize("dtype, tolerance", [(torch.float32, 1e-6), (torch.float64, 1e-12)])
def test_train_eval_outputs_match(dtype, tolerance):
    model = make_model(dtype)
    batch = make_batch()
    real = real_positions(batch)
    with torch.no_grad():
        train_logits = model(batch["src"], batch["tgt_in"])
    model.eval()
    with torch.inference_mode():
        eval_logits = model(batch["src"], batch["tgt_in"])
    torch.testing.assert_close(eval_logits[real], train_logits[real], atol=tolerance, rtol=0)


# Loss


def hand_loss(logits: torch.Tensor, tgt_out: torch.Tensor, label_smoothing: float = 0.0) -> torch.Tensor:
    """Return -(1/T) sum_t [(1 - eps) log p_t(y_t) + (eps / V) sum_v log p_t(v)] over the T real tokens."""
    real = tgt_out.ne(PAD_ID)
    log_probs = torch.log_softmax(logits.double(), dim=-1)
    correct = log_probs.gather(-1, tgt_out[..., None]).squeeze(-1)[real]
    mean_log_prob = log_probs.sum(dim=-1)[real] / logits.shape[-1]
    per_token = (1 - label_smoothing) * correct + label_smoothing * mean_log_prob
    return -per_token.sum() / real.sum()


@pytest.mark.parametrize("label_smoothing", [0.0, 0.1, 0.3])
def test_loss_matches_hand_formula(label_smoothing):
    model = make_model()
    batch = make_batch()
    with torch.no_grad():
        loss, n_tokens = sequence_loss(
            model, batch["src"], batch["tgt_in"], batch["tgt_out"], PAD_ID, label_smoothing
        )
        expected = hand_loss(model(batch["src"], batch["tgt_in"]), batch["tgt_out"], label_smoothing)

    assert n_tokens == int(real_positions(batch).sum())
    # The model and its loss are float32, hence the float32 tolerance.
    torch.testing.assert_close(loss.double(), expected, atol=1e-6, rtol=1e-6)


def test_sequence_loss_keeps_float64():
    model = make_model(torch.float64)
    batch = make_batch()
    with torch.no_grad():
        loss, _ = sequence_loss(model, batch["src"], batch["tgt_in"], batch["tgt_out"], PAD_ID)
    assert loss.dtype == torch.float64


@pytest.mark.parametrize("label_smoothing", [0.0, 0.1])
def test_padding_logits_get_zero_gradient(label_smoothing):
    model = make_model()
    batch = make_batch()
    with torch.no_grad():
        memory, src_key_padding_mask = model.encode(batch["src"])
        hidden, _ = model.decode(batch["tgt_in"], memory, src_key_padding_mask)
    logits = model.output(hidden).detach().requires_grad_()          # (B, M, V), padding positions included
    real = real_positions(batch)
    loss = token_cross_entropy(logits[real], batch["tgt_out"][real], label_smoothing)
    loss.backward()

    assert bool((logits.grad[~real] == 0).all())
    assert bool((logits.grad[real].abs().sum(dim=-1) > 0).all())


@pytest.mark.parametrize("label_smoothing", [0.0, 0.1])
def test_ignore_index_loss_matches(label_smoothing):
    model = make_model()
    batch = make_batch()
    with torch.no_grad():
        loss, _ = sequence_loss(
            model, batch["src"], batch["tgt_in"], batch["tgt_out"], PAD_ID, label_smoothing
        )
        logits = model(batch["src"], batch["tgt_in"])
    full = F.cross_entropy(
        logits.flatten(0, 1), batch["tgt_out"].flatten(), ignore_index=PAD_ID, label_smoothing=label_smoothing
    )
    torch.testing.assert_close(loss.double(), full, atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("label_smoothing", [0.0, 0.1])
def test_extra_padding_leaves_loss(label_smoothing):
    model = make_model()
    batch = make_batch()
    with torch.no_grad():
        loss, n_tokens = sequence_loss(
            model, batch["src"], batch["tgt_in"], batch["tgt_out"], PAD_ID, label_smoothing
        )
        padded_loss, padded_tokens = sequence_loss(
            model,
            append_padding(batch["src"], 3),
            append_padding(batch["tgt_in"], 2),
            append_padding(batch["tgt_out"], 2),
            PAD_ID,
            label_smoothing,
        )
    assert padded_tokens == n_tokens
    torch.testing.assert_close(padded_loss, loss, atol=1e-6, rtol=0)


@pytest.mark.parametrize("label_smoothing", [0.0, 0.1])
def test_chunked_loss_matches_whole(monkeypatch, label_smoothing):
    """Loss and every gradient are the same whether the output layer runs in one chunk or in ragged ones."""
    batch = make_batch()
    n_real = int(real_positions(batch).sum())

    def loss_and_grads(chunk_rows: int):
        monkeypatch.setattr(nmt.loss, "LOSS_CHUNK_ELEMENTS", chunk_rows * VOCAB_SIZE)
        model = make_model(tie_embeddings=True)
        loss, n_tokens = sequence_loss(
            model, batch["src"], batch["tgt_in"], batch["tgt_out"], PAD_ID, label_smoothing
        )
        loss.backward()
        return loss, n_tokens, {name: p.grad.clone() for name, p in model.named_parameters()}

    whole_loss, whole_tokens, whole_grads = loss_and_grads(n_real)
    chunked_loss, chunked_tokens, chunked_grads = loss_and_grads(4)     # n_real is not a multiple of 4

    assert n_real % 4 != 0
    assert whole_tokens == n_real
    assert chunked_tokens == n_real
    torch.testing.assert_close(chunked_loss, whole_loss, atol=1e-12, rtol=1e-12)
    for name, grad in whole_grads.items():
        torch.testing.assert_close(chunked_grads[name], grad, atol=1e-12, rtol=1e-10, msg=name)


def test_sequence_loss_without_real_tokens_is_zero():
    model = make_model()
    batch = make_batch()
    all_padding = torch.full_like(batch["tgt_out"], PAD_ID)
    loss, n_tokens = sequence_loss(model, batch["src"], batch["tgt_in"], all_padding, PAD_ID, 0.1)
    assert n_tokens == 0
    assert float(loss) == 0.0


# Dropout


@pytest.mark.parametrize("p", [0.1, 0.3, 0.5])
def test_dropout_keeps_expected_fraction_and_scale(p):
    torch.manual_seed(0)
    x = torch.rand(1000, 1000) + 0.5                                   # no zeros of its own
    y = Dropout(p).train()(x)

    kept_mask = y != 0
    # Binomial standard deviation of the kept fraction over 1e6 elements is below 5e-4.
    assert abs(float(kept_mask.float().mean()) - (1 - p)) < 3e-3
    torch.testing.assert_close(y[kept_mask], x[kept_mask] / (1 - p), atol=0, rtol=1e-6)
    assert abs(float(y.mean()) / float(x.mean()) - 1) < 5e-3


def test_dropout_gradient_is_mask_times_scale():
    torch.manual_seed(1)
    x = torch.randn(50, 40, dtype=torch.float64, requires_grad=True)
    y = Dropout(0.3).train()(x)
    y.sum().backward()

    expected = (y.detach() != 0).double() / 0.7
    torch.testing.assert_close(x.grad, expected)


def test_dropout_eval_mode_is_identity():
    x = torch.randn(8, 16)
    assert Dropout(0.3).eval()(x) is x


def test_dropout_zero_is_identity():
    x = torch.randn(8, 16)
    assert Dropout(0.0).train()(x) is x


def test_dropout_follows_the_torch_seed():
    x = torch.randn(64, 32)
    torch.manual_seed(5)
    first = Dropout(0.3).train()(x)
    torch.manual_seed(5)
    second = Dropout(0.3).train()(x)
    assert torch.equal(first, second)


def test_dropout_of_bf16_is_float32():
    y = Dropout(0.3).train()(torch.ones(4, 4, dtype=torch.bfloat16))
    assert y.dtype == torch.float32
    kept_values = y[y != 0]
    torch.testing.assert_close(kept_values, torch.full_like(kept_values, 1 / 0.7))   # float32 scale, not bf16's 1.4297


@pytest.mark.parametrize("p", [-0.1, 1.0, 1.5])
def test_dropout_rejects_bad_probability(p):
    with pytest.raises(ValueError, match=f"invalid dropout probability {p}: use a value in"):
        Dropout(p)


# Update rule


def sgd_module():
    cfg = compose(["optim=sgd", "model=seed_minimal", "trainer.precision=32-true"], CONFIG_DIR)
    torch.manual_seed(0)
    module = TranslationModule(OmegaConf.to_container(cfg, resolve=True), VOCAB_SIZE, VOCAB_SIZE)
    return module, cfg


def test_sgd_config_is_plain():
    _, cfg = sgd_module()
    assert cfg.optim.name == "sgd"
    assert cfg.optim.scheduler == "constant"
    assert cfg.optim.grad_clip is None


def test_sgd_step_is_minus_lr_grad():
    module, cfg = sgd_module()
    configured = module.configure_optimizers()
    optimizer = configured["optimizer"]
    scheduler = configured["lr_scheduler"]["scheduler"]
    lr = cfg.optim.lr
    batch = make_batch()

    assert isinstance(optimizer, torch.optim.SGD)
    assert len(optimizer.param_groups) == 1
    group = optimizer.param_groups[0]
    assert group["lr"] == lr
    assert group["momentum"] == 0.0
    assert group["weight_decay"] == 0.0
    assert {id(p) for p in group["params"]} == {id(p) for p in module.parameters()}

    model = module.model
    loss, _ = sequence_loss(model, batch["src"], batch["tgt_in"], batch["tgt_out"], PAD_ID)
    loss.backward()
    before = {name: (p.detach().clone(), p.grad.detach().clone()) for name, p in model.named_parameters()}
    optimizer.step()
    scheduler.step()

    assert optimizer.param_groups[0]["lr"] == lr          # the constant schedule keeps lr
    weights = {id(w) for w in model.named_weights().values()}
    named_parameters = dict(model.named_parameters())
    assert weights <= {id(p) for p in named_parameters.values()}
    for name, parameter in named_parameters.items():
        old, grad = before[name]
        assert bool(grad.abs().sum() > 0), f"{name} got no gradient"
        # Without momentum or weight decay, torch.optim.SGD (torch 2.13) runs param.add_(grad, alpha=-lr),
        # so the same float32 operation gives bit-identical results. old - lr * grad rounds twice, so it
        # may differ by one rounding of the larger term.
        assert torch.equal(parameter.detach(), torch.add(old, grad, alpha=-lr)), name
        two_roundings = torch.finfo(torch.float32).eps * (old.abs() + (lr * grad).abs())
        assert bool(((parameter.detach() - (old - lr * grad)).abs() <= two_roundings).all()), name


class CaptureBeforeStep(L.Callback):
    """Keep a copy of every parameter and its gradient just before each optimizer step."""

    def __init__(self) -> None:
        self.snapshots: list[dict[str, tuple[torch.Tensor, torch.Tensor]]] = []

    def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
        self.snapshots.append(
            {name: (p.detach().clone(), p.grad.detach().clone()) for name, p in pl_module.model.named_parameters()}
        )


def test_lightning_sgd_step_is_minus_lr_grad(tmp_path):
    module, cfg = sgd_module()
    capture = CaptureBeforeStep()
    batch = make_batch()
    loader = torch.utils.data.DataLoader([batch], batch_size=None)
    trainer = L.Trainer(
        accelerator="cpu", devices=1, max_steps=1, precision=cfg.trainer.precision,
        gradient_clip_val=cfg.optim.grad_clip, logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, callbacks=[capture],
        default_root_dir=str(tmp_path), limit_val_batches=0,
    )
    trainer.fit(module, train_dataloaders=loader)

    assert len(capture.snapshots) == 1
    lr = cfg.optim.lr
    for name, parameter in module.model.named_parameters():
        old, grad = capture.snapshots[0][name]
        assert torch.equal(parameter.detach(), torch.add(old, grad, alpha=-lr)), name


# Gradient check


def check_seed_minimal(max_elements: int | None) -> None:
    cfg = compose(["model=seed_minimal"], CONFIG_DIR)
    rows = run_gradcheck(cfg.model, seed=cfg.seed, max_elements=max_elements)
    expected_names = list(build_model(cfg.model, DEFAULT_VOCAB_SIZE, cfg.seed).named_weights())

    assert [row.name for row in rows] == expected_names
    assert len(rows) == 22
    for row in rows:
        numel = torch.Size(row.shape).numel()
        assert row.elements_checked == (numel if max_elements is None else min(numel, max_elements)), row.name
        assert row.passed, f"{row.name}: relative error {row.rel_error:.3e}"


def test_gradcheck_sampled_elements_pass():
    check_seed_minimal(max_elements=48)


@pytest.mark.slow
def test_gradcheck_every_element_passes():
    # About 11,000 forward passes: some 10 s on one CPU core.
    check_seed_minimal(max_elements=None)


def test_gradcheck_catches_wrong_gradient():
    autograd = torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64)
    row = compare_gradients("w", (3,), autograd, autograd * (1 + 1e-4), DEFAULT_THRESHOLD)
    assert not row.passed
    # The denominator is the larger gradient, |g| * (1 + 1e-4).
    assert row.rel_error == pytest.approx(1e-4 / (1 + 1e-4), rel=1e-9)


def test_gradcheck_restores_weights():
    model = make_model()
    batch = make_batch()
    before = {name: weight.detach().clone() for name, weight in model.named_weights().items()}
    rows = check_gradients(model, batch, names=["decoder.1.ffn.b_2", "output.b_out"])

    assert [row.name for row in rows] == ["decoder.1.ffn.b_2", "output.b_out"]
    assert all(row.passed for row in rows)
    for name, weight in model.named_weights().items():
        assert torch.equal(weight, before[name]), name
        assert weight.grad is None, name


def test_gradcheck_command_defaults_match():
    from nmt.commands import gradcheck as command

    assert command.DEFAULT_EPS == DEFAULT_EPS
    assert command.DEFAULT_THRESHOLD == DEFAULT_THRESHOLD
    assert command.DEFAULT_VOCAB_SIZE == DEFAULT_VOCAB_SIZE
