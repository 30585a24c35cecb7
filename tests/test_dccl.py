from pathlib import Path
from typing import Any

import pytest
import test_learning as learning_tests
import torch
import torch.nn.functional as F

import dccl_hf.learning.dccl as dccl
from dccl_hf.learning.checkpoint import Checkpointer
from dccl_hf.learning.dccl import CodeAutoencoder, export_codes, fit_dccl, hard_code_distances


def clustered(rows: int, dim: int, seed: int = 0) -> torch.Tensor:
    return learning_tests.clustered(rows, dim, seed, centres=16, spread=2.0)


def distances(matrix: torch.Tensor, codes: torch.Tensor, codebook: torch.Tensor) -> torch.Tensor:
    decoded = codebook[torch.arange(codebook.shape[0]), codes].sum(dim=1)
    return torch.linalg.vector_norm(decoded - matrix, dim=1)


def test_model_follows_the_reference_architecture_and_init() -> None:
    model = CodeAutoencoder(dim=10, num_codebooks=8, codebook_size=4, hidden_size=16)
    model.reset_parameters(0.01, torch.Generator().manual_seed(0))
    assert model.hidden.weight.shape == (16, 10)
    assert model.logit_layer.weight.shape == (32, 16)
    assert model.codebook.shape == (32, 10)
    for weight in (model.hidden.weight, model.logit_layer.weight, model.codebook):
        assert float(weight.detach().abs().max()) <= 0.01
        assert float(weight.detach().std()) > 0.003
    assert not model.hidden.bias.any()
    assert not model.logit_layer.bias.any()
    rows = torch.randn(5, 10)
    expected = torch.log(F.softplus(model.logit_layer(torch.tanh(model.hidden(rows)))) + 1e-8).view(5, 8, 4)
    torch.testing.assert_close(model.logits(rows), expected)
    other = CodeAutoencoder(10, 8, 4, 16)
    other.reset_parameters(0.01, torch.Generator().manual_seed(0))
    assert torch.equal(other.codebook, model.codebook), "initialisation must follow the generator"


def test_soft_path_mixes_codewords_and_hard_path_decodes_argmax_codes() -> None:
    model = CodeAutoencoder(6, 3, 4, 6)
    model.reset_parameters(0.5, torch.Generator().manual_seed(1))
    rows = torch.randn(7, 6)
    codes = model.hard_codes(rows)
    assert torch.equal(codes, model.logits(rows).argmax(-1))
    one_hot = F.one_hot(codes, 4).flatten(1).float()
    torch.testing.assert_close(model.decode(codes), one_hot @ model.codebook)
    soft = model(rows, torch.Generator().manual_seed(2), tau=1.0)
    assert soft.shape == (7, 6)
    assert not torch.allclose(soft, model.decode(codes)), "training samples soft Gumbel mixtures"
    again = model(rows, torch.Generator().manual_seed(2), tau=1.0)
    assert torch.equal(soft, again), "the Gumbel noise comes from the given generator"


def test_training_reduces_the_hard_code_distance() -> None:
    matrix = clustered(512, 8)
    options: dict[str, Any] = {
        "progress": False,
        "learning_rate": 1e-2,
        "max_grad_norm": 1.0,
        "refit_codebook": False,
        "polish_rounds": 0,
    }
    start_codes, start_codebook = fit_dccl(matrix, 4, 16, max_iterations=0, **options)
    codes, codebook = fit_dccl(matrix, 4, 16, max_epochs=40, **options)
    assert codes.dtype == torch.int64
    assert codes.shape == (512, 4)
    assert codebook.shape == (4, 16, 8)
    before = float(distances(matrix, start_codes, start_codebook).mean())
    after = float(distances(matrix, codes, codebook).mean())
    assert after < 0.5 * before


def test_exports_the_argmax_codes_of_the_best_validated_model(tmp_path: Path) -> None:
    matrix = clustered(400, 6)
    checkpointer = Checkpointer(tmp_path)
    codes, codebook = fit_dccl(
        matrix,
        4,
        8,
        checkpointer=checkpointer,
        max_epochs=6,
        progress=False,
        learning_rate=1e-2,
        max_grad_norm=1.0,
        refit_codebook=False,
        polish_rounds=0,
    )
    saved = checkpointer.load()
    assert saved is not None
    progress = saved["progress"]
    assert progress["finished"]
    assert progress["epoch"] == 6
    best = CodeAutoencoder(6, 4, 8, 16)
    best.load_state_dict(progress["best_model"])
    assert torch.equal(codes, export_codes(best, matrix))
    torch.testing.assert_close(codebook, best.codebook.detach().view(4, 8, 6))
    validation = progress["validation_rows"]
    assert validation.numel() == 40
    assert not set(validation.tolist()) & set(progress["training_rows"].tolist())
    held_out = float(hard_code_distances(best, matrix[validation]).mean())
    assert held_out == pytest.approx(progress["best_distance"], rel=1e-5)


def test_codebook_refit_is_the_least_squares_solution_for_the_hard_codes() -> None:
    matrix = clustered(300, 5)
    weights = torch.rand(300, generator=torch.Generator().manual_seed(1))
    options: dict[str, Any] = {"max_epochs": 3, "progress": False, "weights": weights, "polish_rounds": 0}
    codes, raw = fit_dccl(matrix, 3, 4, refit_codebook=False, **options)
    refit_codes, refit = fit_dccl(matrix, 3, 4, **options)
    assert torch.equal(codes, refit_codes)
    one_hot = F.one_hot(codes, 4).flatten(1).double()
    residual = (one_hot @ refit.view(12, 5).double() - matrix.double()) * weights.double()[:, None]
    gradient = one_hot.T @ residual  # zero at the weighted least-squares solution (normal equations)
    assert float(gradient.abs().max()) < 1e-3 * float(
        (one_hot.T @ (matrix.double() * weights[:, None])).abs().max()
    )
    error = (weights * distances(matrix, codes, refit).square()).sum()
    assert float(error) < float((weights * distances(matrix, codes, raw).square()).sum())


def test_the_default_export_is_polished_and_lowers_the_error_further() -> None:
    matrix = clustered(400, 6)
    options: dict[str, Any] = {"max_epochs": 3, "progress": False}
    argmax = distances(matrix, *fit_dccl(matrix, 4, 8, polish_rounds=0, **options)).mean()
    one_round = distances(matrix, *fit_dccl(matrix, 4, 8, polish_rounds=1, **options)).mean()
    default = distances(matrix, *fit_dccl(matrix, 4, 8, **options)).mean()
    assert float(one_round) < 0.9 * float(argmax)
    assert float(default) <= float(one_round)


def test_early_stopping_on_a_plateau(tmp_path: Path) -> None:
    checkpointer = Checkpointer(tmp_path)
    fit_dccl(
        clustered(100, 4), 2, 4, checkpointer=checkpointer, patience=2, min_improvement=0.99, progress=False
    )
    saved = checkpointer.load()
    assert saved is not None
    assert saved["progress"]["finished"]
    assert (
        saved["progress"]["epoch"] == 3
    )  # one epoch sets the best, then `patience` epochs without a 99 % gain


def test_resumes_exactly_after_a_ctrl_c(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    matrix = clustered(300, 5)
    options: dict[str, Any] = {"max_epochs": 3, "progress": False}
    straight = fit_dccl(matrix, 4, 4, **options)
    real_step = dccl._step
    calls = 0

    def interrupted_step(*args: Any) -> torch.Tensor:
        nonlocal calls
        calls += 1
        if calls == 7:  # mid-way through the second epoch
            raise KeyboardInterrupt
        return real_step(*args)

    monkeypatch.setattr(dccl, "_step", interrupted_step)
    checkpointer = Checkpointer(tmp_path)
    with pytest.raises(KeyboardInterrupt):
        fit_dccl(matrix, 4, 4, checkpointer=checkpointer, **options)
    saved = checkpointer.load()
    assert saved is not None
    assert saved["progress"]["iteration"] == 6
    monkeypatch.setattr(dccl, "_step", real_step)
    resumed = fit_dccl(matrix, 4, 4, checkpointer=checkpointer, **options)
    assert torch.equal(straight[0], resumed[0])
    assert torch.equal(straight[1], resumed[1])


def test_time_budget_stops_the_run() -> None:
    codes, codebook = fit_dccl(clustered(2000, 4), 2, 4, time_budget=1e-6, progress=False)
    assert codes.shape == (2000, 2)
    assert bool(torch.isfinite(codebook).all())


def test_time_budget_keeps_time_for_the_export(monkeypatch: pytest.MonkeyPatch) -> None:
    matrix = clustered(2000, 4)
    options: dict[str, Any] = {"progress": False, "max_epochs": 2}
    untrained = fit_dccl(matrix, 2, 4, max_iterations=0, **options)
    assert not torch.equal(fit_dccl(matrix, 2, 4, time_budget=60.0, **options)[0], untrained[0])
    estimates = []
    estimate = dccl._export_time

    def export_takes_a_minute(*args: Any) -> float:
        estimates.append(estimate(*args))
        return 60.0

    monkeypatch.setattr(dccl, "_export_time", export_takes_a_minute)
    budgeted = fit_dccl(matrix, 2, 4, time_budget=60.0, **options)
    assert len(estimates) == 1
    assert estimates[0] > 0
    assert torch.equal(budgeted[0], untrained[0]), "a budget the export needs whole leaves no training step"
    assert torch.equal(budgeted[1], untrained[1])


def test_weights_favour_heavy_rows_and_skip_zero_weight_rows(tmp_path: Path) -> None:
    # Heavy rows cluster in dims 0-2, light rows in dims 3-5: 8 codewords cannot serve all 16 clusters.
    generator = torch.Generator().manual_seed(0)
    centres = torch.zeros(16, 6)
    centres[:8, :3] = 3 * torch.randn(8, 3, generator=generator)
    centres[8:, 3:] = 3 * torch.randn(8, 3, generator=generator)
    labels = torch.cat([torch.arange(200) % 8, 8 + torch.arange(200) % 8])
    matrix = centres[labels] + 0.1 * torch.randn(400, 6, generator=generator)
    weights = torch.ones(400)
    weights[:200] = 50.0
    weights[390:] = 0.0
    checkpointer = Checkpointer(tmp_path)
    options: dict[str, Any] = {
        "max_epochs": 30,
        "learning_rate": 1e-2,
        "max_grad_norm": 1.0,
        "progress": False,
    }
    codes, codebook = fit_dccl(matrix, 1, 8, weights=weights, checkpointer=checkpointer, **options)
    trained = (checkpointer.load() or {})["progress"]["training_rows"]
    assert int(trained.max()) < 390, "zero-weight rows are not trained on"
    assert codes.shape == (400, 1)
    weighted = distances(matrix, codes, codebook)
    unweighted = distances(matrix, *fit_dccl(matrix, 1, 8, **options))
    assert float(weighted[:200].mean()) < 0.85 * float(weighted[200:390].mean())
    assert float(weighted[:200].mean()) < float(unweighted[:200].mean())


def test_refuses_a_checkpoint_of_another_method_or_shape(tmp_path: Path) -> None:
    checkpointer = Checkpointer(tmp_path)
    checkpointer.save({"method": "additive"})
    with pytest.raises(ValueError, match="not 'dccl'"):
        fit_dccl(torch.randn(20, 3), 2, 4, checkpointer=checkpointer, progress=False)
    checkpointer.path.unlink()
    fit_dccl(torch.randn(20, 3), 2, 4, checkpointer=checkpointer, max_iterations=1, progress=False)
    with pytest.raises(ValueError, match="different model"):
        fit_dccl(torch.randn(20, 3), 2, 8, checkpointer=checkpointer, progress=False)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"codebook_size": 6}, "power of two"),
        ({"batch_size": 0}, "batch_size"),
        ({"polish_rounds": -1}, "polish_rounds"),
    ],
)
def test_bad_arguments(kwargs: dict[str, Any], message: str) -> None:
    arguments: dict[str, Any] = {"num_codebooks": 2, "codebook_size": 4, **kwargs}
    with pytest.raises(ValueError, match=message):
        fit_dccl(torch.randn(10, 3), **arguments)
