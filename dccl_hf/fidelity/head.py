"""What an LM head tied to the input embeddings sees of a compressed table's error, and how to weight its rows.

A tied table is read twice. The input side reads row i once per occurrence of token i (frequency weights,
`dccl_hf.fidelity.calibration`). The head reads every row at every position: with h_t the hidden state the head
receives, the logit error of row i is h_tᵀΔ_i, so over text the head's squared logit error of row i is
Δ_iᵀ H Δ_i with H = E_t[h_t h_tᵀ] (`head_second_moment`, one forward pass over calibration text). Through the
softmax, the loss weighs that error by the probability of token i, but a rarely predicted row whose error makes
a large positive logit becomes a spurious top token everywhere; so every row needs a floor weight, not only
frequent ones (`tied_head_weights`). Learning under the metric H with those weights (`dccl_hf.compress(...,
metric=H, weights=...)`) is what `resize_with_codes` does for a tied head by default.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import torch
from torch import nn

from dccl_hf.fidelity.calibration import weights_from_counts
from dccl_hf.fidelity.models import (
    Model,
    Tokenizer,
    frozen,
    model_device,
    padding_tokenizer,
    sample_texts,
    tokenized_batches,
)

logger = logging.getLogger(__name__)

#: Share of every row's weight that does not depend on its frequency (see `tied_head_weights`).
DEFAULT_FLOOR = 0.5


@torch.no_grad()
def head_second_moment(
    model: Model,
    tokenizer: Tokenizer,
    texts: Sequence[str],
    *,
    max_texts: int = 256,
    batch_size: int = 16,
    max_length: int = 128,
    seed: int = 0,
    progress: bool = True,
) -> torch.Tensor:
    """H = E_t[h_t h_tᵀ] (D, D) float64, scaled to trace D, of the hidden states `model`'s LM head receives.

    `max_texts` texts drawn at random (by `seed`) are read once (forward passes only); padded positions are left
    out. The error a compressed tied head adds to the logits of row i is, summed over positions, Δ_iᵀ H Δ_i.
    """
    if isinstance(texts, str) or not isinstance(texts, Sequence) or not texts:
        raise ValueError("texts must be a non-empty list of strings (calibration sentences).")
    if max_texts < 1 or batch_size < 1 or max_length < 2:
        raise ValueError(
            f"max_texts and batch_size must be ≥ 1 and max_length ≥ 2, got {max_texts}, {batch_size}, {max_length}."
        )
    head = getattr(model, "get_output_embeddings", lambda: None)()
    if not isinstance(head, nn.Module):
        raise ValueError(f"{type(model).__name__} has no LM head (get_output_embeddings() is None).")
    tokenizer = padding_tokenizer(tokenizer)
    captured: list[torch.Tensor] = []
    handle = head.register_forward_pre_hook(lambda module, args: captured.append(args[0]))
    selected = sample_texts(texts, max_texts, torch.Generator().manual_seed(seed))
    moment = torch.zeros((), dtype=torch.float64)
    tokens = 0
    try:
        with frozen(model):
            batches = tokenized_batches(
                tokenizer,
                selected,
                batch_size=batch_size,
                max_length=max_length,
                desc="head second moment",
                progress=progress,
            )
            for batch in batches:
                batch = batch.to(model_device(model))
                captured.clear()
                model(**batch)
                hidden = captured[-1][batch["attention_mask"].bool()].double()
                moment = moment + hidden.T @ hidden
                tokens += hidden.shape[0]
    finally:
        handle.remove()
    trace = float(moment.trace()) if tokens else 0.0
    if not trace > 0:
        raise ValueError("the LM head received only zero hidden states on these texts.")
    logger.info("head second moment from %d tokens of %d texts", tokens, len(selected))
    return moment * (moment.shape[0] / trace)


def tied_head_weights(counts: torch.Tensor, *, floor: float = DEFAULT_FLOOR) -> torch.Tensor:
    """Row weights (V,) float32, mean 1, for a table that is also a tied LM head: ``floor + (1 − floor) · f``.

    `f` are the frequency weights of the input side (`weights_from_counts(counts)`, mean 1); `floor` ∈ [0, 1] is
    the share every row gets whatever its count, because the head reads every row at every position (0: the
    input side only; 1: all rows alike).
    """
    if not 0 <= floor <= 1:
        raise ValueError(f"floor must be in [0, 1], got {floor}.")
    return (floor + (1 - floor) * weights_from_counts(counts)).to(torch.float32)
