"""Standalone artifacts of a `CompressedEmbedding`: ``config.json`` + ``model.safetensors`` + ``README.md`` (+
``vocab.txt``).

``model.safetensors`` holds exactly two tensors: ``packed_codes`` (uint8, V × ceil(M·log2 K / 8), the bit-packed
codes of :mod:`dccl_hf.packing`) and ``codebook`` (M, K, D), and in its metadata a copy of config.json.
``config.json`` holds the shape, padding_idx, the codebook dtype, the dccl_hf and format versions and the SHA-256
of ``model.safetensors``; so the checksum covers every byte of both files: a config and weights from two different
saves, a corrupted file or an edited config field are caught. A table with words also has ``vocab.txt`` (one word
per line, UTF-8, in row order), whose SHA-256 config.json records as ``vocab_sha256`` (null without words; the
field is covered by the config copy, so words from another save are caught too). Saves are byte-deterministic and
replace the directory whole, ``vocab.txt`` included (:func:`dccl_hf.files.staged_directory`). Loading checks the
weights' header against the config before reading any tensor, reads the tensors straight into their storage, and
raises :class:`ArtifactError` naming the file and the problem.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import re
from contextlib import ExitStack
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO, TypeVar

import torch
from huggingface_hub import ModelCard, constants, hf_hub_download
from huggingface_hub.errors import EntryNotFoundError, RemoteEntryNotFoundError

from dccl_hf.checks import is_integer
from dccl_hf.files import open_together, recover_directory, write_file_atomic
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
#: Entries of an artifact directory that a save replaces (vocab.txt: the words of a table that has them).
ARTIFACT_ENTRIES = frozenset({CONFIG_NAME, WEIGHTS_NAME, "README.md", VOCAB_NAME})
#: Metadata key of model.safetensors holding config.json (less its checksum), so the checksum covers the config.
CONFIG_RECORD_KEY = "dccl_hf_config"
SHA256_PATTERN = re.compile("[0-9a-f]{64}")
SAFETENSORS_DTYPE_NAMES = {
    "BOOL": "bool",
    "U8": "uint8",
    "I8": "int8",
    "I16": "int16",
    "I32": "int32",
    "I64": "int64",
    "F16": "float16",
    "BF16": "bfloat16",
    "F32": "float32",
    "F64": "float64",
}
SAFETENSORS_DTYPES = {name: code for code, name in SAFETENSORS_DTYPE_NAMES.items()}
#: Our configs and weights headers take a few hundred bytes; a larger one is corruption, refused before it is read.
MAX_HEADER_BYTES = 1 << 20

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

- `config.json`: shape, padding_idx, codebook dtype, dccl_hf and format versions, SHA-256 of `model.safetensors`
  (and of `vocab.txt`).
- `model.safetensors`: `packed_codes`, uint8 of shape ({{ num_embeddings }}, {{ row_bytes }}), the codes bit-packed
  at {{ bits_per_code }} bits each (little-endian within a row); `codebook`, {{ codebook_dtype }} of shape
  ({{ num_codebooks }}, {{ codebook_size }}, {{ embedding_dim }}); in its metadata (`dccl_hf_config`), a copy of
  `config.json` less the checksum, so the checksum covers every field.
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
    `directory` (the mixin adds README.md).

    All are byte-deterministic: the same module always gives the same files and the same SHA-256.
    """
    vocab = None if module.words is None else "".join(word + "\n" for word in module.words).encode("utf-8")
    from dccl_hf import __version__  # here, not at the top: dccl_hf/__init__.py may import this module

    config = {
        "library_name": LIBRARY_NAME,
        "format_version": FORMAT_VERSION,
        "dccl_hf_version": __version__,
        **{key: getattr(module, key) for key in SHAPE_KEYS},
        "padding_idx": module.padding_idx,
        "codebook_dtype": dtype_name(module.codebook.dtype),
        "bits_per_row": module.bits_per_row,
        "vocab_sha256": None if vocab is None else hashlib.sha256(vocab).hexdigest(),
    }
    metadata = {
        "format": "pt",
        "dccl_hf_format_version": str(FORMAT_VERSION),
        CONFIG_RECORD_KEY: _canonical_json(config),
    }
    weights = safetensors_bytes(
        {"packed_codes": module.packed_codes, "codebook": module.codebook.detach()}, metadata
    )
    config["model_sha256"] = hashlib.sha256(weights).hexdigest()
    write_file_atomic(directory / WEIGHTS_NAME, weights)
    if vocab is not None:
        write_file_atomic(directory / VOCAB_NAME, vocab)
    write_file_atomic(directory / CONFIG_NAME, (json.dumps(config, indent=2) + "\n").encode())


def safetensors_bytes(tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> bytes:
    """A safetensors file of `tensors` whose bytes depend on nothing else: header keys sorted, no whitespace,
    padded with spaces to 8 bytes; tensors laid out widest dtype first, then by name (as safetensors does)."""
    order = sorted(tensors, key=lambda name: (-tensors[name].element_size(), name))
    header: dict[str, Any] = {"__metadata__": metadata}
    chunks = []
    offset = 0
    for name in order:
        tensor = tensors[name].detach().cpu().contiguous()
        data = tensor.reshape(-1).view(torch.uint8).numpy().tobytes()
        header[name] = {
            "dtype": SAFETENSORS_DTYPES[dtype_name(tensor.dtype)],
            "shape": list(tensor.shape),
            "data_offsets": [offset, offset + len(data)],
        }
        chunks.append(data)
        offset += len(data)
    encoded = _canonical_json(header).encode()
    encoded += b" " * (-len(encoded) % 8)
    return b"".join([len(encoded).to_bytes(8, "little"), encoded, *chunks])


def _canonical_json(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"))


def _open_artifact(
    model_id: str, hub_kwargs: dict[str, Any], stack: ExitStack
) -> dict[str, tuple[Path, BinaryIO]]:
    """config.json and model.safetensors of a directory `model_id` (with its vocab.txt, if it has one: all from
    one version of it, see `dccl_hf.files.open_together`) or of the Hub repo `model_id`, opened for reading."""
    recover_directory(model_id)
    names = (CONFIG_NAME, WEIGHTS_NAME)
    if os.path.isdir(model_id):
        files = open_together(Path(model_id), (*names, VOCAB_NAME))
        for file in files.values():
            if file is not None:
                stack.enter_context(file)
        for name in names:
            if files[name] is None:
                raise ArtifactError(
                    Path(model_id) / name,
                    "missing; a dccl_hf artifact is the directory written by CompressedEmbedding.save_pretrained.",
                )
        return {name: (Path(model_id) / name, file) for name, file in files.items() if file is not None}
    if os.path.exists(model_id) or model_id.startswith((".", "/", "~")) or model_id.count("/") > 1:
        raise ArtifactError(
            model_id, "no such directory, and not a Hub repo id of the form 'namespace/name'."
        )
    opened = {}
    for name in names:
        try:
            path = Path(hf_hub_download(repo_id=model_id, filename=name, **hub_kwargs))
        except RemoteEntryNotFoundError as error:
            raise ArtifactError(
                f"{model_id}/{name}",
                "not found in the Hub repository; push the artifact with CompressedEmbedding.push_to_hub.",
            ) from error
        opened[name] = (path, stack.enter_context(open(path, "rb")))  # noqa: SIM115 (the stack closes it)
    return opened


def _read_config(file: BinaryIO, path: Path) -> dict[str, Any]:
    """Parse and check config.json on its own: keys present, integers positive, K a power of two, a checksum."""
    size = os.fstat(file.fileno()).st_size
    if size > MAX_HEADER_BYTES:
        raise ArtifactError(
            path, f"{size} bytes, far more than a config holds: not a dccl_hf artifact config."
        )
    try:
        config = json.loads(file.read().decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as error:
        raise ArtifactError(path, f"not valid JSON ({error}).") from error
    if not isinstance(config, dict):
        raise ArtifactError(path, f"expected a JSON object, got {type(config).__name__}.")
    version = config.get("format_version")
    if not is_integer(version) or version < 1:
        raise ArtifactError(
            path,
            f"no positive integer 'format_version' ({version!r}): this is not a dccl_hf artifact config.",
        )
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
    vocab_sha256 = config.get("vocab_sha256")
    if vocab_sha256 is not None and not (
        isinstance(vocab_sha256, str) and SHA256_PATTERN.fullmatch(vocab_sha256)
    ):
        raise ArtifactError(path, f"'vocab_sha256' must be null or a hex SHA-256, got {vocab_sha256!r}.")
    if not isinstance(config.get("codebook_dtype"), str) or config["codebook_dtype"] not in CODEBOOK_DTYPES:
        raise ArtifactError(
            path,
            f"'codebook_dtype' must be one of {sorted(CODEBOOK_DTYPES)}, got {config.get('codebook_dtype')!r}.",
        )
    checksum = config.get("model_sha256")
    if not isinstance(checksum, str) or SHA256_PATTERN.fullmatch(checksum) is None:
        raise ArtifactError(
            path,
            f"'model_sha256' must be the 64 lowercase hex digits of the SHA-256 of {WEIGHTS_NAME}, got "
            f"{checksum!r}: the config is corrupted. Save the artifact again.",
        )
    return config


def _read_header(file: BinaryIO, path: Path, size: int, digest: Any) -> tuple[dict[str, Any], int]:
    """The safetensors header of `file` (checked to be a JSON object of string metadata) and where data starts."""

    def corrupted(problem: str) -> ArtifactError:
        return ArtifactError(
            path, f"truncated or corrupted safetensors file ({size} bytes): {problem}. Save it again."
        )

    prefix = file.read(8)
    if len(prefix) < 8:
        raise corrupted("shorter than its 8-byte header length")
    header_size = int.from_bytes(prefix, "little")
    if header_size > min(size - 8, MAX_HEADER_BYTES):
        raise corrupted(f"a header of {header_size} bytes does not fit")
    encoded = file.read(header_size)
    digest.update(prefix)
    digest.update(encoded)
    try:
        header = json.loads(encoded.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as error:
        raise corrupted(f"the header is not JSON ({error})") from error
    if not isinstance(header, dict):
        raise corrupted("the header is not a JSON object")
    metadata = header.get("__metadata__", {})
    if not isinstance(metadata, dict) or not all(isinstance(value, str) for value in metadata.values()):
        raise corrupted("the header's __metadata__ is not a map of strings")
    return header, 8 + header_size


def _tensor_layout(
    header: dict[str, Any], path: Path, config: dict[str, Any], config_path: Path, data_bytes: int
) -> list[tuple[str, torch.dtype, tuple[int, ...], int, int]]:
    """Check the header's tensors against the config before any is read: names, shapes, dtypes, and offsets
    that tile the rest of the file. Returns (name, dtype, shape, start, end) in file order."""
    names = set(header) - {"__metadata__"}
    expected_names = {"packed_codes", "codebook"}
    if names != expected_names:
        raise ArtifactError(
            path,
            f"expected exactly the tensors packed_codes and codebook; missing {sorted(expected_names - names)}, "
            f"unexpected {sorted(names - expected_names)}.",
        )
    num_embeddings, embedding_dim, num_codebooks, codebook_size = (config[key] for key in SHAPE_KEYS)
    expected = {
        "packed_codes": ("uint8", (num_embeddings, packed_row_bytes(num_codebooks, codebook_size))),
        "codebook": (config["codebook_dtype"], (num_codebooks, codebook_size, embedding_dim)),
    }
    described = ", ".join(f"{key}={config[key]}" for key in SHAPE_KEYS)
    layout = []
    for name, (dtype, shape) in expected.items():
        entry = header[name]
        offsets = entry.get("data_offsets") if isinstance(entry, dict) else None
        if not (
            isinstance(offsets, list)
            and len(offsets) == 2
            and all(map(is_integer, offsets))
            and isinstance(entry.get("dtype"), str)
        ):
            raise ArtifactError(
                path, f"truncated or corrupted safetensors file: the header entry of '{name}' is malformed."
            )
        stored_shape = entry.get("shape")
        if stored_shape != list(shape):
            shown = tuple(stored_shape) if isinstance(stored_shape, list) else stored_shape
            raise ArtifactError(
                path,
                f"tensor '{name}' has shape {shown} but {config_path.name} ({described}) implies {shape}; the "
                "config and the weights disagree.",
            )
        stored = SAFETENSORS_DTYPE_NAMES.get(entry["dtype"], entry["dtype"])
        if stored != dtype:
            raise ArtifactError(path, f"tensor '{name}' has dtype {stored}, expected {dtype}.")
        layout.append((name, CODEBOOK_DTYPES.get(dtype, torch.uint8), shape, *offsets))
    layout.sort(key=lambda item: item[3])
    position = 0
    for name, dtype, shape, start, end in layout:
        nbytes = math.prod(shape) * dtype.itemsize
        if start != position or end != start + nbytes:
            raise ArtifactError(
                path,
                f"truncated or corrupted safetensors file: tensor '{name}' should take {nbytes} bytes from offset "
                f"{position}, its header says [{start}, {end}]. Save it again.",
            )
        position = end
    if position != data_bytes:
        raise ArtifactError(
            path,
            f"truncated or corrupted safetensors file: its tensors take {position} bytes but {data_bytes} follow "
            "the header. Save it again.",
        )
    return layout


def _read_tensors(
    file: BinaryIO, path: Path, config: dict[str, Any], config_path: Path
) -> dict[str, torch.Tensor]:
    """Read model.safetensors into tensors of exactly its size (its header checked against the config first),
    then check checksum, config record, code range and finiteness."""
    size = os.fstat(file.fileno()).st_size
    digest = hashlib.sha256()
    header, data_start = _read_header(file, path, size, digest)
    tensors = {}
    for name, dtype, shape, start, end in _tensor_layout(
        header, path, config, config_path, size - data_start
    ):
        buffer = torch.empty(end - start, dtype=torch.uint8)
        if file.readinto(memoryview(buffer.numpy())) != end - start:
            raise ArtifactError(
                path, "truncated while reading: the file changed during the load. Load it again."
            )
        digest.update(memoryview(buffer.numpy()))
        tensors[name] = buffer.view(dtype).reshape(shape)
    if digest.hexdigest() != config["model_sha256"]:
        raise ArtifactError(
            path,
            f"SHA-256 differs from the one recorded in {config_path.name}: the file is corrupted or comes from "
            "another save. Save the artifact again.",
        )
    _check_config_record(header.get("__metadata__", {}), config, config_path)
    _check_values(tensors, config, path)
    return tensors


def _check_config_record(metadata: dict[str, str], config: dict[str, Any], config_path: Path) -> None:
    """config.json (less its checksum) must equal the copy the checksummed weights carry, so that no field of it
    (padding_idx included) changes unnoticed. Artifacts saved before the copy existed have only the checksum."""
    record = metadata.get(CONFIG_RECORD_KEY)
    if record is None:
        return
    recorded = json.loads(record)
    current = {key: value for key, value in config.items() if key != "model_sha256"}
    changed = sorted(
        key
        for key in recorded.keys() | current.keys()
        if key not in recorded
        or key not in current
        or _canonical_json(recorded[key]) != _canonical_json(current[key])
    )
    if changed:
        raise ArtifactError(
            config_path,
            f"field(s) {', '.join(map(repr, changed))} differ from the copy of the config in the checksummed "
            f"{WEIGHTS_NAME}: the config was edited or corrupted. Save the artifact again.",
        )


def _check_values(tensors: dict[str, torch.Tensor], config: dict[str, Any], path: Path) -> None:
    """No bits set past the last code of a row (codes beyond K), no NaN or infinity in the codebook."""
    used_bits = config["num_codebooks"] * bits_per_code(config["codebook_size"])
    if used_bits % 8:
        spare = tensors["packed_codes"][:, -1] >> (used_bits % 8)
        bad_rows = spare.nonzero()
        if bad_rows.numel():
            raise ArtifactError(
                path,
                f"row {int(bad_rows[0])} of packed_codes sets bits past its last code: the codes do not fit "
                f"codebook_size={config['codebook_size']} (packed with a larger K?) or the file is corrupted.",
            )
    non_finite = (~torch.isfinite(tensors["codebook"])).nonzero()
    if non_finite.numel():
        codebook, codeword, _ = non_finite[0].tolist()
        raise ArtifactError(
            path,
            f"tensor 'codebook' holds NaN or infinity (codebook {codebook}, codeword {codeword}); a codebook must "
            "be finite: train or fine-tune it again.",
        )


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

    Peak memory is about the size of the weights file: tensors are read straight into their final storage.
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
    with ExitStack() as stack:
        files = _open_artifact(model_id, hub_kwargs, stack)
        config_path, config_file = files[CONFIG_NAME]
        config = _read_config(config_file, config_path)
        for key, value in config_values.items():
            if key not in config:
                raise TypeError(
                    f"{cls.__name__}.from_pretrained() got an unexpected keyword argument '{key}'."
                )
            if config[key] != value:
                raise ValueError(f"{key}={value!r} was passed but {config_path} has {key}={config[key]!r}.")
        tensors = _read_tensors(*reversed(files[WEIGHTS_NAME]), config, config_path)
        words = _read_words(model_id, files.get(VOCAB_NAME), config, config_path, hub_kwargs)
    module = cls.from_packed_codes(
        tensors["packed_codes"].to(device),
        tensors["codebook"].to(device=device, dtype=dtype),
        padding_idx=config.get("padding_idx"),
    )
    module.words = words
    logger.info("Loaded %s from %s", module.extra_repr(), model_id)
    return module


def _read_words(
    model_id: str,
    opened: tuple[Path, BinaryIO] | None,
    config: dict[str, Any],
    config_path: Path,
    hub_kwargs: dict[str, Any],
) -> list[str] | None:
    """The words in vocab.txt, checked against config.json's ``vocab_sha256``: required when it is a checksum,
    ignored when it is null; artifacts saved before it existed use a vocab.txt they have, if it has one per row.

    `opened` is the directory's vocab.txt, opened with the other files (None if it has none); from the Hub it is
    downloaded only when needed.
    """
    if "vocab_sha256" in config and config["vocab_sha256"] is None:
        return None
    required = "vocab_sha256" in config
    if os.path.isdir(model_id):
        if opened is None:
            if required:
                raise ArtifactError(
                    Path(model_id) / VOCAB_NAME,
                    f"missing, but {config_path.name} records its SHA-256; save the artifact again.",
                )
            return None
        path, file = opened
    else:
        try:
            path = Path(hf_hub_download(repo_id=model_id, filename=VOCAB_NAME, **hub_kwargs))
        except (RemoteEntryNotFoundError, EntryNotFoundError) as error:
            if required:
                raise ArtifactError(
                    f"{model_id}/{VOCAB_NAME}",
                    f"not found in the Hub repository, but {config_path.name} records its SHA-256; push the "
                    "artifact again with CompressedEmbedding.push_to_hub.",
                ) from error
            return None
        file = None
    data = path.read_bytes() if file is None else file.read()
    if required and hashlib.sha256(data).hexdigest() != config["vocab_sha256"]:
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
