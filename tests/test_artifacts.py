"""Standalone artifacts: layout, bit-identical round trips, strict loading, atomic saving, and the Hub."""

from __future__ import annotations

import hashlib
import json
import math
import os
import threading
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from hub_server import HubServer
from huggingface_hub import HfApi, ModelCard
from safetensors import safe_open
from safetensors.torch import save_file

from dccl_hf import CompressedEmbedding
from dccl_hf.artifacts import CONFIG_NAME, WEIGHTS_NAME, ArtifactError


def make_module(
    num_embeddings: int = 40,
    embedding_dim: int = 6,
    num_codebooks: int = 5,
    codebook_size: int = 16,
    dtype: torch.dtype = torch.float32,
    padding_idx: int | None = None,
    seed: int = 0,
) -> CompressedEmbedding:
    generator = torch.Generator().manual_seed(seed)
    codes = torch.randint(codebook_size, (num_embeddings, num_codebooks), generator=generator)
    codebook = torch.randn(num_codebooks, codebook_size, embedding_dim, generator=generator).to(dtype)
    return CompressedEmbedding.from_codes(codes, codebook, padding_idx=padding_idx)


def assert_identical(loaded: CompressedEmbedding, original: CompressedEmbedding) -> None:
    assert torch.equal(loaded.packed_codes, original.packed_codes)
    assert torch.equal(loaded.codes, original.codes)
    assert loaded.codebook.dtype == original.codebook.dtype
    assert torch.equal(loaded.codebook, original.codebook)
    assert loaded.padding_idx == original.padding_idx
    ids = torch.arange(original.num_embeddings).flip(0).reshape(-1, 2)
    with torch.no_grad():
        assert torch.equal(loaded(ids), original(ids))


def rewrite_weights(directory: Path, tensors: dict[str, torch.Tensor]) -> None:
    """Replace model.safetensors and record its new checksum, so only the tensor checks can object."""
    save_file(tensors, directory / WEIGHTS_NAME)
    edit_config(directory, model_sha256=hashlib.sha256((directory / WEIGHTS_NAME).read_bytes()).hexdigest())


def edit_config(directory: Path, **changes: object) -> None:
    path = directory / CONFIG_NAME
    config = json.loads(path.read_text())
    config.update(changes)
    path.write_text(json.dumps(config))


@pytest.fixture
def saved(tmp_path: Path) -> tuple[CompressedEmbedding, Path]:
    module = make_module(padding_idx=2)
    directory = tmp_path / "artifact"
    module.save_pretrained(directory)
    return module, directory


@pytest.mark.parametrize(
    ("num_embeddings", "num_codebooks", "codebook_size"),
    [(37, 32, 16), (50, 5, 8), (20, 3, 4096), (9, 7, 2), (11, 4, 256)],
)
def test_packed_codes_take_ceil_m_log2k_over_8_bytes_per_row(
    tmp_path: Path, num_embeddings: int, num_codebooks: int, codebook_size: int
) -> None:
    module = make_module(num_embeddings, 3, num_codebooks, codebook_size)
    module.save_pretrained(tmp_path)
    row_bytes = math.ceil(num_codebooks * math.log2(codebook_size) / 8)
    with safe_open(tmp_path / WEIGHTS_NAME, framework="pt") as file:
        assert sorted(file.keys()) == ["codebook", "packed_codes"]
        packed = file.get_tensor("packed_codes")
        codebook = file.get_tensor("codebook")
    assert packed.dtype == torch.uint8
    assert tuple(packed.shape) == (num_embeddings, row_bytes)
    assert packed.numel() * packed.element_size() == row_bytes * num_embeddings
    assert tuple(codebook.shape) == (num_codebooks, codebook_size, 3)


@pytest.mark.parametrize(
    ("codebook_size", "dtype", "padding_idx"),
    [(2, torch.float32, None), (16, torch.float32, 0), (256, torch.bfloat16, 5), (32, torch.float16, None)],
)
def test_save_load_forward_is_bit_identical(
    tmp_path: Path, codebook_size: int, dtype: torch.dtype, padding_idx: int | None
) -> None:
    module = make_module(num_codebooks=6, codebook_size=codebook_size, dtype=dtype, padding_idx=padding_idx)
    module.save_pretrained(tmp_path / "artifact")
    loaded = CompressedEmbedding.from_pretrained(tmp_path / "artifact")
    assert isinstance(loaded, CompressedEmbedding)
    assert_identical(loaded, module)


def test_config_records_shape_dtype_and_versions(saved: tuple[CompressedEmbedding, Path]) -> None:
    module, directory = saved
    config = json.loads((directory / CONFIG_NAME).read_text())
    assert config["library_name"] == "dccl_hf"
    assert config["format_version"] == 1
    assert config["dccl_hf_version"]
    assert (config["num_embeddings"], config["embedding_dim"]) == (40, 6)
    assert (config["num_codebooks"], config["codebook_size"]) == (5, 16)
    assert config["padding_idx"] == 2
    assert config["codebook_dtype"] == "float32"
    assert config["bits_per_row"] == module.bits_per_row == 20
    assert config["model_sha256"] == hashlib.sha256((directory / WEIGHTS_NAME).read_bytes()).hexdigest()
    umask = os.umask(0)
    os.umask(umask)
    assert (directory / CONFIG_NAME).stat().st_mode & 0o777 == 0o666 & ~umask
    assert directory.stat().st_mode & 0o777 == 0o777 & ~umask


def test_model_card_has_library_tags_shapes_and_sizes(saved: tuple[CompressedEmbedding, Path]) -> None:
    module, directory = saved
    card = ModelCard.load(directory / "README.md")
    assert card.data.library_name == "dccl_hf"
    assert {"dccl", "embedding-compression"} <= set(card.data.tags)
    text = card.text
    assert "40 × 6" in text
    assert "5 × 16" in text
    assert f"| bits per row | {module.bits_per_row} |" in text
    assert f"| bytes of codes | {40 * 3} |" in text
    assert f"| bytes of codebook | {5 * 16 * 6 * 4} |" in text
    assert f"| compression ratio vs fp32 | {module.compression_ratio:.1f}× |" in text


def test_truncated_safetensors_is_an_error_naming_the_file(saved: tuple[CompressedEmbedding, Path]) -> None:
    _, directory = saved
    weights = directory / WEIGHTS_NAME
    weights.write_bytes(weights.read_bytes()[:-17])
    with pytest.raises(ArtifactError, match=r"model\.safetensors: truncated or corrupted"):
        CompressedEmbedding.from_pretrained(directory)


def test_flipped_byte_in_weights_fails_the_checksum(saved: tuple[CompressedEmbedding, Path]) -> None:
    _, directory = saved
    weights = directory / WEIGHTS_NAME
    data = bytearray(weights.read_bytes())
    data[-3] ^= 0x40
    weights.write_bytes(bytes(data))
    with pytest.raises(ArtifactError, match="SHA-256 differs"):
        CompressedEmbedding.from_pretrained(directory)


def test_config_without_padding_idx_loads_without_padding_in_artifacts_without_a_config_copy(
    saved: tuple[CompressedEmbedding, Path],
) -> None:
    module, directory = saved
    rewrite_weights(directory, {"packed_codes": module.packed_codes, "codebook": module.codebook.detach()})
    path = directory / CONFIG_NAME
    config = json.loads(path.read_text())
    del config["padding_idx"]
    path.write_text(json.dumps(config))
    assert CompressedEmbedding.from_pretrained(directory).padding_idx is None


@pytest.mark.parametrize(
    "changes",
    [
        {"padding_idx": 3},
        {"padding_idx": None},
        {"dccl_hf_version": "0.0.1"},
        {"bits_per_row": 21},
        {"library_name": "other"},
        {"extra": 1},
    ],
)
def test_any_edited_config_field_is_detected(
    saved: tuple[CompressedEmbedding, Path], changes: dict[str, object]
) -> None:
    _, directory = saved
    edit_config(directory, **changes)
    with pytest.raises(ArtifactError, match=rf"config\.json: field\(s\) '{next(iter(changes))}' differ"):
        CompressedEmbedding.from_pretrained(directory)


def test_a_removed_config_field_is_detected(saved: tuple[CompressedEmbedding, Path]) -> None:
    _, directory = saved
    path = directory / CONFIG_NAME
    config = json.loads(path.read_text())
    del config["padding_idx"]
    path.write_text(json.dumps(config))
    with pytest.raises(ArtifactError, match=r"field\(s\) 'padding_idx' differ"):
        CompressedEmbedding.from_pretrained(directory)


@pytest.mark.parametrize("checksum", [None, "", "0" * 63, "A" * 64, 12, "g" * 64])
def test_missing_or_malformed_checksum_is_an_error(
    saved: tuple[CompressedEmbedding, Path], checksum: object
) -> None:
    _, directory = saved
    path = directory / CONFIG_NAME
    config = json.loads(path.read_text())
    if checksum is None:
        del config["model_sha256"]
    else:
        config["model_sha256"] = checksum
    path.write_text(json.dumps(config))
    with pytest.raises(
        ArtifactError, match=r"config\.json: 'model_sha256' must be the 64 lowercase hex digits"
    ):
        CompressedEmbedding.from_pretrained(directory)


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf])
def test_non_finite_codebook_is_refused(saved: tuple[CompressedEmbedding, Path], value: float) -> None:
    _, directory = saved
    broken = make_module(padding_idx=2)
    with torch.no_grad():
        broken.codebook[1, 7, 4] = value
    broken.save_pretrained(directory)
    with pytest.raises(
        ArtifactError,
        match=r"model\.safetensors: tensor 'codebook' holds NaN or infinity \(codebook 1, codeword 7\)",
    ):
        CompressedEmbedding.from_pretrained(directory)


def test_saves_are_byte_deterministic(tmp_path: Path) -> None:
    for name in ("first", "second"):
        make_module(padding_idx=2).save_pretrained(tmp_path / name)
    for filename in (CONFIG_NAME, WEIGHTS_NAME, "README.md"):
        assert (tmp_path / "first" / filename).read_bytes() == (tmp_path / "second" / filename).read_bytes()
    with safe_open(tmp_path / "first" / WEIGHTS_NAME, framework="pt") as file:  # still a standard file
        assert file.metadata()["format"] == "pt"
        assert json.loads(file.metadata()["dccl_hf_config"])["padding_idx"] == 2


def test_loading_draws_no_random_codes(
    saved: tuple[CompressedEmbedding, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    module, directory = saved

    def refuse(*args: object, **kwargs: object) -> torch.Tensor:
        raise AssertionError("loading drew random codes only to overwrite them")

    monkeypatch.setattr(torch, "randint", refuse)
    assert_identical(CompressedEmbedding.from_pretrained(directory), module)


def test_weights_header_is_checked_before_tensors_are_read(saved: tuple[CompressedEmbedding, Path]) -> None:
    _, directory = saved
    weights = directory / WEIGHTS_NAME
    data = weights.read_bytes()
    weights.write_bytes((10**15).to_bytes(8, "little") + data[8:])
    with pytest.raises(
        ArtifactError, match=r"truncated or corrupted safetensors file .*header of 1000000000000000 bytes"
    ):
        CompressedEmbedding.from_pretrained(directory)
    edit_config(directory, num_embeddings=10**12)  # would need a terabyte of codes
    weights.write_bytes(data)
    with pytest.raises(ArtifactError, match=r"implies \(1000000000000, 3\)"):
        CompressedEmbedding.from_pretrained(directory)


@pytest.mark.parametrize("wrong_k", [32, 8])
def test_config_with_wrong_codebook_size_is_an_error(
    saved: tuple[CompressedEmbedding, Path], wrong_k: int
) -> None:
    _, directory = saved
    edit_config(directory, codebook_size=wrong_k)
    with pytest.raises(ArtifactError, match=rf"codebook_size={wrong_k}.*disagree"):
        CompressedEmbedding.from_pretrained(directory)


def test_config_with_invalid_codebook_size_is_an_error(saved: tuple[CompressedEmbedding, Path]) -> None:
    _, directory = saved
    edit_config(directory, codebook_size=12)
    with pytest.raises(ArtifactError, match=r"config\.json: codebook_size must be a power of two"):
        CompressedEmbedding.from_pretrained(directory)


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"num_embeddings": 41}, r"packed_codes' has shape \(40, 3\).*implies \(41, 3\)"),
        ({"embedding_dim": 0}, "'embedding_dim' must be a positive integer"),
        ({"codebook_dtype": "float16"}, "'codebook' has dtype float32, expected float16"),
        ({"codebook_dtype": "int8"}, "'codebook_dtype' must be one of"),
        ({"padding_idx": 40}, r"'padding_idx' must be null or in \[0, 40\)"),
        ({"format_version": 99}, "newer than this dccl_hf supports"),
        ({"format_version": None}, "not a dccl_hf artifact config"),
        ({"format_version": 0}, r"no positive integer 'format_version' \(0\)"),
        ({"format_version": -1}, r"no positive integer 'format_version' \(-1\)"),
    ],
)
def test_config_disagreeing_or_invalid_is_an_error(
    saved: tuple[CompressedEmbedding, Path], changes: dict[str, object], message: str
) -> None:
    _, directory = saved
    edit_config(directory, **changes)
    with pytest.raises(ArtifactError, match=message):
        CompressedEmbedding.from_pretrained(directory)


def test_config_that_is_not_json_is_an_error(saved: tuple[CompressedEmbedding, Path]) -> None:
    _, directory = saved
    (directory / CONFIG_NAME).write_text('{"format_version": 1,')
    with pytest.raises(ArtifactError, match=r"config\.json: not valid JSON"):
        CompressedEmbedding.from_pretrained(directory)
    (directory / CONFIG_NAME).write_text("[" * 100_000 + "]" * 100_000)
    with pytest.raises(ArtifactError, match=r"config\.json: not valid JSON"):
        CompressedEmbedding.from_pretrained(directory)
    (directory / CONFIG_NAME).write_text(" " * (1 << 21) + "{}")
    with pytest.raises(ArtifactError, match=r"config\.json: 2097154 bytes, far more than a config holds"):
        CompressedEmbedding.from_pretrained(directory)


def test_missing_extra_and_mistyped_tensors_are_errors(saved: tuple[CompressedEmbedding, Path]) -> None:
    module, directory = saved
    packed = module.packed_codes.clone()
    codebook = module.codebook.detach().clone()
    rewrite_weights(directory, {"packed_codes": packed})
    with pytest.raises(ArtifactError, match=r"missing \['codebook'\], unexpected \[\]"):
        CompressedEmbedding.from_pretrained(directory)
    rewrite_weights(directory, {"packed_codes": packed, "codebook": codebook, "scale": torch.ones(1)})
    with pytest.raises(ArtifactError, match=r"unexpected \['scale'\]"):
        CompressedEmbedding.from_pretrained(directory)
    rewrite_weights(directory, {"packed_codes": packed.to(torch.int16), "codebook": codebook})
    with pytest.raises(ArtifactError, match="'packed_codes' has dtype int16, expected uint8"):
        CompressedEmbedding.from_pretrained(directory)


def test_codes_beyond_codebook_size_are_an_error(saved: tuple[CompressedEmbedding, Path]) -> None:
    module, directory = saved
    packed = module.packed_codes.clone()
    packed[7, -1] |= 0xF0  # 5 codes × 4 bits = 20 bits: the high nibble of the last byte holds no code
    rewrite_weights(directory, {"packed_codes": packed, "codebook": module.codebook.detach()})
    with pytest.raises(ArtifactError, match="row 7 of packed_codes sets bits past its last code"):
        CompressedEmbedding.from_pretrained(directory)


def test_missing_directory_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ArtifactError, match="no such directory"):
        CompressedEmbedding.from_pretrained(tmp_path / "nowhere")


@pytest.mark.parametrize("filename", [CONFIG_NAME, WEIGHTS_NAME])
def test_missing_file_is_an_error_naming_it(saved: tuple[CompressedEmbedding, Path], filename: str) -> None:
    _, directory = saved
    (directory / filename).unlink()
    with pytest.raises(ArtifactError, match=rf"{filename}: missing"):
        CompressedEmbedding.from_pretrained(directory)


def test_from_pretrained_keyword_arguments(saved: tuple[CompressedEmbedding, Path]) -> None:
    module, directory = saved
    wide = CompressedEmbedding.from_pretrained(directory, dtype=torch.float64, device="cpu")
    assert wide.codebook.dtype == torch.float64
    assert torch.equal(wide.codebook, module.codebook.double())
    with pytest.raises(TypeError, match="unexpected keyword argument 'map_location'"):
        CompressedEmbedding.from_pretrained(directory, map_location="cpu")
    with pytest.raises(ValueError, match="num_codebooks=4 was passed but"):
        CompressedEmbedding.from_pretrained(directory, num_codebooks=4)


def test_failed_save_leaves_the_existing_artifact_untouched(
    saved: tuple[CompressedEmbedding, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    _, directory = saved
    before = {path.name: path.read_bytes() for path in directory.iterdir()}
    other = make_module(seed=1)

    def fail(*args: object, **kwargs: object) -> ModelCard:
        raise RuntimeError("disk full")

    monkeypatch.setattr(other, "generate_model_card", fail)
    with pytest.raises(RuntimeError, match="disk full"):
        other.save_pretrained(directory)
    with pytest.raises(RuntimeError, match="disk full"):
        other.save_pretrained(directory.parent / "fresh")
    assert {path.name: path.read_bytes() for path in directory.iterdir()} == before
    assert sorted(path.name for path in directory.parent.iterdir()) == ["artifact"]


def test_saving_over_an_artifact_replaces_it_and_keeps_other_files(
    saved: tuple[CompressedEmbedding, Path],
) -> None:
    _, directory = saved
    (directory / "notes.txt").write_text("mine")
    (directory / "README.md").write_text("an old card")
    (directory / "vocab.txt").write_text("words of the old artifact\n")
    other = make_module(num_embeddings=12, codebook_size=4, seed=3)
    other.save_pretrained(directory)
    assert (directory / "notes.txt").read_text() == "mine"
    assert "12 × 6" in (directory / "README.md").read_text()
    assert not (directory / "vocab.txt").exists()  # it belonged to the replaced artifact
    assert_identical(CompressedEmbedding.from_pretrained(directory), other)
    assert sorted(path.name for path in directory.parent.iterdir()) == ["artifact"]


def test_saving_over_a_directory_with_a_subdirectory_is_refused(
    saved: tuple[CompressedEmbedding, Path],
) -> None:
    module, directory = saved
    (directory / "runs").mkdir()
    with pytest.raises(IsADirectoryError, match="holds the directory 'runs'"):
        make_module(seed=1).save_pretrained(directory)
    assert_identical(CompressedEmbedding.from_pretrained(directory), module)


def test_saving_into_the_working_directory_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ValueError, match="working directory"):
        make_module().save_pretrained(".")
    assert list(tmp_path.iterdir()) == []


def test_concurrent_loads_see_the_old_or_the_new_artifact(tmp_path: Path) -> None:
    directory = tmp_path / "artifact"
    modules = [make_module(num_embeddings=400, seed=seed) for seed in range(2)]
    modules[0].save_pretrained(directory)
    errors: list[BaseException] = []

    def save_repeatedly() -> None:
        try:
            for round_ in range(30):
                modules[round_ % 2].save_pretrained(directory)
        except BaseException as error:
            errors.append(error)

    saver = threading.Thread(target=save_repeatedly)
    saver.start()
    loads = 0
    while saver.is_alive() or loads == 0:
        loaded = CompressedEmbedding.from_pretrained(directory)
        assert any(torch.equal(loaded.codebook, module.codebook) for module in modules)
        loads += 1
    saver.join()
    assert errors == []
    assert sorted(path.name for path in tmp_path.iterdir()) == ["artifact"]


def test_save_pretrained_rejects_a_config_argument(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"writes its own config\.json"):
        make_module().save_pretrained(tmp_path / "artifact", config={"extra": 1})
    assert list(tmp_path.iterdir()) == []


def test_saving_onto_a_file_is_an_error(tmp_path: Path) -> None:
    target = tmp_path / "taken"
    target.write_text("x")
    with pytest.raises(NotADirectoryError, match="not a directory"):
        make_module().save_pretrained(target)


def test_push_to_hub_then_from_pretrained(hub_server: HubServer, tmp_path: Path) -> None:
    module = make_module(num_embeddings=64, codebook_size=256, padding_idx=1)
    module.push_to_hub("dccl-tester/pushed")
    files = hub_server.files("dccl-tester/pushed")
    assert {"config.json", "model.safetensors", "README.md"} <= set(files)
    assert files["model.safetensors"].lfs_sha256 is not None
    assert files["config.json"].content is not None
    assert ("PUT", f"/lfs-objects/{files['model.safetensors'].lfs_sha256}") in hub_server.state.requests
    loaded = CompressedEmbedding.from_pretrained("dccl-tester/pushed", cache_dir=tmp_path)
    assert_identical(loaded, module)


def test_from_pretrained_offline_uses_the_cache(
    hub_server: HubServer, tmp_path: Path, go_offline: Callable[[], None]
) -> None:
    module = make_module(seed=4)
    module.push_to_hub("dccl-tester/offline")
    CompressedEmbedding.from_pretrained("dccl-tester/offline", cache_dir=tmp_path)
    requests_before = len(hub_server.state.requests)
    go_offline()
    assert_identical(CompressedEmbedding.from_pretrained("dccl-tester/offline", cache_dir=tmp_path), module)
    assert len(hub_server.state.requests) == requests_before


def test_save_pretrained_with_push_to_hub(hub_server: HubServer, tmp_path: Path) -> None:
    module = make_module(seed=6)
    module.save_pretrained(tmp_path / "local", push_to_hub=True, repo_id="dccl-tester/via-save")
    assert_identical(CompressedEmbedding.from_pretrained(tmp_path / "local"), module)
    assert_identical(
        CompressedEmbedding.from_pretrained("dccl-tester/via-save", cache_dir=tmp_path / "cache"), module
    )


def test_push_with_regular_uploads_only(
    hub_server: HubServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(hub_server.state, "force_upload_mode", "regular")
    module = make_module(codebook_size=2, seed=5)
    module.push_to_hub("dccl-tester/regular")
    files = hub_server.files("dccl-tester/regular")
    assert all(stored.lfs_sha256 is None for stored in files.values())
    assert_identical(CompressedEmbedding.from_pretrained("dccl-tester/regular", cache_dir=tmp_path), module)


def test_hub_repo_without_weights_is_an_error(hub_server: HubServer, tmp_path: Path) -> None:
    make_module().save_pretrained(tmp_path / "artifact")
    api = HfApi()
    api.create_repo("dccl-tester/config-only")
    api.upload_file(
        path_or_fileobj=tmp_path / "artifact" / CONFIG_NAME,
        path_in_repo=CONFIG_NAME,
        repo_id="dccl-tester/config-only",
    )
    with pytest.raises(ArtifactError, match=r"dccl-tester/config-only/model\.safetensors: not found"):
        CompressedEmbedding.from_pretrained("dccl-tester/config-only", cache_dir=tmp_path / "cache")


def test_from_packed_codes_checks_its_tensors() -> None:
    module = make_module()
    with pytest.raises(ValueError, match="packed_codes must be uint8"):
        CompressedEmbedding.from_packed_codes(module.codes, module.codebook.detach())
    with pytest.raises(ValueError, match="codebook must be floating-point"):
        CompressedEmbedding.from_packed_codes(module.packed_codes, module.codebook.detach()[0])


def test_cli_refuses_an_output_it_could_not_replace_before_reading_anything(tmp_path: Path) -> None:
    from dccl_hf import cli
    from dccl_hf.formats import save_reference

    save_reference(make_module(), tmp_path / "model")
    output = tmp_path / "out"
    (output / "runs").mkdir(parents=True)
    code = cli.main(["import", str(tmp_path / "model"), "-o", str(output)])
    assert code != 0
    assert [path.name for path in output.iterdir()] == ["runs"]
    code = cli.main(["import", str(tmp_path / "model"), "-o", str(tmp_path / "fresh")])
    assert code == 0
    (tmp_path / "fresh" / "vocab.txt").write_text("stale\n")
    assert cli.main(["import", str(tmp_path / "model"), "-o", str(tmp_path / "fresh"), "--overwrite"]) == 0
    assert not (tmp_path / "fresh" / "vocab.txt").exists()
