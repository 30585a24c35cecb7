import logging
import re
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

import dccl_hf.learning as learning
from dccl_hf import CompressedEmbedding
from dccl_hf.fidelity.calibration import weights_from_counts
from dccl_hf.learning import compress, iter_row_chunks, load_matrix, resolve_device
from dccl_hf.learning.clock import device_clock

CPU = torch.device("cpu")
#: Budgets per method: a dccl iteration is one mini-batch step, an additive one a whole refit/re-encode round.
SHORT = {"additive": 3, "dccl": 20}


def clustered(rows: int, dim: int, seed: int = 0, centres: int = 8, spread: float = 3.0) -> torch.Tensor:
    """Rows near a few random centres: compressible structure, like real embeddings."""
    generator = torch.Generator().manual_seed(seed)
    points = torch.randn(centres, dim, generator=generator) * spread
    labels = torch.randint(centres, (rows,), generator=generator)
    return points[labels] + 0.1 * torch.randn(rows, dim, generator=generator)


def mean_distance(module: CompressedEmbedding, matrix: torch.Tensor) -> float:
    return float(torch.linalg.vector_norm(module.reconstruct().detach() - matrix, dim=1).mean())


@pytest.fixture
def recorded(monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    """Register a fake method that records what `compress` hands to methods and returns fixed codes."""
    calls: dict[str, Any] = {}

    def fake(
        matrix: torch.Tensor, num_codebooks: int, codebook_size: int, **kwargs: Any
    ) -> tuple[torch.Tensor, torch.Tensor]:
        calls.update(matrix=matrix, **kwargs)
        codes = torch.arange(matrix.shape[0]).remainder(codebook_size).unsqueeze(1).repeat(1, num_codebooks)
        return codes, torch.ones(num_codebooks, codebook_size, matrix.shape[1])

    monkeypatch.setitem(learning.METHODS, "fake", fake)
    return calls


def test_returns_compressed_embedding_that_reconstructs_the_matrix() -> None:
    matrix = clustered(300, 6)
    module = compress(matrix, 4, 16, max_iterations=3, progress=False)
    assert isinstance(module, CompressedEmbedding)
    assert (module.num_embeddings, module.embedding_dim, module.num_codebooks, module.codebook_size) == (
        300,
        6,
        4,
        16,
    )
    assert module.codebook.device == matrix.device  # returned where the input lives, whatever it learned on
    scale = float(torch.linalg.vector_norm(matrix - matrix.mean(0), dim=1).mean())
    assert mean_distance(module, matrix) < 0.5 * scale


def test_cuda_without_an_index_resolves_to_the_current_device(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 1)
    assert resolve_device("cuda") == torch.device("cuda", 1)
    assert resolve_device("cuda:0") == torch.device("cuda", 0)
    assert resolve_device("cpu") == CPU
    with pytest.raises(ValueError, match="has 2 CUDA device"):
        resolve_device("cuda:2")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ValueError, match="CUDA is not available"):
        resolve_device("cuda")
    assert resolve_device("auto") == CPU


def test_a_table_larger_than_its_input_is_warned_about(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="dccl_hf"):
        compress(clustered(40, 3), 2, 64, max_iterations=1, progress=False)  # K > rows works, but grows
    assert "larger than the dense one" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="dccl_hf"):
        compress(clustered(2000, 16), 2, 16, max_iterations=1, progress=False)
    assert "larger than the dense one" not in caplog.text


def test_a_refit_system_beyond_the_machine_memory_is_refused() -> None:
    with pytest.raises(ValueError, match=r"M·K = 2,097,152 codewords.*GiB"):
        compress(clustered(300, 5), 32, 65536, progress=False)


def test_device_clock_waits_for_queued_cuda_work(monkeypatch: pytest.MonkeyPatch) -> None:
    synchronized: list[torch.device] = []
    monkeypatch.setattr(torch.cuda, "synchronize", synchronized.append)
    device_clock(CPU)
    assert synchronized == []
    device_clock(torch.device("cuda", 0))
    assert synchronized == [torch.device("cuda", 0)]


def test_a_large_common_offset_costs_no_precision() -> None:
    # Scores expand squared distances in float32: learning on these rows uncentred made the error 70% larger.
    generator = torch.Generator().manual_seed(0)
    matrix = torch.randn(2000, 16, generator=generator) @ torch.randn(16, 16, generator=generator)
    shifted = matrix + 1e4
    before = shifted.clone()
    plain = compress(matrix, 8, 16, max_iterations=2, progress=False)
    offset = compress(shifted, 8, 16, max_iterations=2, progress=False)
    assert torch.equal(shifted, before)  # the caller's tensor is not centred in place
    assert mean_distance(offset, shifted) == pytest.approx(mean_distance(plain, matrix), rel=0.01)


def test_additive_learns_on_the_loaded_copy_centred_in_place(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    loaded: list[torch.Tensor] = []
    real_load = learning.load_matrix

    def load(matrix: Any, device: torch.device) -> torch.Tensor:
        loaded.append(real_load(matrix, device))
        return loaded[-1]

    seen: dict[str, Any] = {}

    def zeros(matrix: torch.Tensor, num_codebooks: int, codebook_size: int, **_: Any) -> Any:
        seen["matrix"] = matrix.clone()
        seen["pointer"] = matrix.data_ptr()
        codes = torch.zeros(matrix.shape[0], num_codebooks, dtype=torch.long)
        return codes, torch.zeros(num_codebooks, codebook_size, matrix.shape[1])

    monkeypatch.setattr(learning, "load_matrix", load)
    monkeypatch.setitem(learning.METHODS, "additive", zeros)
    array = (np.random.default_rng(0).standard_normal((50, 3)) + 100.0).astype(np.float32)
    np.save(tmp_path / "m.npy", array)
    module = compress(np.load(tmp_path / "m.npy", mmap_mode="r"), 2, 4, progress=False)
    assert seen["pointer"] == loaded[0].data_ptr()  # a memmap is copied once, then centred in place
    torch.testing.assert_close(seen["matrix"].mean(dim=0), torch.zeros(3), atol=1e-4, rtol=0)
    # All-zero codebooks decode every row to the mean, which codebook 0 got back.
    expected = torch.from_numpy(array.mean(axis=0)).expand(50, 3)
    torch.testing.assert_close(module.reconstruct().detach(), expected)


def test_every_input_type_gives_the_same_result(tmp_path: Path) -> None:
    matrix = clustered(64, 5).numpy()
    mapped = np.lib.format.open_memmap(tmp_path / "m.npy", mode="w+", dtype=np.float64, shape=matrix.shape)
    mapped[:] = matrix
    mapped.flush()
    read_only = np.load(tmp_path / "m.npy", mmap_mode="r")
    inputs = [
        torch.from_numpy(matrix),
        matrix,
        matrix.astype(np.float16).astype(np.float64),
        read_only,
        nn.Embedding.from_pretrained(torch.from_numpy(matrix)),
    ]
    results = [compress(x, 2, 4, method="dccl", max_iterations=5, progress=False).codes for x in inputs]
    assert torch.equal(results[0], results[1])
    assert torch.equal(results[0], results[3])
    assert torch.equal(results[0], results[4])
    assert results[2].shape == (64, 2)


def test_load_matrix_shares_memory_when_it_can_and_copies_memmaps_once(tmp_path: Path) -> None:
    tensor = torch.randn(10, 3)
    assert load_matrix(tensor, CPU).data_ptr() == tensor.data_ptr()
    array = np.random.default_rng(0).standard_normal((10, 3)).astype(np.float32)
    assert np.shares_memory(load_matrix(array, CPU).numpy(), array)
    np.save(tmp_path / "m.npy", array)
    mapped = np.load(tmp_path / "m.npy", mmap_mode="r")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # torch warns when handed a non-writable array
        loaded = load_matrix(mapped, CPU)
    assert not np.shares_memory(loaded.numpy(), mapped)
    np.testing.assert_array_equal(loaded.numpy(), array)
    assert load_matrix(array.astype(np.float64), CPU).dtype == torch.float32


def test_chunked_conversion_covers_every_row(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(learning, "CHUNK_ELEMENTS", 7)
    array = np.arange(30 * 3, dtype=np.float64).reshape(30, 3)
    starts = [start for start, _ in iter_row_chunks(array, CPU)]
    assert starts == list(range(0, 30, 2))
    np.testing.assert_array_equal(load_matrix(array, CPU).numpy(), array.astype(np.float32))


@pytest.mark.parametrize(
    ("matrix", "error", "message"),
    [
        (torch.zeros(5), ValueError, "2-D"),
        (torch.zeros(2, 3, 4), ValueError, "2-D"),
        (torch.zeros(0, 4), ValueError, "empty"),
        (np.zeros((4, 0), dtype=np.float32), ValueError, "empty"),
        (np.array([["a", "b"]]), TypeError, "real numbers"),
        (torch.zeros(3, 2, dtype=torch.complex64), TypeError, "real numbers"),
        ([[1.0, 2.0]], TypeError, "nn.Embedding"),
    ],
)
def test_bad_matrices_are_clear_errors(matrix: object, error: type[Exception], message: str) -> None:
    with pytest.raises(error, match=message):
        compress(matrix, 2, 4, progress=False)  # type: ignore[arg-type]


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_non_finite_values_name_the_row(bad: float, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(learning, "CHUNK_ELEMENTS", 8)  # the bad row sits in a later chunk
    matrix = np.ones((10, 4), dtype=np.float32)
    matrix[7, 2] = bad
    with pytest.raises(ValueError, match="row 7 contains NaN or Inf"):
        compress(matrix, 2, 4, progress=False)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"codebook_size": 12}, "power of two"),
        ({"codebook_size": 1}, "power of two"),
        ({"num_codebooks": 0}, "num_codebooks"),
        ({"method": "nope"}, "additive, dccl"),
        ({"weights": [1.0, -1.0, 1.0, 1.0]}, "non-negative; weight 1"),
        ({"weights": [1.0, float("nan"), 1.0, 1.0]}, "finite; weight 1"),
        ({"weights": [1.0, 1.0]}, "one value per row \\(4\\)"),
        ({"weights": torch.zeros(4)}, "All row weights are zero"),
        ({"padding_idx": 4}, "padding_idx"),
        ({"device": "gpu-please"}, "device"),
        ({"time_budget": 0}, "time_budget"),
        ({"max_iterations": -1}, "max_iterations"),
    ],
)
def test_bad_arguments_are_clear_errors(kwargs: dict[str, Any], message: str) -> None:
    arguments: dict[str, Any] = {"num_codebooks": 2, "codebook_size": 4, "progress": False, **kwargs}
    with pytest.raises(ValueError, match=message):
        compress(torch.ones(4, 3), **arguments)


def test_methods_get_the_matrix_weights_and_options(recorded: dict[str, Any]) -> None:
    matrix = torch.randn(6, 3)
    compress(matrix, 2, 4, method="fake", weights=np.arange(6.0), time_budget=5.0, max_iterations=3, beam=7)
    assert recorded["matrix"].data_ptr() == matrix.data_ptr()
    assert torch.equal(recorded["weights"], torch.arange(6.0))
    assert (recorded["max_iterations"], recorded["beam"]) == (3, 7)
    # The method gets what is left of the budget after reading and checking the matrix.
    assert 4.0 < recorded["time_budget"] <= 5.0
    assert recorded["checkpointer"] is None
    assert isinstance(recorded["generator"], torch.Generator)


def test_calibration_counts_become_frequency_weights(recorded: dict[str, Any]) -> None:
    counts = torch.tensor([0.0, 3.0, 1.0, 0.0, 7.0, 1.0])
    compress(torch.randn(6, 3), 2, 4, method="fake", calibration=counts, progress=False)
    torch.testing.assert_close(recorded["weights"], weights_from_counts(counts))


def test_calibration_makes_the_additive_objective_squared(
    recorded: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(learning.METHODS, "additive", learning.METHODS["fake"])
    counts = torch.tensor([0.0, 3.0, 1.0, 0.0])
    compress(torch.randn(4, 3), 2, 4, calibration=counts, progress=False)
    assert recorded["objective"] == "squared"
    compress(torch.randn(4, 3), 2, 4, calibration=counts, objective="distance", progress=False)
    assert recorded["objective"] == "distance"
    recorded.clear()
    compress(torch.randn(4, 3), 2, 4, weights=counts + 1, progress=False)
    assert "objective" not in recorded
    compress(torch.randn(4, 3), 2, 4, method="fake", calibration=counts, progress=False)
    assert "objective" not in recorded


def test_calibration_texts_are_counted_with_the_tokenizer(recorded: dict[str, Any]) -> None:
    def tokenizer(texts: list[str], **kwargs: object) -> dict[str, list[list[int]]]:
        return {"input_ids": [[int(word) for word in text.split()] for text in texts]}

    compress(
        torch.randn(4, 3),
        2,
        4,
        method="fake",
        tokenizer=tokenizer,
        calibration=["1 1 3", "1"],
        progress=False,
    )
    counts = torch.tensor([0.0, 3.0, 0.0, 1.0])
    torch.testing.assert_close(recorded["weights"], weights_from_counts(counts))


def test_calibration_conflicts_and_missing_tokenizer_are_clear_errors() -> None:
    with pytest.raises(TypeError, match="either calibration"):
        compress(torch.randn(4, 3), 2, 4, calibration=torch.ones(4), weights=torch.ones(4))
    with pytest.raises(ValueError, match="need a tokenizer"):
        compress(torch.randn(4, 3), 2, 4, calibration=["some text"])


def test_padding_row_gets_zero_weight_and_decodes_to_zeros(recorded: dict[str, Any]) -> None:
    weights = torch.full((5,), 2.0)
    module = compress(torch.randn(5, 3), 2, 4, method="fake", padding_idx=-2, weights=weights)
    assert torch.equal(recorded["weights"], torch.tensor([2.0, 2.0, 2.0, 0.0, 2.0]))
    assert torch.equal(weights, torch.full((5,), 2.0)), "the caller's weights must not be modified"
    assert module.padding_idx == 3
    assert torch.equal(module.reconstruct()[3], torch.zeros(3))
    assert torch.equal(module.reconstruct()[0], torch.full((3,), 2.0))


def test_embedding_padding_idx_is_used_by_default(recorded: dict[str, Any]) -> None:
    embedding = nn.Embedding(6, 3, padding_idx=0)
    module = compress(embedding, 2, 4, method="fake")
    assert module.padding_idx == 0
    assert recorded["weights"][0] == 0
    assert bool((recorded["weights"][1:] == 1).all())


@pytest.mark.parametrize("method", ["additive", "dccl"])
@pytest.mark.parametrize(
    ("name", "matrix", "num_codebooks", "codebook_size"),
    [
        ("K larger than the rows", clustered(5, 4), 2, 16),
        ("M·K close to V", clustered(64, 4), 4, 16),
        ("duplicate rows", clustered(4, 3).repeat(20, 1), 2, 4),
        ("all-zero rows", torch.cat([clustered(30, 4), torch.zeros(10, 4)]), 2, 8),
        ("D=1", clustered(50, 1), 3, 4),
        ("a single row", torch.ones(1, 3), 2, 4),
    ],
)
def test_edge_cases(
    method: str, name: str, matrix: torch.Tensor, num_codebooks: int, codebook_size: int
) -> None:
    module = compress(
        matrix, num_codebooks, codebook_size, method=method, max_iterations=SHORT[method], progress=False
    )
    reconstruction = module.reconstruct().detach()
    assert reconstruction.shape == matrix.shape, name
    assert bool(torch.isfinite(reconstruction).all()), name
    codes = module.codes
    assert int(codes.min()) >= 0, name
    assert int(codes.max()) < codebook_size, name
    if method == "additive":  # the default must handle these exactly or nearly so
        scale = float(torch.linalg.vector_norm(matrix, dim=1).mean())
        assert mean_distance(module, matrix) <= 0.25 * scale + 1e-6, name


@pytest.mark.parametrize("method", ["additive", "dccl"])
def test_seed_determines_the_result(method: str) -> None:
    matrix = clustered(200, 6)
    runs = [
        compress(matrix, 4, 8, method=method, seed=seed, max_iterations=SHORT[method], progress=False)
        for seed in (1, 1, 2)
    ]
    assert torch.equal(runs[0].codes, runs[1].codes)
    assert torch.equal(runs[0].codebook, runs[1].codebook)
    assert not torch.equal(runs[0].codebook, runs[2].codebook)


@pytest.mark.parametrize("method", ["additive", "dccl"])
def test_an_interrupted_run_resumes_to_the_same_result(method: str, tmp_path: Path) -> None:
    matrix = clustered(200, 6)
    options: dict[str, Any] = {"method": method, "progress": False}
    straight = compress(matrix, 4, 8, max_iterations=SHORT[method], **options)
    compress(matrix, 4, 8, max_iterations=SHORT[method] // 2, checkpoint_dir=tmp_path, **options)
    assert (tmp_path / "checkpoint.pt").exists()
    resumed = compress(matrix, 4, 8, max_iterations=SHORT[method], checkpoint_dir=tmp_path, **options)
    assert torch.equal(straight.codes, resumed.codes)
    torch.testing.assert_close(straight.codebook, resumed.codebook, rtol=0, atol=0)


def test_a_checkpoint_with_other_method_options_is_refused(tmp_path: Path) -> None:
    matrix = clustered(100, 4)
    arguments: dict[str, Any] = {"progress": False, "max_iterations": 1, "checkpoint_dir": tmp_path}
    compress(matrix, 2, 4, **arguments)
    with pytest.raises(ValueError, match="options"):
        compress(matrix, 2, 4, objective="squared", **arguments)


@pytest.mark.parametrize(
    "change",
    [
        {"seed": 1},
        {"num_codebooks": 2},
        {"method": "additive"},
        {"padding_idx": 0},
        {"weights": torch.rand(100)},
    ],
)
def test_a_checkpoint_of_another_job_is_refused(change: dict[str, Any], tmp_path: Path) -> None:
    matrix = clustered(100, 4)
    arguments: dict[str, Any] = {"num_codebooks": 4, "method": "dccl", "progress": False, "max_iterations": 2}
    compress(matrix, codebook_size=4, checkpoint_dir=tmp_path, **arguments)
    with pytest.raises(ValueError, match="different job"):
        compress(matrix, codebook_size=4, checkpoint_dir=tmp_path, **{**arguments, **change})
    with pytest.raises(ValueError, match="matrix_sha256"):
        compress(matrix * 2, codebook_size=4, checkpoint_dir=tmp_path, **arguments)
    with pytest.raises(ValueError, match="matrix_sha256"):  # the same rows in another order
        compress(matrix.flip(0), codebook_size=4, checkpoint_dir=tmp_path, **arguments)
    weights = torch.arange(100.0)
    compress(matrix, codebook_size=4, checkpoint_dir=tmp_path / "w", weights=weights, **arguments)
    with pytest.raises(ValueError, match="weights_sum"):  # the same weights on other rows
        compress(matrix, codebook_size=4, checkpoint_dir=tmp_path / "w", weights=weights.flip(0), **arguments)


@pytest.mark.parametrize("method", ["additive", "dccl"])
@pytest.mark.parametrize("scale", [1e19, 1e-30, 1e-40])
def test_extreme_scales_learn_as_well_as_unit_scale(method: str, scale: float) -> None:
    matrix = clustered(200, 6)
    options: dict[str, Any] = {"method": method, "max_iterations": SHORT[method], "progress": False}
    unit = compress(matrix, 4, 8, **options)
    scaled_matrix = (matrix.double() * scale).float()  # 1e-40 is a float32 denormal
    scaled = compress(scaled_matrix, 4, 8, **options)

    def relative_error(module: CompressedEmbedding, original: torch.Tensor) -> float:
        rebuilt = module(torch.arange(original.shape[0])).detach().double()
        return float((rebuilt - original.double()).norm() / original.double().norm())

    assert np.isfinite(scaled.codebook.detach().numpy()).all()
    assert relative_error(scaled, scaled_matrix) < relative_error(unit, matrix) + 0.02


def test_numpy_integers_are_accepted_for_shapes_and_padding() -> None:
    matrix = clustered(50, 4)
    module = compress(
        matrix, np.int64(2), np.int32(4), padding_idx=np.int64(3), seed=np.int64(1), max_iterations=1
    )
    assert (module.num_codebooks, module.codebook_size, module.padding_idx) == (2, 4, 3)
    assert all(
        type(value) is int for value in (module.num_codebooks, module.codebook_size, module.padding_idx)
    )


@pytest.mark.parametrize(
    ("options", "error", "message"),
    [
        ({"time_budget": "5"}, TypeError, "time_budget must be a number of seconds"),
        ({"ridge": float("nan")}, ValueError, "ridge must be a finite number >= 0, got nan"),
        ({"perturbations": -2}, ValueError, "perturbations must be an integer >= 0, got -2"),
        ({"kmeans_iterations": -3}, ValueError, "kmeans_iterations must be an integer >= 0"),
        ({"beam_size": 0}, ValueError, "beam_size must be an integer >= 1"),
        ({"tolerance": "small"}, ValueError, "tolerance must be a finite number"),
        ({"objective": "cosine"}, ValueError, "objective must be 'distance' or 'squared'"),
        ({"learning_rate": 0.0, "method": "dccl"}, ValueError, "learning_rate must be a finite number > 0"),
        ({"batch_size": 2.5, "method": "dccl"}, ValueError, "batch_size must be an integer >= 1"),
        ({"beam": 4}, TypeError, "method 'additive' has no option 'beam'; its options are beam_size"),
        ({"device": "mps"}, ValueError, "device 'mps' is not available"),
        ({"device": "meta"}, ValueError, "device 'meta' holds no data"),
    ],
)
def test_bad_arguments_are_refused_before_the_matrix_is_read(
    options: dict[str, Any], error: type[Exception], message: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_work(*args: object, **kwargs: object) -> None:
        raise AssertionError("the matrix was read before the arguments were checked")

    monkeypatch.setattr(learning, "load_matrix", no_work)
    with pytest.raises(error, match=re.escape(message)):
        compress(clustered(20, 3), 2, 4, progress=False, **options)


def test_a_time_budgeted_run_shows_its_budget_as_the_progress_total(
    capsys: pytest.CaptureFixture[str],
) -> None:
    compress(clustered(200, 6), 4, 8, time_budget=7.0, max_iterations=1, progress=True)
    assert "/7 s [" in capsys.readouterr().err  # seconds of the budget, so tqdm's ETA is the deadline
