"""`compress`: learn codes and codebooks for an embedding matrix with one of the registered methods.

Also the input normalisation shared with `dccl_hf.metrics`: a tensor, numpy array (np.memmap included) or
`nn.Embedding` is read in row chunks, checked (2-D, non-empty, numeric, finite) and turned into float32 on the
target device without copying the matrix more than once.
"""

from __future__ import annotations

import contextlib
import hashlib
import inspect
import logging
import math
import os
import time
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import torch
from torch import nn

from dccl_hf.checks import as_integer, is_integer, is_real
from dccl_hf.embedding import CompressedEmbedding
from dccl_hf.fidelity.calibration import Calibration, row_weights_from_calibration
from dccl_hf.fidelity.models import Tokenizer
from dccl_hf.learning.additive import CHUNK_ELEMENTS, fit_additive
from dccl_hf.learning.checkpoint import JobCheckpointer, ShardCheckpointer
from dccl_hf.learning.dccl import fit_dccl
from dccl_hf.learning.distributed import (
    all_sum,
    count_ranks,
    gather_rows,
    is_sharded,
    rank_and_size,
    shard_rows,
    together,
)
from dccl_hf.learning.metric import MetricTransform
from dccl_hf.packing import bits_per_code

logger = logging.getLogger(__name__)

MatrixLike = torch.Tensor | np.ndarray | nn.Embedding
FitFunction = Callable[..., tuple[torch.Tensor, torch.Tensor]]

#: The learning methods `compress` knows, by name. Each follows the shared `fit` signature (docs/architecture.md).
METHODS: dict[str, FitFunction] = {"additive": fit_additive, "dccl": fit_dccl}

#: What each method option must be: (kind, smallest allowed value, whether the smallest is excluded); kind
#: "int" or "real" (finite); None is accepted where the option's default is None.
OPTION_RULES: dict[str, tuple[str, float, bool]] = {
    **dict.fromkeys(("icm_sweeps", "perturbations", "local_search", "kmeans_iterations"), ("int", 0, False)),
    **dict.fromkeys(("polish_rounds", "validation_size"), ("int", 0, False)),
    **dict.fromkeys(("beam_size", "init_beam_size", "patience"), ("int", 1, False)),
    **dict.fromkeys(("max_epochs", "batch_size", "hidden_size"), ("int", 1, False)),
    **dict.fromkeys(("ridge", "tolerance", "min_improvement"), ("real", 0.0, False)),
    **dict.fromkeys(
        ("learning_rate", "max_grad_norm", "tau", "init_scale", "checkpoint_every"), ("real", 0.0, True)
    ),
}

#: Rows whose root mean square lies outside [1/NORMAL_SCALE, NORMAL_SCALE] are learned scaled by a power of two.
NORMAL_SCALE = 2.0**10


def compress(
    matrix: MatrixLike,
    num_codebooks: int = 32,
    codebook_size: int = 16,
    *,
    method: str = "additive",
    device: str | torch.device = "auto",
    seed: int = 0,
    weights: torch.Tensor | np.ndarray | list[float] | None = None,
    tokenizer: Tokenizer | None = None,
    calibration: Calibration | None = None,
    metric: torch.Tensor | np.ndarray | None = None,
    padding_idx: int | None = None,
    time_budget: float | None = None,
    max_iterations: int | None = None,
    checkpoint_dir: str | os.PathLike[str] | None = None,
    progress: bool = True,
    **options: Any,
) -> CompressedEmbedding:
    """Compress `matrix` (V×D) into M = `num_codebooks` codes per row over codebooks of K = `codebook_size`.

    `matrix` is a torch tensor, a numpy array (a read-only `np.memmap` is read in chunks, copied once) or an
    `nn.Embedding` (its `padding_idx` is used unless one is given). `weights` (V,) ≥ 0 are row importances, e.g.
    token frequencies: heavier rows are reconstructed better; instead of weights, a `calibration` corpus (texts or
    a text file, tokenized with `tokenizer`) or token counts give weights by token frequency
    (`dccl_hf.fidelity.row_weights_from_calibration`), and the additive method then minimises the weighted squared
    error (``objective="squared"``): a text's embedding error sums its tokens' errors, and frequency-weighted
    squared error is its expectation (on all-MiniLM-L6-v2 at 128 bits/row, held-out sentence cosine 0.9841 with
    the distance objective, 0.9868 with the squared one). `metric` (D, D), positive semi-definite, makes the
    error that counts (e − ê)ᵀ·metric·(e − ê), e.g. a model's sensitivity to its input embeddings
    (`dccl_hf.fidelity.embedding_sensitivity`); see `dccl_hf.learning.metric`. The `padding_idx` row gets weight 0
    and decodes to zeros. The additive method learns on centred rows (float32 precision; the mean joins codebook
    0), copying the matrix once if it was not copied already. `time_budget` (seconds) and `max_iterations` bound
    the run; with `checkpoint_dir` the run saves its state there and a rerun of the same job resumes from it.
    Learning runs on `device` ("auto": CUDA when there is one); the module is returned on the input's device.
    `options` go to the method (see `METHODS`).

    Data parallel: called on every rank of an initialised `torch.distributed` process group (e.g. under
    `torchrun`), each with a contiguous block of the rows in rank order (and `weights` for those rows, or the same
    `calibration` on every rank; `padding_idx` counts in the whole table), the additive method learns one
    codebook from all shards and every rank gets the module for the whole table (see
    `dccl_hf.learning.distributed`); `checkpoint_dir` then holds one checkpoint per rank, resumed by as many
    ranks (`dccl_hf.learning.checkpoint.ShardCheckpointer`).
    """
    started = time.monotonic()
    fit = _method(method)
    num_codebooks, codebook_size, seed, padding_idx, max_iterations = (
        as_integer(value) for value in (num_codebooks, codebook_size, seed, padding_idx, max_iterations)
    )
    check_arguments(num_codebooks, codebook_size, seed, time_budget, max_iterations)
    _check_options(method, fit, options)
    if checkpoint_dir is not None:
        _check_checkpoint_dir(checkpoint_dir)
    if padding_idx is None and isinstance(matrix, nn.Embedding):
        padding_idx = matrix.padding_idx
    target = resolve_device(device)
    copied = _shared_tensor(_source(matrix), target) is None
    with together(target):  # with rows sharded, a rank that fails here stops the others too
        data = load_matrix(matrix, target)
        if is_sharded() and method != "additive":
            raise ValueError(
                f"compress with rows sharded over torch.distributed ranks does not support method={method!r} "
                "(only 'additive' learns data-parallel)."
            )
    rows, dim = data.shape
    shards = shard_rows(rows, target)
    offset = sum(shards[: rank_and_size()[0]])  # this shard's first row in the whole table
    with together(target):
        matrix_digest = _digest(data) if checkpoint_dir is not None else None
        padding = _padding_index(padding_idx, sum(shards))
        local_padding = padding - offset if padding is not None and 0 <= padding - offset < rows else None
        if calibration is not None:
            if weights is not None:
                raise TypeError(
                    "Pass either calibration (row weights from token counts) or weights, not both."
                )
            # Token ids count in the whole table; with rows sharded, each rank keeps its block of the weights.
            weights = row_weights_from_calibration(
                tokenizer, calibration, sum(shards), progress=progress and rank_and_size()[0] == 0
            )[offset : offset + rows]
            if method == "additive":
                options.setdefault("objective", "squared")
        row_weights = _row_weights(weights, rows, local_padding, target)
        transform = None if metric is None else MetricTransform.from_metric(metric, dim, target)
    _check_some_weight_positive(row_weights, padding, target)
    if transform is not None:
        data = transform.apply(data, in_place=copied)
        copied = True
    mean = None
    if method == "additive":
        # The additive learner scores codes by expanding squared distances in float32, which loses precision
        # when a large common offset dominates the rows: it learns on centred rows, and the mean joins
        # codebook 0 (exact: every row uses one of its codewords). `dccl` gets the rows as the paper does.
        data, mean = _centred(data, in_place=copied)
        copied = True
    data, scale = _normalised(data, in_place=copied)
    generator = torch.Generator(device=target).manual_seed(seed)
    checkpointer = None
    if checkpoint_dir is not None:
        job = {
            "method": method,
            "num_codebooks": num_codebooks,
            "codebook_size": codebook_size,
            "shape": [rows, dim],
            "seed": seed,
            "device": target.type,  # the random generator's state is device-specific
            "padding_idx": padding,
            "matrix_sha256": matrix_digest,
            "weights_sum": None if row_weights is None else _fingerprint(row_weights.unsqueeze(1)),
            "metric_sum": None if transform is None else _fingerprint(transform.root.float()),
            "options": dict(sorted(options.items())),
        }
        if is_sharded():
            job["shard"] = [*rank_and_size(), offset]  # rank, ranks, first row; "shape" is the shard's
            checkpointer = ShardCheckpointer(checkpoint_dir, job, target)
        else:
            checkpointer = JobCheckpointer(checkpoint_dir, job)
    logger.info(
        "Compressing %d×%d rows into M=%d codes of K=%d with method %r on %s",
        rows,
        dim,
        num_codebooks,
        codebook_size,
        method,
        target,
    )
    with contextlib.ExitStack() as locked:
        if checkpointer is not None:
            with together(target):  # another run holding one rank's files stops every rank
                locked.enter_context(checkpointer.lock())
        codes, codebook = fit(
            data,
            num_codebooks,
            codebook_size,
            weights=row_weights,
            generator=generator,
            checkpointer=checkpointer,
            progress=progress,
            # Reading, checking and weighting the matrix count against the budget too.
            time_budget=None if time_budget is None else max(0.0, time_budget - (time.monotonic() - started)),
            max_iterations=max_iterations,
            **options,
        )
    if scale != 1.0:
        codebook = (codebook.double() * scale).to(codebook.dtype)
    if mean is not None:
        codebook[0] += mean
    if transform is not None:
        codebook = transform.restore_codebook(codebook)
    compressed = CompressedEmbedding.from_codes(gather_rows(codes), codebook, padding_idx=padding)
    if compressed.compression_ratio < 1:
        logger.warning(
            "The compressed table is larger than the dense one (compression ratio %.2fx: %d bits of codes per "
            "row and a codebook of M·K·D = %d values, against %d×%d float32 values); use fewer codebooks or "
            "smaller ones.",
            compressed.compression_ratio,
            compressed.bits_per_row,
            num_codebooks * codebook_size * dim,
            compressed.num_embeddings,
            dim,
        )
    return compressed.to(_input_device(matrix))


def resolve_device(device: str | torch.device) -> torch.device:
    """`"auto"` → CUDA when available, else CPU; anything else is parsed as a torch device. A CUDA device
    without an index gets the current one, so that every tensor of a run compares equal to it."""
    if isinstance(device, str) and device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError) as error:
        raise ValueError(
            f"device must be 'auto' or a torch device such as 'cpu' or 'cuda:0', got {device!r}."
        ) from error
    if resolved.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(
                f"device {device!r}: CUDA is not available to this torch build or machine; use 'cpu' (or 'auto')."
            )
        if resolved.index is None:
            resolved = torch.device("cuda", torch.cuda.current_device())
        elif resolved.index >= torch.cuda.device_count():
            raise ValueError(
                f"device {device!r}: this machine has {torch.cuda.device_count()} CUDA device(s)."
            )
    elif resolved.type == "meta":
        raise ValueError("device 'meta' holds no data to learn from; use 'cpu', 'cuda' or 'auto'.")
    elif resolved.type != "cpu":
        try:
            torch.empty(1, device=resolved)
        except (
            Exception
        ) as error:  # each backend fails in its own way: NotImplementedError, AssertionError, …
            reason = str(error).split("\n", 1)[0].split(". ", 1)[0][:200]
            raise ValueError(
                f"device {device!r} is not available to this torch build or machine ({reason}); use 'cpu' or 'auto'."
            ) from error
    return resolved


def _input_device(matrix: MatrixLike) -> torch.device:
    """Where the caller's matrix lives (CPU for numpy arrays), which is where the compressed module is returned."""
    source = matrix.weight if isinstance(matrix, nn.Embedding) else matrix
    return source.device if isinstance(source, torch.Tensor) else torch.device("cpu")


def matrix_shape(matrix: MatrixLike) -> tuple[int, int]:
    """(rows, dimensions) of a validated 2-D, non-empty, numeric matrix."""
    return _check_layout(_source(matrix))


def iter_row_chunks(
    matrix: MatrixLike, device: torch.device, chunk_rows: int | None = None
) -> Iterator[tuple[int, torch.Tensor]]:
    """Yield (first row, float32 chunk on `device`) over the rows, raising on the first NaN/Inf row."""
    source = _source(matrix)
    rows, dim = _check_layout(source)
    step = chunk_rows or max(1, CHUNK_ELEMENTS // dim)
    for start in range(0, rows, step):
        chunk = _float_chunk(source[start : start + step], device)
        _check_finite(chunk, start)
        yield start, chunk


def load_matrix(matrix: MatrixLike, device: torch.device) -> torch.Tensor:
    """The whole matrix as a float32 (N, D) tensor on `device`.

    A float32 tensor already on `device` (or a writable in-memory float32 numpy array, for CPU) is used as is,
    without a copy; anything else (other dtypes, other devices, memory-mapped files) is converted chunk by chunk
    into a single preallocated tensor, so the matrix exists at most twice: the input and this copy.
    """
    source = _source(matrix)
    rows, dim = _check_layout(source)
    shared = _shared_tensor(source, device)
    if shared is not None:
        for _ in iter_row_chunks(shared, device):
            pass  # iterating checks every chunk for NaN/Inf
        return shared
    data = torch.empty((rows, dim), dtype=torch.float32, device=device)
    for start, chunk in iter_row_chunks(source, device):
        data[start : start + chunk.shape[0]] = chunk
    return data


def _centred(data: torch.Tensor, *, in_place: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """The rows minus their mean (in place when allowed, else into one new tensor) and that mean (D,)."""
    rows, dim = data.shape
    step = max(1, CHUNK_ELEMENTS // dim)
    total = torch.zeros(dim + 1, dtype=torch.float64, device=data.device)
    total[dim] = rows
    for start in range(0, rows, step):
        total[:dim] += data[start : start + step].double().sum(dim=0)
    all_sum(total)  # over every shard's rows
    mean = (total[:dim] / total[dim]).to(data.dtype)
    result = data if in_place else torch.empty_like(data)
    for start in range(0, rows, step):
        torch.sub(data[start : start + step], mean, out=result[start : start + step])
    return result, mean


def _method(method: str) -> FitFunction:
    if method not in METHODS:
        raise ValueError(f"Unknown method {method!r}; choose one of {', '.join(sorted(METHODS))}.")
    return METHODS[method]


def check_arguments(
    num_codebooks: int, codebook_size: int, seed: int, time_budget: float | None, max_iterations: int | None
) -> None:
    """Raise a clear error for arguments `compress` cannot use, before any data is read."""
    if not is_integer(num_codebooks) or num_codebooks < 1:
        raise ValueError(f"num_codebooks must be a positive integer, got {num_codebooks!r}.")
    bits_per_code(codebook_size)
    if not is_integer(seed):
        raise TypeError(f"seed must be an integer, got {seed!r}.")
    if time_budget is not None and not is_real(time_budget):
        raise TypeError(f"time_budget must be a number of seconds (int or float), got {time_budget!r}.")
    if time_budget is not None and not time_budget > 0:
        raise ValueError(f"time_budget must be a positive number of seconds, got {time_budget!r}.")
    if max_iterations is not None and (not is_integer(max_iterations) or max_iterations < 0):
        raise ValueError(f"max_iterations must be a non-negative integer, got {max_iterations!r}.")


def _check_options(method: str, fit: FitFunction, options: dict[str, Any]) -> None:
    """Refuse options the method does not take, and values it cannot use (negative counts, NaN, wrong types)."""
    parameters = inspect.signature(fit).parameters
    accepted = [
        name
        for name, parameter in parameters.items()
        if parameter.kind == parameter.KEYWORD_ONLY and name not in _SHARED_FIT_ARGUMENTS
    ]
    open_ended = any(parameter.kind == parameter.VAR_KEYWORD for parameter in parameters.values())
    for name, value in options.items():
        if name not in accepted and not open_ended:
            raise TypeError(
                f"method {method!r} has no option {name!r}; its options are {', '.join(accepted)}."
            )
        if value is None and name in parameters and parameters[name].default is None:
            continue
        if name == "objective" and value not in ("distance", "squared"):
            raise ValueError(f"objective must be 'distance' or 'squared', got {value!r}.")
        if name == "refit_codebook" and not isinstance(value, bool):
            raise TypeError(f"refit_codebook must be True or False, got {value!r}.")
        if name not in OPTION_RULES:
            continue
        kind, smallest, excluded = OPTION_RULES[name]
        if kind == "int":
            valid = is_integer(as_integer(value)) and value >= smallest
        else:
            valid = (
                is_real(value)
                and math.isfinite(value)
                and (value > smallest if excluded else value >= smallest)
            )
        if not valid:
            bound = f"{'>' if excluded else '>='} {smallest:g}"
            what = "an integer" if kind == "int" else "a finite number"
            raise ValueError(f"{name} must be {what} {bound}, got {value!r}.")


_SHARED_FIT_ARGUMENTS = ("weights", "generator", "checkpointer", "progress", "time_budget", "max_iterations")


def _check_checkpoint_dir(checkpoint_dir: str | os.PathLike[str]) -> None:
    """Refuse an empty path (it would mean the working directory) and paths that cannot become a directory,
    before any work is done."""
    name = os.fspath(checkpoint_dir)
    if not isinstance(name, str) or not name.strip():
        raise ValueError(
            f"checkpoint_dir {checkpoint_dir!r} is empty; give a directory for the run's checkpoints, or None."
        )
    path = os.path.abspath(name)
    while not os.path.exists(path):
        path = os.path.dirname(path)
    if not os.path.isdir(path):
        raise ValueError(
            f"checkpoint_dir {name}: {path} exists and is not a directory; give a directory for the checkpoints."
        )


def _normalised(data: torch.Tensor, *, in_place: bool) -> tuple[torch.Tensor, float]:
    """The rows scaled by a power of two when their root mean square is far from 1, and the factor that scales a
    codebook learned on them back (1.0 when untouched).

    Both learners score codes by squared distances in float32 and use absolute tolerances (ridge, floors), so
    rows at 1e19 overflow and rows at 1e-30 vanish; decoding is linear, so learning on scaled rows and scaling
    the codebook back is exact, and a power of two scales without rounding.
    """
    rows, dim = data.shape
    step = max(1, CHUNK_ELEMENTS // dim)
    total = torch.zeros(2, dtype=torch.float64, device=data.device)
    total[1] = rows * dim
    for start in range(0, rows, step):
        total[0] += data[start : start + step].double().square().sum()
    all_sum(total)  # over every shard's rows
    rms = math.sqrt(float(total[0]) / float(total[1]))
    if rms == 0.0 or 1.0 / NORMAL_SCALE <= rms <= NORMAL_SCALE:
        return data, 1.0
    factor = 2.0 ** -round(math.log2(rms))
    logger.info(
        "Rows have a root mean square of %.3g: learning them scaled by 2^%d", rms, round(math.log2(factor))
    )
    result = data if in_place else torch.empty_like(data)
    for start in range(0, rows, step):
        result[start : start + step] = data[start : start + step].double() * factor
    return result, 1.0 / factor


def _source(matrix: MatrixLike) -> torch.Tensor | np.ndarray:
    if isinstance(matrix, nn.Embedding):
        return matrix.weight.detach()
    if isinstance(matrix, torch.Tensor):
        return matrix.detach()
    if isinstance(matrix, np.ndarray):
        return matrix
    raise TypeError(
        "matrix must be a torch.Tensor, a numpy array (np.memmap included) or an nn.Embedding, "
        f"got {type(matrix).__name__}."
    )


def _check_layout(source: torch.Tensor | np.ndarray) -> tuple[int, int]:
    if source.ndim != 2:
        raise ValueError(f"matrix must be 2-D (rows × dimensions), got shape {tuple(source.shape)}.")
    rows, dim = (int(size) for size in source.shape)
    if rows == 0 or dim == 0:
        raise ValueError(f"matrix is empty (shape {rows}×{dim}); it needs at least one row and one column.")
    if isinstance(source, torch.Tensor):
        numeric = source.dtype != torch.bool and not source.dtype.is_complex
    else:
        numeric = source.dtype.kind in "fiu"
    if not numeric:
        raise TypeError(f"matrix must hold real numbers, got dtype {source.dtype}.")
    return rows, dim


def _shared_tensor(source: torch.Tensor | np.ndarray, device: torch.device) -> torch.Tensor | None:
    """The input itself as a float32 tensor on `device` when that needs no copy, else None."""
    if isinstance(source, torch.Tensor):
        return source if source.dtype == torch.float32 and source.device == device else None
    in_memory = not isinstance(source, np.memmap) and source.flags.writeable and source.flags.c_contiguous
    if device.type == "cpu" and in_memory and source.dtype == np.float32 and source.dtype.isnative:
        return torch.from_numpy(source)
    return None


def _float_chunk(block: torch.Tensor | np.ndarray, device: torch.device) -> torch.Tensor:
    if isinstance(block, np.ndarray):
        # np.array copies just this chunk, so read-only memmaps are never handed to torch.
        block = torch.from_numpy(np.array(block, dtype=np.float32))
    return block.to(device=device, dtype=torch.float32)


def _check_finite(chunk: torch.Tensor, start: int) -> None:
    bad = ~torch.isfinite(chunk).all(dim=1)
    if bool(bad.any()):
        row = start + int(bad.nonzero()[0, 0])
        raise ValueError(f"matrix row {row} contains NaN or Inf values; fix or drop that row and try again.")


def _padding_index(padding_idx: int | None, rows: int) -> int | None:
    if padding_idx is None:
        return None
    if not is_integer(padding_idx) or not -rows <= padding_idx < rows:
        raise ValueError(
            f"padding_idx must be an integer row index in [-{rows}, {rows}), got {padding_idx!r}."
        )
    return padding_idx % rows


def _row_weights(
    weights: torch.Tensor | np.ndarray | list[float] | None,
    rows: int,
    padding_idx: int | None,
    device: torch.device,
) -> torch.Tensor | None:
    """Validated float32 (rows,) weights on `device` with the padding row zeroed; None means uniform."""
    if weights is None and padding_idx is None:
        return None
    if weights is None:
        values = torch.ones(rows, device=device)
    else:
        if isinstance(weights, torch.Tensor):
            values = weights.detach().to(device=device, dtype=torch.float32, copy=True)
        else:
            values = torch.as_tensor(np.asarray(weights, dtype=np.float32), device=device).clone()
        if values.ndim != 1 or values.shape[0] != rows:
            raise ValueError(
                f"weights must hold one value per row ({rows}), got shape {tuple(values.shape)}."
            )
        for invalid, what in ((~torch.isfinite(values), "finite"), (values < 0, "non-negative")):
            if bool(invalid.any()):
                index = int(invalid.nonzero()[0, 0])
                raise ValueError(f"weights must be {what}; weight {index} is {float(values[index])}.")
    if padding_idx is not None:
        values[padding_idx] = 0.0
    return values


def _check_some_weight_positive(
    row_weights: torch.Tensor | None, padding_idx: int | None, device: torch.device
) -> None:
    """Raise on every rank if no row of the whole table has a positive weight (one shard's may all be zero)."""
    if not count_ranks(row_weights is None or bool((row_weights > 0).any()), device):
        padding = " (the padding row counts as zero)" if padding_idx is not None else ""
        raise ValueError(f"All row weights are zero{padding}; give some row a positive weight.")


def _digest(data: torch.Tensor) -> str:
    """SHA-256 of the matrix's float32 values as given (before centring or a metric), row chunk by row chunk: a
    checkpoint resumes only on the same rows in the same order."""
    digest = hashlib.sha256()
    for _, chunk in iter_row_chunks(data, torch.device("cpu")):
        digest.update(chunk.contiguous().numpy().tobytes())
    return digest.hexdigest()


def _fingerprint(data: torch.Tensor) -> list[float]:
    """Sum, sum of squares and row-position-weighted sum of a matrix of derived values (weights, a metric's root),
    rounded so that a rerun reproduces them whatever the summation order; the last tells reordered rows apart."""
    total = torch.zeros(3, dtype=torch.float64, device=data.device)
    for start, chunk in iter_row_chunks(data, data.device):
        wide = chunk.double()
        positions = torch.arange(
            start + 1, start + 1 + wide.shape[0], dtype=torch.float64, device=data.device
        )
        total += torch.stack([wide.sum(), wide.square().sum(), positions @ wide.sum(1)])
    return [float(f"{value:.6g}") for value in total.tolist()]
