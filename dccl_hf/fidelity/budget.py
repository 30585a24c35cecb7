"""Pick the smallest (M, K) whose compressed model meets a sentence-fidelity target on held-out calibration text.

Users reason in bytes and in fidelity, not in M and K. `smallest_codes` tries candidate code shapes from the
smallest stored table (codes + codebook) up, each calibrated and distilled on part of the texts and scored on the
rest, and stops at the first that meets the target.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F

from dccl_hf.embedding import CompressedEmbedding
from dccl_hf.fidelity.models import mean_pool, model_device, padding_tokenizer
from dccl_hf.fidelity.sensitivity import embedding_sensitivity
from dccl_hf.integration.model import resize_with_codes
from dccl_hf.packing import bits_per_code, packed_row_bytes

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

logger = logging.getLogger(__name__)

#: Code shapes tried by default: 32 to 512 bits per row with K = 16 or 256.
DEFAULT_CANDIDATES: tuple[tuple[int, int], ...] = (
    (4, 256), (8, 16), (8, 256), (16, 16), (16, 256), (32, 16), (32, 256), (64, 16), (64, 256), (128, 16),
)  # fmt: skip


@dataclass(frozen=True)
class BudgetResult:
    """One tried code shape: its storage and the fidelity it reached."""

    num_codebooks: int
    codebook_size: int
    bits_per_row: int
    stored_bytes: int
    compression_ratio: float
    mean_cosine: float

    def __str__(self) -> str:
        return (
            f"M={self.num_codebooks}, K={self.codebook_size}: {self.bits_per_row} bits/row, "
            f"{self.stored_bytes / 2**20:.2f} MiB stored ({self.compression_ratio:.1f}x), "
            f"mean cosine {self.mean_cosine:.4f}"
        )


def stored_bytes(
    num_embeddings: int,
    embedding_dim: int,
    num_codebooks: int,
    codebook_size: int,
    codebook_dtype: torch.dtype,
) -> int:
    """Bytes of packed codes plus a codebook stored in `codebook_dtype`."""
    codes = num_embeddings * packed_row_bytes(num_codebooks, codebook_size)
    return codes + num_codebooks * codebook_size * embedding_dim * codebook_dtype.itemsize


def sentence_embeddings(
    model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, texts: Sequence[str], batch_size: int = 64
) -> torch.Tensor:
    """Mean-pooled final hidden states of `texts` (float32, on the model's device), in the order given.

    Batches are formed from texts of similar length, so little of each batch is padding.
    """
    device = model_device(model)
    tokenizer = padding_tokenizer(tokenizer)
    order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
    pooled = torch.empty(len(texts), model.config.hidden_size, device=device)
    with torch.no_grad():
        for start in range(0, len(order), batch_size):
            chunk = order[start : start + batch_size]
            batch = tokenizer([texts[i] for i in chunk], padding=True, truncation=True, return_tensors="pt")
            hidden = model(**batch.to(device), output_hidden_states=True).hidden_states[-1].float()
            pooled[chunk] = mean_pool(hidden, batch["attention_mask"])
    return pooled


def smallest_codes(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    texts: Sequence[str],
    *,
    target: float = 0.99,
    candidates: Sequence[tuple[int, int]] = DEFAULT_CANDIDATES,
    codebook_dtype: torch.dtype = torch.float16,
    eval_fraction: float = 0.2,
    distill: bool = True,
    distill_options: dict[str, Any] | None = None,
    sensitivity: bool = True,
    seed: int = 0,
    progress: bool = True,
    **compress_options: Any,
) -> tuple[CompressedEmbedding | None, list[BudgetResult]]:
    """The compressed embeddings of the smallest candidate (M, K) reaching mean sentence cosine >= `target`.

    An `eval_fraction` of `texts` is held out for scoring (mean cosine between the original and compressed models'
    mean-pooled final hidden states, with the codebook rounded to `codebook_dtype` as it would be stored); the rest
    calibrates the codes as `compress(..., calibration=token counts)` does (frequency weights, squared error), with
    `sensitivity` measures the metric the codes are learned under (`embedding_sensitivity` of the pooled sentence
    embedding), and with `distill` trains the codebook (`distill_options` go to `distill_codebook`,
    `compress_options` to `dccl_hf.compress`). Candidates are tried in order of stored bytes.
    Returns the winner (None when no candidate meets the target) and every result measured. `model` is unchanged.
    """
    if not 0 < target <= 1:
        raise ValueError(f"target is a mean cosine similarity in (0, 1], got {target}.")
    if not 0 < eval_fraction < 1:
        raise ValueError(f"eval_fraction must be in (0, 1), got {eval_fraction}.")
    if isinstance(texts, str) or len(texts) < 4:
        raise ValueError("texts must be a list of at least 4 texts (some are held out for scoring).")
    if not candidates:
        raise ValueError("candidates must list at least one (num_codebooks, codebook_size).")
    for num_codebooks, codebook_size in candidates:
        bits_per_code(codebook_size)
        if num_codebooks < 1:
            raise ValueError(f"num_codebooks must be positive, got {num_codebooks}.")
    dense = model.get_input_embeddings()
    if isinstance(dense, CompressedEmbedding) or not isinstance(getattr(dense, "weight", None), torch.Tensor):
        raise TypeError("model must have dense input embeddings (an nn.Embedding) to compress.")
    vocab_size, dim = dense.weight.shape
    order = torch.randperm(len(texts), generator=torch.Generator().manual_seed(seed)).tolist()
    num_eval = max(1, round(len(texts) * eval_fraction))
    eval_texts = [texts[i] for i in order[:num_eval]]
    train_texts = [texts[i] for i in order[num_eval:]]
    model.eval()
    reference = sentence_embeddings(model, tokenizer, eval_texts)
    options: dict[str, Any] = {"seed": seed, "progress": progress}
    if sensitivity:  # measured once for every candidate
        options["metric"] = embedding_sensitivity(
            model, tokenizer, train_texts, output="pooled", seed=seed, progress=progress
        )
    options.update(compress_options)
    ranked = sorted(candidates, key=lambda shape: stored_bytes(vocab_size, dim, *shape, codebook_dtype))
    results: list[BudgetResult] = []
    for num_codebooks, codebook_size in ranked:
        student = copy.deepcopy(model)
        compressed = resize_with_codes(
            student,
            num_codebooks,
            codebook_size,
            tokenizer=tokenizer,
            calibration=train_texts,
            sensitivity=False,
            distill=distill,
            distill_options={"progress": progress} | (distill_options or {}),
            **options,
        )
        with torch.no_grad():
            compressed.codebook.copy_(compressed.codebook.to(codebook_dtype))
        cosine = F.cosine_similarity(sentence_embeddings(student, tokenizer, eval_texts), reference, dim=-1)
        size = stored_bytes(vocab_size, dim, num_codebooks, codebook_size, codebook_dtype)
        result = BudgetResult(
            num_codebooks=num_codebooks,
            codebook_size=codebook_size,
            bits_per_row=num_codebooks * bits_per_code(codebook_size),
            stored_bytes=size,
            compression_ratio=vocab_size * dim * 4 / size,
            mean_cosine=float(cosine.mean()),
        )
        results.append(result)
        logger.info("%s", result)
        if result.mean_cosine >= target:
            return compressed, results
    logger.warning(
        "no candidate reached mean cosine %.4f; the best was %s",
        target,
        max(results, key=lambda r: r.mean_cosine),
    )
    return None, results
