"""`CompressedEmbedding`: a drop-in `nn.Embedding` whose rows are sums of M codewords chosen by packed codes."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from huggingface_hub import ModelCard, PyTorchModelHubMixin
from torch import nn
from torch._subclasses.fake_tensor import is_fake

from dccl_hf.checks import check_words, is_integer
from dccl_hf.packing import bits_per_code, pack_codes, packed_row_bytes, unpack_codes

#: Why a `CompressedEmbedding` has no ``weight``, for code written for `nn.Embedding` that reads it.
NO_WEIGHT = (
    "CompressedEmbedding has no dense 'weight': its table is stored as packed codes and a codebook "
    "(reconstruct() builds the dense table, to_embedding() a dense nn.Embedding). Code that needs a dense "
    "weight does not apply to it, e.g. PEFT's trainable_token_indices (train the codebook instead with "
    'modules_to_save=["embed_tokens"]) or AutoPeftModel*.from_pretrained of an adapter folder holding a tokenizer '
    "(load the base with AutoModel*.from_pretrained after `import dccl_hf`, then PeftModel.from_pretrained(base, "
    "adapter_folder)); model.dequantize() turns a compressed model back into a dense one."
)


class CompressedEmbedding(
    nn.Module,
    PyTorchModelHubMixin,
    library_name="dccl_hf",
    tags=["dccl", "embedding-compression"],
    repo_url="https://github.com/dccl-hf/dccl_hf",
    paper_url="https://arxiv.org/abs/1711.01068",
):
    """Embedding table stored as M codes per row into M codebooks of K codewords each.

    Row i is ``sum_m codebook[m, codes[i, m]]``. The codes live bit-packed in the ``packed_codes`` buffer (never
    trained); the ``codebook`` of shape (M, K, D) is a parameter, so a compressed model can be fine-tuned.
    A table of word vectors may carry its `words` (row i is ``words[i]``), saved with it as ``vocab.txt``.
    """

    def __init__(
        self,
        num_embeddings: int,
        embedding_dim: int,
        num_codebooks: int,
        codebook_size: int,
        padding_idx: int | None = None,
        dtype: torch.dtype | None = None,
        device: torch.device | str | None = None,
    ) -> None:
        super().__init__()
        bits_per_code(codebook_size)
        for name, value in (
            ("num_embeddings", num_embeddings),
            ("embedding_dim", embedding_dim),
            ("num_codebooks", num_codebooks),
        ):
            if not is_integer(value) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}.")
        if padding_idx is not None:
            if not -num_embeddings <= padding_idx < num_embeddings:
                raise ValueError(
                    f"padding_idx must be within num_embeddings ({num_embeddings}), got {padding_idx}."
                )
            padding_idx %= num_embeddings
        self.num_embeddings = num_embeddings
        self.embedding_dim = embedding_dim
        self.num_codebooks = num_codebooks
        self.codebook_size = codebook_size
        self.padding_idx = padding_idx
        self._words: tuple[str, ...] | None = None
        self.codebook = nn.Parameter(
            torch.empty(num_codebooks, codebook_size, embedding_dim, dtype=dtype, device=device)
        )
        row_bytes = packed_row_bytes(num_codebooks, codebook_size)
        self.register_buffer(
            "packed_codes", torch.zeros(num_embeddings, row_bytes, dtype=torch.uint8, device=device)
        )
        self.reset_parameters()

    @classmethod
    def from_codes(
        cls,
        codes: torch.Tensor,
        codebook: torch.Tensor,
        padding_idx: int | None = None,
        words: Sequence[str] | None = None,
    ) -> CompressedEmbedding:
        """Build the module from integer codes (V, M), a codebook (M, K, D) (copied) and optionally the V words."""
        if codes.ndim != 2:
            raise ValueError(
                f"codes must have shape (num_embeddings, num_codebooks), got {tuple(codes.shape)}."
            )
        if codebook.ndim != 3:
            raise ValueError(
                f"codebook must have shape (num_codebooks, codebook_size, embedding_dim), got {tuple(codebook.shape)}."
            )
        if codes.shape[1] != codebook.shape[0]:
            raise ValueError(
                f"codes have {codes.shape[1]} codes per row but the codebook has {codebook.shape[0]} codebooks."
            )
        module = cls(
            codes.shape[0],
            codebook.shape[2],
            codebook.shape[0],
            codebook.shape[1],
            padding_idx=padding_idx,
            dtype=codebook.dtype,
            device=codebook.device,
        )
        with torch.no_grad():
            module.codebook.copy_(codebook)
        module.set_codes(codes)
        module.words = words
        return module

    @classmethod
    def from_packed_codes(
        cls, packed_codes: torch.Tensor, codebook: torch.Tensor, padding_idx: int | None = None
    ) -> CompressedEmbedding:
        """Build the module around packed codes (uint8, V × ceil(M·log2 K / 8)) and a codebook (M, K, D), both
        taken as they are (not copied): the loading path, which must not pay for initial values it overwrites."""
        if packed_codes.dtype != torch.uint8 or packed_codes.ndim != 2:
            raise ValueError(
                f"packed_codes must be uint8 of shape (num_embeddings, row bytes), got {packed_codes.dtype} "
                f"of shape {tuple(packed_codes.shape)}."
            )
        if codebook.ndim != 3 or not codebook.is_floating_point():
            raise ValueError(
                "codebook must be floating-point of shape (num_codebooks, codebook_size, embedding_dim), got "
                f"{codebook.dtype} of shape {tuple(codebook.shape)}."
            )
        num_codebooks, codebook_size, embedding_dim = codebook.shape
        module = cls(
            packed_codes.shape[0],
            embedding_dim,
            num_codebooks,
            codebook_size,
            padding_idx=padding_idx,
            dtype=codebook.dtype,
            device="meta",
        )
        module.load_state_dict({"packed_codes": packed_codes, "codebook": codebook}, strict=True, assign=True)
        return module

    def reset_parameters(self) -> None:
        """Random codes and a codebook whose sums have unit variance, like `nn.Embedding`'s N(0, 1) init."""
        with torch.no_grad():
            nn.init.normal_(self.codebook, std=1.0 / math.sqrt(self.num_codebooks))
            if self.packed_codes.device.type != "meta":
                # Uniform codes are uniform bits: the packed bytes are drawn directly (no (V, M) int64 codes,
                # several times their size), with the spare bits past the last code zero.
                self.packed_codes.random_()
                used_bits = self.bits_per_row % 8
                if used_bits:
                    self.packed_codes[:, -1] &= (1 << used_bits) - 1

    @property
    def codes(self) -> torch.Tensor:
        """The unpacked codes, int64 of shape (num_embeddings, num_codebooks)."""
        return unpack_codes(self.packed_codes, self.num_codebooks, self.codebook_size)

    def set_codes(self, codes: torch.Tensor) -> None:
        """Replace all codes; `codes` is an integer tensor of shape (num_embeddings, num_codebooks)."""
        expected = (self.num_embeddings, self.num_codebooks)
        if tuple(codes.shape) != expected:
            raise ValueError(f"codes must have shape {expected}, got {tuple(codes.shape)}.")
        self.packed_codes.copy_(pack_codes(codes.to(self.packed_codes.device), self.codebook_size))

    @property
    def words(self) -> tuple[str, ...] | None:
        """The word of each row (saved as the artifact's ``vocab.txt``), or None for a table without words."""
        return self._words

    @words.setter
    def words(self, words: Sequence[str] | None) -> None:
        if words is None:
            self._words = None
            return
        words = tuple(words)
        if len(words) != self.num_embeddings:
            raise ValueError(
                f"got {len(words)} words for {self.num_embeddings} rows; give one word per row, in row order."
            )
        check_words(words)
        self._words = words

    @property
    def bits_per_row(self) -> int:
        """Bits of codes per row: M·log2(K)."""
        return self.num_codebooks * bits_per_code(self.codebook_size)

    @property
    def code_bytes(self) -> int:
        """Bytes taken by the packed codes."""
        return self.packed_codes.numel()

    @property
    def codebook_bytes(self) -> int:
        """Bytes taken by the codebook in its current dtype."""
        return self.codebook.numel() * self.codebook.element_size()

    @property
    def dense_bytes(self) -> int:
        """Bytes of the equivalent dense fp32 table."""
        return self.num_embeddings * self.embedding_dim * 4

    @property
    def compression_ratio(self) -> float:
        """Size of the equivalent dense fp32 table divided by the size of codes plus codebook."""
        return self.dense_bytes / (self.code_bytes + self.codebook_bytes)

    def lookup_indices(self, flat_ids: torch.Tensor) -> torch.Tensor:
        """Rows of the flattened (M·K, D) codebook to sum for each id: int32 (N, M), int64 in ONNX export.

        (The dynamo exporter's `embedding_bag` mixes int32 indices with int64 offsets, which onnxruntime rejects.)
        """
        dtype = torch.int64 if torch.onnx.is_in_onnx_export() else torch.int32
        packed = self.packed_codes.index_select(0, flat_ids)
        codes = unpack_codes(packed, self.num_codebooks, self.codebook_size, dtype)
        offsets = torch.arange(
            0,
            self.num_codebooks * self.codebook_size,
            self.codebook_size,
            dtype=dtype,
            device=codes.device,
        )
        return codes + offsets

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        """Embed ids of any shape: returns (*input_ids.shape, embedding_dim)."""
        if input_ids.dtype.is_floating_point or input_ids.dtype == torch.bool or input_ids.dtype.is_complex:
            raise TypeError(f"input ids must be an integer tensor, got {input_ids.dtype}.")
        flat_ids = input_ids.reshape(-1).to(torch.int64)
        if _graph_capture(flat_ids):
            rows = self._rows(flat_ids)
        else:
            distinct_ids, positions = torch.unique(flat_ids, return_inverse=True)
            training = torch.is_grad_enabled() and self.codebook.requires_grad
            if not training and distinct_ids.shape[0] * MIN_POSITIONS_PER_DISTINCT_ID <= flat_ids.shape[0]:
                # Frequent tokens repeat (Zipf's law): sum each distinct row once, then gather it per position.
                rows = F.embedding(positions, self._rows(distinct_ids))
            else:
                flat_codebook = self.codebook.reshape(-1, self.embedding_dim)
                indices = self.lookup_indices(flat_ids)
                rows = _CodewordSums.apply(
                    flat_codebook, indices, flat_ids, distinct_ids, positions, self.padding_idx
                )
        return rows.reshape(*input_ids.shape, self.embedding_dim)

    def reconstruct(self) -> torch.Tensor:
        """The dense (num_embeddings, embedding_dim) matrix these codes and codebook stand for."""
        return self._rows(torch.arange(self.num_embeddings, device=self.packed_codes.device))

    def _rows(self, ids: torch.Tensor) -> torch.Tensor:
        """Rows `ids` (1-D int64) as sums of their codewords, the padding row zero."""
        flat_codebook = self.codebook.reshape(-1, self.embedding_dim)
        if torch.onnx.is_in_onnx_export():
            # ONNX has no embedding_bag (exporters emit a Loop over rows); a Gather and a ReduceSum run anywhere.
            rows = F.embedding(self.lookup_indices(ids), flat_codebook).sum(-2)
        else:
            rows = F.embedding_bag(self.lookup_indices(ids), flat_codebook, mode="sum")
        if self.padding_idx is not None:
            rows = rows.masked_fill((ids == self.padding_idx).unsqueeze(-1), 0.0)
        return rows

    def __getattr__(self, name: str) -> Any:
        try:
            return super().__getattr__(name)
        except AttributeError:
            if name == "weight":  # the usual nn.Embedding attribute: say why it is missing and what to do
                raise AttributeError(NO_WEIGHT) from None
            raise

    def to_embedding(self) -> nn.Embedding:
        """An equivalent dense `nn.Embedding` (same device and dtype)."""
        with torch.no_grad():
            weight = self.reconstruct()
        return nn.Embedding.from_pretrained(weight, freeze=False, padding_idx=self.padding_idx)

    def extra_repr(self) -> str:
        padding = f", padding_idx={self.padding_idx}" if self.padding_idx is not None else ""
        return (
            f"{self.num_embeddings}, {self.embedding_dim}, num_codebooks={self.num_codebooks}, "
            f"codebook_size={self.codebook_size}{padding}, bits_per_row={self.bits_per_row}, "
            f"compression_ratio={self.compression_ratio:.1f}x"
        )

    def save_pretrained(
        self,
        save_directory: str | Path,
        *,
        config: dict | None = None,
        repo_id: str | None = None,
        push_to_hub: bool = False,
        model_card_kwargs: dict[str, Any] | None = None,
        **push_to_hub_kwargs: Any,
    ) -> str | None:
        """Save config.json, model.safetensors, README.md and, with `words`, vocab.txt, byte-deterministically; the
        directory is replaced whole (`dccl_hf.files.staged_directory`), so it holds the complete old or new artifact
        at every moment.

        Other files already in the directory are kept; a `vocab.txt` goes with the artifact it belonged to.
        config.json is derived from the module, so `config` must be None (it exists for the mixin's signature).
        """
        from dccl_hf.artifacts import ARTIFACT_ENTRIES
        from dccl_hf.files import staged_directory

        if config is not None:
            raise ValueError(
                "CompressedEmbedding writes its own config.json from the module; do not pass `config`."
            )
        with staged_directory(save_directory, replaceable=ARTIFACT_ENTRIES) as staging:
            super().save_pretrained(staging, model_card_kwargs=model_card_kwargs)
        if push_to_hub:
            return self.push_to_hub(
                repo_id or Path(save_directory).resolve().name,
                model_card_kwargs=model_card_kwargs,
                **push_to_hub_kwargs,
            )
        return None

    def _save_pretrained(self, save_directory: Path) -> None:
        from dccl_hf.artifacts import save_artifact

        save_artifact(self, save_directory)

    def generate_model_card(self, *args: Any, **kwargs: Any) -> ModelCard:
        """The README.md model card: library_name, tags, shapes, bits per row and compression ratio."""
        from dccl_hf.artifacts import generate_model_card

        return generate_model_card(self, **kwargs)

    @classmethod
    def from_pretrained(
        cls,
        pretrained_model_name_or_path: str | Path,
        *,
        force_download: bool = False,
        token: str | bool | None = None,
        cache_dir: str | Path | None = None,
        local_files_only: bool = False,
        revision: str | None = None,
        **model_kwargs: Any,
    ) -> CompressedEmbedding:
        """Load from a `save_pretrained` directory or a Hub repo id; strict: a bad artifact is an `ArtifactError`.

        Unlike `ModelHubMixin.from_pretrained`, config.json is read (once) by `dccl_hf.artifacts`, so a malformed
        config is reported like any other artifact problem. `device` and `dtype` keywords place and cast the module.
        """
        return cls._from_pretrained(
            model_id=str(pretrained_model_name_or_path),
            revision=revision,
            cache_dir=cache_dir,
            force_download=force_download,
            local_files_only=local_files_only,
            token=token,
            **model_kwargs,
        )

    @classmethod
    def _from_pretrained(
        cls,
        *,
        model_id: str,
        revision: str | None,
        cache_dir: str | Path | None,
        force_download: bool,
        local_files_only: bool,
        token: str | bool | None,
        **model_kwargs: Any,
    ) -> CompressedEmbedding:
        from dccl_hf.artifacts import load_artifact

        return load_artifact(
            cls,
            model_id,
            revision=revision,
            cache_dir=cache_dir,
            force_download=force_download,
            local_files_only=local_files_only,
            token=token,
            **model_kwargs,
        )


#: Without gradients, rows are decoded once per distinct id and gathered per position when the batch has at least
#: this many positions per distinct id (a 64×512 batch of text: 4, of uniform ids: 1.6); below it the gather
#: costs more than the sums it saves.
MIN_POSITIONS_PER_DISTINCT_ID = 2


def _graph_capture(flat_ids: torch.Tensor) -> bool:
    """Whether the lookup is being captured rather than run: compiled (inductor's backward fails on the
    data-dependent number of distinct ids `_CodewordSums` counts), on meta or fake tensors, under `torch.func`
    transforms (vmap) or exported to ONNX. There rows are plain `embedding_bag` sums, differentiated by autograd."""
    return (
        torch.compiler.is_compiling()
        or torch.onnx.is_in_onnx_export()
        or flat_ids.device.type == "meta"
        or is_fake(flat_ids)
        or torch._C._are_functorch_transforms_active()
    )


class _CodewordSums(torch.autograd.Function):
    """``rows[n] = Σ_m table[indices[n, m]]``, zero where ``ids[n]`` is the padding id; `table` is the
    flattened (M·K, D) codebook.

    Forward: one `embedding_bag` over the positions, written straight into the output (decoding the distinct ids
    first and spreading their rows to the positions adds a gather, which costs the backward more than the sums it
    saves). Backward:
    text repeats its tokens (Zipf's law), so the output's gradient is first summed per distinct id, then
    accumulated into the codebook as a sparse (codewords × distinct ids) one-hot product, which reads each
    gradient row once (`embedding_bag`'s own backward scatters M copies of every position's gradient).
    """

    @staticmethod
    def forward(
        ctx: torch.autograd.function.FunctionCtx,
        table: torch.Tensor,
        indices: torch.Tensor,
        ids: torch.Tensor,
        distinct_ids: torch.Tensor,
        positions: torch.Tensor,
        padding_idx: int | None,
    ) -> torch.Tensor:
        rows = F.embedding_bag(indices, table, mode="sum")
        if padding_idx is not None:
            rows.index_fill_(0, (ids == padding_idx).nonzero().squeeze(1), 0.0)
        ctx.save_for_backward(indices, distinct_ids, positions)
        ctx.padding_idx = padding_idx
        ctx.table_rows = table.shape[0]
        return rows

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(
        ctx: torch.autograd.function.FunctionCtx, grad: torch.Tensor
    ) -> tuple[torch.Tensor, None, None, None, None, None]:
        indices, distinct_ids, positions = ctx.saved_tensors
        grad_rows = grad.new_zeros(distinct_ids.shape[0], grad.shape[1]).index_add_(0, positions, grad)
        if ctx.padding_idx is not None:
            grad_rows.index_fill_(0, (distinct_ids == ctx.padding_idx).nonzero().squeeze(1), 0.0)
        # One position of each distinct id (any: they share their codes) gives its row of indices.
        first = torch.empty_like(distinct_ids).scatter_(
            0, positions, torch.arange(positions.shape[0], device=positions.device)
        )
        distinct_indices = indices.index_select(0, first)
        num_distinct, num_codebooks = distinct_indices.shape
        columns = torch.arange(num_distinct, device=positions.device).repeat_interleave(num_codebooks)
        one_hot = torch.sparse_coo_tensor(
            torch.stack([distinct_indices.reshape(-1).to(torch.int64), columns]),
            grad.new_ones(num_distinct * num_codebooks),
            (ctx.table_rows, num_distinct),
            check_invariants=False,
        )
        return torch.sparse.mm(one_hot, grad_rows), None, None, None, None, None
