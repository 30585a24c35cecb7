"""How much a model's outputs move per direction of its input embeddings: the metric to compress them under.

For a small change δ of one input embedding, the model's output changes by J·δ, so the output error a compressed
table causes is, to first order, Σ δᵀ JᵀJ δ over token occurrences. `embedding_sensitivity` estimates the average
G = E[JᵀJ] on calibration text with random projections (for v ~ N(0, I), E[(Jᵀv)(Jᵀv)ᵀ] = JᵀJ, and Jᵀv is one
backward pass), and `dccl_hf.compress(..., metric=G)` then spends the bits on the directions the model reads: a
LayerNorm after the embeddings ignores the mean direction entirely, and amplified dimensions count more.

On all-MiniLM-L6-v2 at 128 bits/row, compressing under G estimated from 256 sentences raised the held-out
sentence-embedding cosine from 0.971 to 0.980 (frequency-weighted rows in both cases).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import torch
from torch import nn

from dccl_hf.fidelity.distill import LOSSES, Loss
from dccl_hf.fidelity.models import (
    Model,
    Tokenizer,
    frozen,
    mean_pool,
    model_outputs,
    padding_tokenizer,
    sample_texts,
    tokenized_batches,
)

logger = logging.getLogger(__name__)


@torch.enable_grad()  # backward passes are needed even when called under torch.no_grad()
def embedding_sensitivity(
    model: Model,
    tokenizer: Tokenizer,
    texts: Sequence[str],
    *,
    output: Loss = "hidden",
    max_texts: int = 256,
    probes: int = 4,
    batch_size: int = 32,
    max_length: int = 128,
    seed: int = 0,
    progress: bool = True,
) -> torch.Tensor:
    """E[JᵀJ] (D, D) float64, scaled to trace D: the sensitivity of `model`'s `output` to its input embeddings.

    `output` is what the model is used for: ``"hidden"`` the final hidden state of every token (any model),
    ``"pooled"`` the normalised mean of the final hidden states (sentence-embedding models), ``"logits"`` the
    logits (models with an LM head). `max_texts` texts drawn at random (by `seed`) are read, each with `probes`
    random directions (one forward and `probes` backward passes per batch); only the input embeddings' output
    receives gradients.
    """
    if isinstance(texts, str) or not isinstance(texts, Sequence) or not texts:
        raise ValueError("texts must be a non-empty list of strings (calibration sentences).")
    if output not in LOSSES:
        raise ValueError(f"output must be one of {LOSSES}, got {output!r}.")
    if probes < 1 or max_texts < 1 or batch_size < 1:
        raise ValueError(
            f"probes, max_texts and batch_size must be ≥ 1, got {probes}, {max_texts}, {batch_size}."
        )
    tokenizer = padding_tokenizer(tokenizer)
    embedding = model.get_input_embeddings()
    captured: list[torch.Tensor] = []

    def capture(module: nn.Module, args: object, result: torch.Tensor) -> torch.Tensor:
        leaf = result.detach().requires_grad_(True)
        captured.append(leaf)
        return leaf

    generator = torch.Generator().manual_seed(seed)
    selected = sample_texts(texts, max_texts, generator)  # the same generator then draws the probes
    handle = embedding.register_forward_hook(capture)
    metric = torch.zeros((), dtype=torch.float64)
    try:
        with frozen(model):
            batches = tokenized_batches(
                tokenizer,
                selected,
                batch_size=batch_size,
                max_length=max_length,
                desc="embedding sensitivity",
                progress=progress,
            )
            for batch in batches:
                captured.clear()
                target = _target(model_outputs(model, batch, output), batch["attention_mask"], output)
                mask = batch["attention_mask"].to(captured[-1].device).bool()
                for probe in range(probes):
                    direction = torch.randn(target.shape, generator=generator).to(target)
                    (target * direction).sum().backward(retain_graph=probe < probes - 1)
                    gradients = captured[-1].grad[mask].double()
                    captured[-1].grad = None
                    metric = metric + gradients.T @ gradients
    finally:
        handle.remove()
    trace = float(metric.trace())
    if not trace > 0:
        raise ValueError("the model's outputs do not depend on its input embeddings on these texts.")
    logger.info("embedding sensitivity from %d texts × %d probes", len(selected), probes)
    return metric * (metric.shape[0] / trace)


def _target(outputs: torch.Tensor, mask: torch.Tensor, output: str) -> torch.Tensor:
    """The quantity whose sensitivity is measured, with padded positions zeroed."""
    if output == "pooled":
        return torch.nn.functional.normalize(mean_pool(outputs, mask), dim=-1)
    return outputs * mask.to(outputs.device, outputs.dtype).unsqueeze(-1)
