"""Check the autograd gradient of every named weight against central finite differences.

For each element w_i of each weight in ``Transformer.named_weights()`` the finite-difference gradient is

    g_fd_i = (L(w_i + eps) - L(w_i - eps)) / (2 eps)

where L is the teacher-forced cross-entropy of ``nmt.loss.sequence_loss``, averaged over the non-padding
target tokens of a fixed batch and evaluated in the model's floating-point type. Per weight tensor, with
g_auto the autograd gradient and i running over the checked elements:

    max absolute error = max_i |g_auto_i - g_fd_i|
    relative error     = max_i |g_auto_i - g_fd_i| / max(max_i |g_auto_i|, max_i |g_fd_i|, tiny)

with tiny the smallest positive float64, so a tensor whose gradients are all zero has relative error 0.
Normalizing by the tensor's largest gradient, not element by element, keeps elements whose gradient is
close to zero from dominating the error.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch

from nmt.loss import sequence_loss
from nmt.model import ModelConfig, Transformer
from nmt.tokenizer import BOS_ID, EOS_ID, PAD_ID

log = logging.getLogger(__name__)

DEFAULT_EPS = 1e-5
DEFAULT_THRESHOLD = 1e-6
DEFAULT_VOCAB_SIZE = 24

# Sentences of the fixed batch as ids of ordinary pieces (4 and up), before EOS and padding are added.
# The lengths differ so that every row but the longest carries padding in the source and the target,
# and the id values are below DEFAULT_VOCAB_SIZE.
SOURCE_SENTENCES = ([5, 9, 14, 7, 11, 4], [12, 6, 8], [20, 17, 5, 22])
TARGET_SENTENCES = ([13, 4, 19, 8], [10, 23, 6, 15, 7, 21], [9, 16])


@dataclass(frozen=True)
class GradcheckRow:
    """The comparison of one weight tensor's autograd gradient with its finite-difference gradient."""

    name: str
    shape: tuple[int, ...]
    elements_checked: int
    max_abs_error: float
    max_abs_gradient: float
    rel_error: float
    passed: bool


def fixed_batch(vocab_size: int = DEFAULT_VOCAB_SIZE) -> dict[str, torch.Tensor]:
    """Return the fixed padded batch: ``src`` (B, N), ``tgt_in`` = [BOS] + y and ``tgt_out`` = y + [EOS] (B, M).

    Raises ValueError when ``vocab_size`` does not cover the ids of the fixed sentences.
    """
    largest_id = max(max(ids) for ids in SOURCE_SENTENCES + TARGET_SENTENCES)
    if vocab_size <= largest_id:
        raise ValueError(f"vocab_size={vocab_size} is too small for the fixed batch; use at least {largest_id + 1}")

    def pad(rows: list[list[int]]) -> torch.Tensor:
        length = max(len(row) for row in rows)
        return torch.tensor([row + [PAD_ID] * (length - len(row)) for row in rows], dtype=torch.long)

    return {
        "src": pad([list(ids) + [EOS_ID] for ids in SOURCE_SENTENCES]),
        "tgt_in": pad([[BOS_ID] + list(ids) for ids in TARGET_SENTENCES]),
        "tgt_out": pad([list(ids) + [EOS_ID] for ids in TARGET_SENTENCES]),
    }


def build_model(model_cfg: dict, vocab_size: int, seed: int, dtype: torch.dtype = torch.float64) -> Transformer:
    """Build the Transformer of ``model_cfg`` with all dropout set to 0, initialized from ``seed``, in ``dtype``.

    The model is left in training mode, so attention takes the explicit softmax path that training uses.
    """
    config = ModelConfig.from_dict(
        dict(model_cfg),
        src_vocab_size=vocab_size,
        tgt_vocab_size=vocab_size,
        pad_id=PAD_ID,
        dropout=0.0,
        attention_dropout=0.0,
        activation_dropout=0.0,
    )
    generator_state = torch.random.get_rng_state()
    try:
        torch.manual_seed(seed)
        model = Transformer(config)
    finally:
        torch.random.set_rng_state(generator_state)
    return model.to(dtype).train()


def batch_loss(model: Transformer, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Return the training loss of ``batch``: ``nmt.loss.sequence_loss`` without label smoothing."""
    loss, _ = sequence_loss(model, batch["src"], batch["tgt_in"], batch["tgt_out"], PAD_ID)
    return loss


def select_elements(numel: int, max_elements: int | None, seed: int) -> torch.Tensor:
    """Return the sorted flat indices to check: all ``numel`` of them, or ``max_elements`` drawn from ``seed``.

    The draw is uniform without replacement from a generator seeded with ``seed`` alone, so the same
    tensor size, limit and seed always give the same subset.
    """
    if max_elements is None or numel <= max_elements:
        return torch.arange(numel)
    generator = torch.Generator().manual_seed(seed)
    return torch.randperm(numel, generator=generator)[:max_elements].sort().values


def finite_difference_gradient(loss_fn, weight: torch.Tensor, indices: torch.Tensor, eps: float) -> torch.Tensor:
    """Return the central finite-difference gradient of ``loss_fn()`` at the flat ``indices`` of ``weight``.

    Each element is perturbed in place by +eps and -eps and restored to its exact original value afterwards.
    The result has one entry per index.
    """
    gradient = torch.zeros(len(indices), dtype=torch.float64)
    flat_weight = weight.data.view(-1)
    with torch.no_grad():
        for position, index in enumerate(indices.tolist()):
            original = flat_weight[index].item()
            flat_weight[index] = original + eps
            loss_plus = float(loss_fn())
            flat_weight[index] = original - eps
            loss_minus = float(loss_fn())
            flat_weight[index] = original
            gradient[position] = (loss_plus - loss_minus) / (2 * eps)
    return gradient


def compare_gradients(
    name: str, shape: tuple[int, ...], autograd: torch.Tensor, finite_difference: torch.Tensor, threshold: float
) -> GradcheckRow:
    """Compare the checked elements of two gradients of one weight tensor with the errors of the module docstring."""
    max_abs_error = float((autograd - finite_difference).abs().max())
    max_abs_gradient = max(float(autograd.abs().max()), float(finite_difference.abs().max()))
    rel_error = max_abs_error / max(max_abs_gradient, torch.finfo(torch.float64).tiny)
    return GradcheckRow(
        name=name,
        shape=tuple(shape),
        elements_checked=autograd.numel(),
        max_abs_error=max_abs_error,
        max_abs_gradient=max_abs_gradient,
        rel_error=rel_error,
        passed=rel_error < threshold,
    )


def check_gradients(
    model: Transformer,
    batch: dict[str, torch.Tensor],
    eps: float = DEFAULT_EPS,
    threshold: float = DEFAULT_THRESHOLD,
    names: list[str] | None = None,
    max_elements: int | None = None,
    seed: int = 0,
) -> list[GradcheckRow]:
    """Compare autograd and finite-difference gradients for the elements of each named weight.

    ``names`` limits the check to some keys of ``model.named_weights()`` (default: all of them, in model
    order). ``max_elements`` limits each tensor to that many elements chosen by ``select_elements`` with
    ``seed`` (default: every element). A row passes when its relative error is below ``threshold``. The
    model should be float64, because in float32 the rounding error of the loss divided by eps exceeds any
    useful threshold. The weights are unchanged afterwards and their ``.grad`` is reset to None.
    """
    weights = model.named_weights()
    if names is None:
        names = list(weights)
    unknown = [name for name in names if name not in weights]
    if unknown:
        raise ValueError(f"unknown weight names {unknown}; choose from model.named_weights(): {list(weights)}")

    model.zero_grad(set_to_none=True)
    loss = batch_loss(model, batch)
    loss.backward()
    log.debug("loss %.12f on %d real target tokens", float(loss.detach()), int(batch["tgt_out"].ne(PAD_ID).sum()))

    def loss_fn() -> torch.Tensor:
        return batch_loss(model, batch)

    rows = []
    for name in names:
        weight = weights[name]
        indices = select_elements(weight.numel(), max_elements, seed)
        autograd = weight.grad.detach().reshape(-1)[indices].to(torch.float64)
        finite_difference = finite_difference_gradient(loss_fn, weight, indices, eps)
        row = compare_gradients(name, tuple(weight.shape), autograd, finite_difference, threshold)
        log.debug("%s: max abs error %.3e, relative error %.3e", name, row.max_abs_error, row.rel_error)
        rows.append(row)
    model.zero_grad(set_to_none=True)
    return rows


def format_table(rows: list[GradcheckRow], threshold: float) -> str:
    """Format the rows as a markdown table, one line per weight tensor."""
    lines = [
        "| parameter | shape | elements checked | max abs gradient | max abs error | relative error | result |",
        "|---|---|---:|---:|---:|---:|---|",
    ]
    for row in rows:
        shape = " x ".join(str(size) for size in row.shape)
        result = "pass" if row.passed else f"FAIL (>= {threshold:.0e})"
        lines.append(
            f"| {row.name} | {shape} | {row.elements_checked} | {row.max_abs_gradient:.3e} "
            f"| {row.max_abs_error:.3e} | {row.rel_error:.3e} | {result} |"
        )
    return "\n".join(lines)


def run_gradcheck(
    model_cfg: dict,
    vocab_size: int = DEFAULT_VOCAB_SIZE,
    seed: int = 0,
    eps: float = DEFAULT_EPS,
    threshold: float = DEFAULT_THRESHOLD,
    max_elements: int | None = None,
) -> list[GradcheckRow]:
    """Build the float64 model of ``model_cfg`` from ``seed`` and check every named weight on ``fixed_batch``."""
    model = build_model(model_cfg, vocab_size, seed)
    batch = fixed_batch(vocab_size)
    rows = check_gradients(model, batch, eps=eps, threshold=threshold, max_elements=max_elements, seed=seed)
    failed = [row.name for row in rows if not row.passed]
    log.info(
        "gradient check of %d weights: largest relative error %.3e, %d failed%s",
        len(rows), max(row.rel_error for row in rows), len(failed), f" ({', '.join(failed)})" if failed else "",
    )
    return rows
