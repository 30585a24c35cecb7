"""Standalone artifacts of a `CompressedEmbedding`: ``config.json`` + ``model.safetensors`` + ``README.md`` (+
``vocab.txt``).

``model.safetensors`` holds exactly two tensors: ``packed_codes`` (uint8, V × ceil(M·log2 K / 8), the bit-packed
codes of :mod:`dccl_hf.packing`) and ``codebook`` (M, K, D). ``config.json`` holds the shape, the codebook dtype,
the dccl_hf and format versions and the SHA-256 of ``model.safetensors``, so that a config and weights from two
different saves (or a corrupted file) are caught. A table with words also has ``vocab.txt`` (one word per line,
UTF-8, in row order), whose SHA-256 config.json records as ``vocab_sha256`` (null without words, so a
``vocab.txt`` left over from an earlier save is never read as this table's words). Saving stages every file in a temporary directory next to the
target and moves them into place only once all are complete; loading checks every tensor against the config and
raises :class:`ArtifactError` naming the file and the problem.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import torch
from huggingface_hub import ModelCard, constants, hf_hub_download
from huggingface_hub.errors import EntryNotFoundError, RemoteEntryNotFoundError
from safetensors import SafetensorError
from safetensors.torch import load as load_safetensors
from safetensors.torch import save as save_safetensors

from dccl_hf.checks import is_integer
from dccl_hf.files import write_file_atomic
from dccl_hf.packing import bits_per_code, packed_row_bytes

if TYPE_CHECKING:
    from dccl_hf.embedding import CompressedEmbedding

logger = logging.getLogger(__name__)

FORMAT_VERSION = 1
#: `library_name` of an artifact's config.json: what tells a dccl_hf artifact from a model directory.
LIBRARY_NAME = "dccl_hf"
CONFIG_NAME = constants.CONFIG_NAME
WEIGHTS_NAME = constants.SAFETENSORS_SINGLE_FILE
VOCAB_NAME = "vocab.txt"
CODEBOOK_DTYPES = {
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
    "float32": torch.float32,
    "float64": torch.float64,
}
SHAPE_KEYS = ("num_embeddings", "embedding_dim", "num_codebooks", "codebook_size")

EmbeddingT = TypeVar("EmbeddingT", bound="CompressedEmbedding")

MODEL_CARD_TEMPLATE = """---
{{ card_data }}
---

# Compressed embedding table ({{ num_embeddings }} × {{ embedding_dim }})

A [dccl_hf]({{ repo_url }}) `CompressedEmbedding`. Each row is stored as {{ num_codebooks }} codes, one per codebook,
and rebuilt as the sum of the chosen codewords of {{ num_codebooks }} codebooks of {{ codebook_size }} codewords each
(Shu & Nakayama, "Compressing Word Embeddings via Deep Compositional Code Learning", ICLR 2018: {{ paper_url }}).

| | |
|---|---|
| rows × dimension (V × D) | {{ num_embeddings }} × {{ embedding_dim }} |
| codebooks × codewords (M × K) | {{ num_codebooks }} × {{ codebook_size }} |
| padding_idx | {{ padding_idx }} |
| codebook dtype | {{ codebook_dtype }} |
| bits per row | {{ bits_per_row }} |
| bytes of codes | {{ code_bytes }} |
| bytes of codebook | {{ codebook_bytes }} |
| bytes of the dense fp32 table | {{ dense_bytes }} |
| compression ratio vs fp32 | {{ compression_ratio }}× |

## Usage

```python
from dccl_hf import CompressedEmbedding

embedding = CompressedEmbedding.from_pretrained("<this repo id or directory>")
vectors = embedding(token_ids)  # like torch.nn.Embedding
```

## Files

- `config.json`: shape, codebook dtype, dccl_hf and format versions, SHA-256 of `model.safetensors` (and of
  `vocab.txt`).
- `model.safetensors`: `packed_codes`, uint8 of shape ({{ num_embeddings }}, {{ row_bytes }}), the codes bit-packed
  at {{ bits_per_code }} bits each (little-endian within a row); `codebook`, {{ codebook_dtype }} of shape
  ({{ num_codebooks }}, {{ codebook_size }}, {{ embedding_dim }}).
{%- if has_words %}
- `vocab.txt`: the word of each row, one per line (UTF-8, row order). Query the word vectors without rebuilding
  the table: `dccl_hf.CompressedKeyedVectors.from_pretrained("<this repo id or directory>").most_similar("king")`.
{%- endif %}
"""


class ArtifactError(ValueError):
    """A saved artifact is missing, malformed or inconsistent; the message names the file and the problem."""

    def __init__(self, path: str | Path, problem: str) -> None:
        super().__init__(f"{path}: {problem}")
        self.path = str(path)
        self.problem = problem


def dtype_name(dtype: torch.dtype) -> str:
    """The name a codebook dtype has in config.json, e.g. ``float32``."""
    return str(dtype).removeprefix("torch.")


def model_card_facts(module: CompressedEmbedding) -> dict[str, Any]:
    """The numbers the model card template shows: shapes, bits per row, bytes, compression ratio."""
    return {
        "num_embeddings": module.num_embeddings,
        "embedding_dim": module.embedding_dim,
        "num_codebooks": module.num_codebooks,
        "codebook_size": module.codebook_size,
        "padding_idx": module.padding_idx,
        "codebook_dtype": dtype_name(module.codebook.dtype),
        "bits_per_code": bits_per_code(module.codebook_size),
        "bits_per_row": module.bits_per_row,
        "row_bytes": packed_row_bytes(module.num_codebooks, module.codebook_size),
        "code_bytes": module.code_bytes,
        "codebook_bytes": module.codebook_bytes,
        "dense_bytes": module.dense_bytes,
        "compression_ratio": f"{module.compression_ratio:.1f}",
        "has_words": module.words is not None,
    }


def save_artifact(module: CompressedEmbedding, directory: Path) -> None:
    """Write ``model.safetensors``, ``vocab.txt`` (if `module` has words) and ``config.json`` of `module` into
    `directory` (the mixin adds README.md)."""
    tensors = {
        "packed_codes": module.packed_codes.detach().cpu().contiguous(),
        "codebook": module.codebook.detach().cpu().contiguous(),
    }
    weights = save_safetensors(
        tensors, metadata={"format": "pt", "dccl_hf_format_version": str(FORMAT_VERSION)}
    )
    from dccl_hf import __version__  # here, not at the top: dccl_hf/__init__.py may import this module

    config = {
        "library_name": LIBRARY_NAME,
        "format_version": FORMAT_VERSION,
        "dccl_hf_version": __version__,
        **{key: getattr(module, key) for key in SHAPE_KEYS},
        "padding_idx": module.padding_idx,
        "codebook_dtype": dtype_name(module.codebook.dtype),
        "bits_per_row": module.bits_per_row,
        "model_sha256": hashlib.sha256(weights).hexdigest(),
        "vocab_sha256": None,
    }
    write_file_atomic(directory / WEIGHTS_NAME, weights)
    if module.words is not None:
        vocab = "".join(word + "\n" for word in module.words).encode("utf-8")
        config["vocab_sha256"] = hashlib.sha256(vocab).hexdigest()
        write_file_atomic(directory / VOCAB_NAME, vocab)
    write_file_atomic(directory / CONFIG_NAME, (json.dumps(config, indent=2) + "\n").encode())


def _artifact_file(model_id: str, filename: str, hub_kwargs: dict[str, Any]) -> Path:
    """Local path of `filename` in a directory `model_id`, or downloaded from the Hub repo `model_id`."""
    if os.path.isdir(model_id):
        path = Path(model_id) / filename
        if not path.is_file():
            raise ArtifactError(
                path,
                "missing; a dccl_hf artifact is the directory written by CompressedEmbedding.save_pretrained.",
            )
        return path
    if os.path.exists(model_id) or model_id.startswith((".", "/", "~")) or model_id.count("/") > 1:
        raise ArtifactError(
            model_id, "no such directory, and not a Hub repo id of the form 'namespace/name'."
        )
    try:
        return Path(hf_hub_download(repo_id=model_id, filename=filename, **hub_kwargs))
    except RemoteEntryNotFoundError as error:
        raise ArtifactError(
            f"{model_id}/{filename}",
            "not found in the Hub repository; push the artifact with CompressedEmbedding.push_to_hub.",
        ) from error


def _read_config(path: Path) -> dict[str, Any]:
    """Parse and check config.json on its own: keys present, integers positive, K a power of two."""
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ArtifactError(path, f"not valid JSON ({error}).") from error
    if not isinstance(config, dict):
        raise ArtifactError(path, f"expected a JSON object, got {type(config).__name__}.")
    version = config.get("format_version")
    if not is_integer(version):
        raise ArtifactError(path, "no integer 'format_version': this is not a dccl_hf artifact config.")
    if version > FORMAT_VERSION:
        raise ArtifactError(
            path,
            f"format_version {version} is newer than this dccl_hf supports ({FORMAT_VERSION}); upgrade dccl_hf.",
        )
    for key in SHAPE_KEYS:
        value = config.get(key)
        if not is_integer(value) or value < 1:
            raise ArtifactError(path, f"'{key}' must be a positive integer, got {value!r}.")
    try:
        bits_per_code(config["codebook_size"])
    except ValueError as error:
        raise ArtifactError(path, str(error)) from error
    padding_idx = config.get("padding_idx")
    if padding_idx is not None and (
        not is_integer(padding_idx) or not 0 <= padding_idx < config["num_embeddings"]
    ):
        raise ArtifactError(
            path, f"'padding_idx' must be null or in [0, {config['num_embeddings']}), got {padding_idx!r}."
        )
    if not isinstance(config.get("vocab_sha256"), (str, type(None))):
        raise ArtifactError(
            path, f"'vocab_sha256' must be null or a hex string, got {config['vocab_sha256']!r}."
        )
    if config.get("codebook_dtype") not in CODEBOOK_DTYPES:
        raise ArtifactError(
            path,
            f"'codebook_dtype' must be one of {sorted(CODEBOOK_DTYPES)}, got {config.get('codebook_dtype')!r}.",
        )
    return config


def _read_tensors(path: Path, config: dict[str, Any], config_path: Path) -> dict[str, torch.Tensor]:
    """Load model.safetensors and check names, dtypes, shapes, checksum and code range against the config."""
    data = path.read_bytes()
    try:
        tensors = load_safetensors(data)
    except SafetensorError as error:
        raise ArtifactError(
            path, f"truncated or corrupted safetensors file ({len(data)} bytes): {error}. Save it again."
        ) from error
    expected_names = {"packed_codes", "codebook"}
    if set(tensors) != expected_names:
        missing = sorted(expected_names - set(tensors))
        extra = sorted(set(tensors) - expected_names)
        raise ArtifactError(
            path,
            f"expected exactly the tensors packed_codes and codebook; missing {missing}, unexpected {extra}.",
        )
    num_embeddings, embedding_dim, num_codebooks, codebook_size = (config[key] for key in SHAPE_KEYS)
    expected = {
        "packed_codes": (torch.uint8, (num_embeddings, packed_row_bytes(num_codebooks, codebook_size))),
        "codebook": (
            CODEBOOK_DTYPES[config["codebook_dtype"]],
            (num_codebooks, codebook_size, embedding_dim),
        ),
    }
    described = ", ".join(f"{key}={config[key]}" for key in SHAPE_KEYS)
    for name, (dtype, shape) in expected.items():
        tensor = tensors[name]
        if tuple(tensor.shape) != shape:
            raise ArtifactError(
                path,
                f"tensor '{name}' has shape {tuple(tensor.shape)} but {config_path.name} ({described}) "
                f"implies {shape}; the config and the weights disagree.",
            )
        if tensor.dtype != dtype:
            raise ArtifactError(
                path, f"tensor '{name}' has dtype {dtype_name(tensor.dtype)}, expected {dtype_name(dtype)}."
            )
    checksum = config.get("model_sha256")
    if checksum is not None and hashlib.sha256(data).hexdigest() != checksum:
        raise ArtifactError(
            path,
            f"SHA-256 differs from the one recorded in {config_path.name}: the file is corrupted or comes from "
            "another save. Save the artifact again.",
        )
    used_bits = num_codebooks * bits_per_code(codebook_size)
    if used_bits % 8:
        spare = tensors["packed_codes"][:, -1] >> (used_bits % 8)
        bad_rows = spare.nonzero()
        if bad_rows.numel():
            raise ArtifactError(
                path,
                f"row {int(bad_rows[0])} of packed_codes sets bits past its last code: the codes do not fit "
                f"codebook_size={codebook_size} (packed with a larger K?) or the file is corrupted.",
            )
    return tensors


def load_artifact(
    cls: type[EmbeddingT],
    model_id: str,
    *,
    revision: str | None = None,
    cache_dir: str | Path | None = None,
    force_download: bool = False,
    local_files_only: bool = False,
    token: str | bool | None = None,
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
    **config_values: Any,
) -> EmbeddingT:
    """Load an artifact from a directory or a Hub repo id, strictly: any inconsistency is an `ArtifactError`.

    `device` and `dtype` place and cast the loaded module. `config_values` are the config entries
    ``ModelHubMixin.from_pretrained`` forwards; each must agree with config.json.
    """
    hub_kwargs = {
        "revision": revision,
        "cache_dir": cache_dir,
        "force_download": force_download,
        "local_files_only": local_files_only,
        "token": token,
    }
    config_path = _artifact_file(model_id, CONFIG_NAME, hub_kwargs)
    config = _read_config(config_path)
    for key, value in config_values.items():
        if key not in config:
            raise TypeError(f"{cls.__name__}.from_pretrained() got an unexpected keyword argument '{key}'.")
        if config[key] != value:
            raise ValueError(f"{key}={value!r} was passed but {config_path} has {key}={config[key]!r}.")
    weights_path = _artifact_file(model_id, WEIGHTS_NAME, hub_kwargs)
    tensors = _read_tensors(weights_path, config, config_path)
    words = _read_words(model_id, config, config_path, hub_kwargs)
    codebook_dtype = dtype if dtype is not None else tensors["codebook"].dtype
    module = cls(
        *(config[key] for key in SHAPE_KEYS),
        padding_idx=config.get("padding_idx"),
        dtype=codebook_dtype,
        device=device,
    )
    module.load_state_dict(tensors, strict=True)
    module.words = words
    logger.info("Loaded %s from %s", module.extra_repr(), model_id)
    return module


def _read_words(
    model_id: str, config: dict[str, Any], config_path: Path, hub_kwargs: dict[str, Any]
) -> list[str] | None:
    """The words in vocab.txt, checked against config.json's ``vocab_sha256``: required when it is a checksum,
    ignored when it is null; artifacts saved before it existed use a vocab.txt they have, if it has one per row."""
    if "vocab_sha256" not in config:
        try:
            path = _artifact_file(model_id, VOCAB_NAME, hub_kwargs)
        except (ArtifactError, EntryNotFoundError):
            return None
        data = path.read_bytes()
    elif config["vocab_sha256"] is None:
        return None
    else:
        path = _artifact_file(model_id, VOCAB_NAME, hub_kwargs)
        data = path.read_bytes()
        if hashlib.sha256(data).hexdigest() != config["vocab_sha256"]:
            raise ArtifactError(
                path,
                f"SHA-256 differs from the one recorded in {config_path.name}: the words come from another save "
                "or the file is corrupted. Save the artifact again.",
            )
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as error:
        line = data[: error.start].count(b"\n") + 1
        raise ArtifactError(path, f"line {line} is not valid UTF-8 ({error.reason}).") from error
    words = text.removesuffix("\n").split("\n") if text else []
    if len(words) != config["num_embeddings"]:
        raise ArtifactError(
            path,
            f"{len(words)} words for the {config['num_embeddings']} rows of {config_path.name}; "
            "vocab.txt needs one word per row.",
        )
    return words


def generate_model_card(module: CompressedEmbedding, **template_kwargs: Any) -> ModelCard:
    """The README.md model card: the mixin's card data (library_name, tags) plus shapes and sizes."""
    info = type(module)._hub_mixin_info
    values = {
        "repo_url": info.repo_url,
        "paper_url": info.paper_url,
        **model_card_facts(module),
        **template_kwargs,
    }
    return ModelCard.from_template(info.model_card_data, template_str=MODEL_CARD_TEMPLATE, **values)
