"""What the fidelity tools need from a transformers model and its tokenizer, and the steps they share: running a
model frozen, reading the output a loss compares, padding batches and mean-pooling sentence embeddings."""

from __future__ import annotations

import copy
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Protocol

import torch
from torch import nn
from tqdm.auto import tqdm


class Tokenizer(Protocol):
    """What we need from a tokenizer: call it on texts, pad its encodings (a `transformers` tokenizer fits)."""

    def __call__(self, text: list[str], **kwargs: object) -> Mapping[str, list[list[int]]]: ...

    def pad(
        self, encoded_inputs: list[dict[str, list[int]]], **kwargs: object
    ) -> Mapping[str, torch.Tensor]: ...


class Model(Protocol):
    """What we need from a model: a `transformers.PreTrainedModel` fits."""

    def __call__(self, **kwargs: object) -> object: ...

    def get_input_embeddings(self) -> nn.Module: ...

    def parameters(self) -> Iterator[nn.Parameter]: ...

    def named_parameters(self) -> Iterator[tuple[str, nn.Parameter]]: ...

    def train(self, mode: bool = True) -> nn.Module: ...

    @property
    def training(self) -> bool: ...


@contextmanager
def frozen(*models: Model) -> Iterator[None]:
    """Every parameter of `models` without gradients and every model in eval mode, both restored on exit, so
    that only what the caller re-enables (a codebook, a hooked activation) receives gradients."""
    flags = [
        {name: parameter.requires_grad for name, parameter in model.named_parameters()} for model in models
    ]
    modes = [model.training for model in models]
    try:
        for model in models:
            for parameter in model.parameters():
                parameter.requires_grad_(False)
            model.train(False)
        yield
    finally:
        for model, flag, mode in zip(models, flags, modes, strict=True):
            for name, parameter in model.named_parameters():
                parameter.requires_grad_(flag[name])
            model.train(mode)


def model_device(model: Model) -> torch.device:
    """The device of the model's (first) parameters, where its inputs go."""
    return next(iter(model.parameters())).device


def model_outputs(model: Model, batch: Mapping[str, torch.Tensor], loss: str) -> torch.Tensor:
    """The output the loss compares: final hidden states (B, L, D) or logits (B, L, V)."""
    inputs = {name: value.to(model_device(model)) for name, value in batch.items()}
    if loss == "logits":
        logits = getattr(model(**inputs), "logits", None)
        if logits is None:
            raise ValueError(
                "loss='logits' needs a model with a head that returns logits; use loss='hidden'."
            )
        return logits
    return model(**inputs, output_hidden_states=True).hidden_states[-1]


def padding_tokenizer(tokenizer: Tokenizer) -> Tokenizer:
    """`tokenizer`, or a copy of it that pads with its end-of-text token when it has no padding token (GPT-2's);
    padded positions are masked out everywhere they are used."""
    if getattr(tokenizer, "pad_token", "") is not None:
        return tokenizer
    eos_token = getattr(tokenizer, "eos_token", None)
    if eos_token is None:
        raise ValueError(
            "the tokenizer has neither a padding token nor an end-of-text token to pad with; "
            "set tokenizer.pad_token first."
        )
    padded = copy.deepcopy(tokenizer)
    padded.pad_token = eos_token
    return padded


def mean_pool(hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Mean over each sequence's real (unpadded) positions: (B, L, D) → (B, D), a sentence embedding."""
    mask = attention_mask.to(hidden.device, hidden.dtype).unsqueeze(-1)
    return (hidden * mask).sum(1) / mask.sum(1).clamp_min(1.0)


def sample_texts(texts: Sequence[str], max_texts: int, generator: torch.Generator) -> list[str]:
    """Up to `max_texts` of `texts` drawn with `generator`, sorted by length: batches of similar length carry
    little padding."""
    picks = torch.randperm(len(texts), generator=generator)[:max_texts].tolist()
    return sorted((texts[i] for i in picks), key=len)


def tokenized_batches(
    tokenizer: Tokenizer,
    texts: Sequence[str],
    *,
    batch_size: int,
    max_length: int,
    desc: str,
    progress: bool,
) -> Iterator[Mapping[str, torch.Tensor]]:
    """`texts` tokenized `batch_size` at a time (padded, truncated to `max_length`), with a progress bar."""
    for start in tqdm(
        range(0, len(texts), batch_size),
        total=-(-len(texts) // batch_size),
        desc=desc,
        unit="batch",
        disable=not progress,
    ):
        yield tokenizer(
            list(texts[start : start + batch_size]),
            padding=True,
            truncation=True,
            max_length=max_length,
            return_tensors="pt",
        )
