import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from dccl_hf.packing import bits_per_code, pack_codes, packed_row_bytes, unpack_codes

CODEBOOK_SIZES = [2**bits for bits in range(1, 17)]


@settings(max_examples=150, deadline=None)
@given(
    codebook_size=st.sampled_from(CODEBOOK_SIZES),
    num_codebooks=st.integers(1, 40),
    leading=st.lists(st.integers(0, 4), max_size=3),
    seed=st.integers(0, 2**31 - 1),
)
def test_pack_unpack_round_trip(
    codebook_size: int, num_codebooks: int, leading: list[int], seed: int
) -> None:
    generator = torch.Generator().manual_seed(seed)
    codes = torch.randint(codebook_size, (*leading, num_codebooks), generator=generator)
    packed = pack_codes(codes, codebook_size)
    assert packed.dtype == torch.uint8
    assert packed.shape == (*leading, math.ceil(num_codebooks * math.log2(codebook_size) / 8))
    assert torch.equal(unpack_codes(packed, num_codebooks, codebook_size), codes)
    assert torch.equal(unpack_codes(packed, num_codebooks, codebook_size, torch.int32), codes.int())


@pytest.mark.parametrize("codebook_size", CODEBOOK_SIZES)
def test_extreme_codes_round_trip(codebook_size: int) -> None:
    codes = torch.tensor([[0, codebook_size - 1, codebook_size - 1], [codebook_size - 1, 0, 0]])
    assert torch.equal(unpack_codes(pack_codes(codes, codebook_size), 3, codebook_size), codes)


def test_bit_layout_is_little_endian_within_the_row() -> None:
    packed = pack_codes(torch.tensor([1, 2, 3, 15]), 16)
    assert packed.tolist() == [0x21, 0xF3]
    packed = pack_codes(torch.tensor([5, 1, 7]), 8)
    assert packed.tolist() == [0b11_001_101, 0b1]  # 7 straddles the byte boundary


@pytest.mark.parametrize(
    ("num_codebooks", "codebook_size", "expected"),
    [(32, 16, 16), (16, 256, 16), (8, 16, 4), (3, 8, 2), (5, 4096, 8)],
)
def test_packed_row_bytes(num_codebooks: int, codebook_size: int, expected: int) -> None:
    assert packed_row_bytes(num_codebooks, codebook_size) == expected


@pytest.mark.parametrize("codebook_size", [0, 1, 3, 12, 100, 131072, -16, 16.0, True])
def test_codebook_size_must_be_a_power_of_two_in_range(codebook_size: object) -> None:
    with pytest.raises(ValueError, match="power of two"):
        bits_per_code(codebook_size)  # type: ignore[arg-type]


def test_out_of_range_codes_are_rejected() -> None:
    with pytest.raises(ValueError, match=r"\[0, 16\)"):
        pack_codes(torch.tensor([[0, 16]]), 16)
    with pytest.raises(ValueError, match=r"\[0, 16\)"):
        pack_codes(torch.tensor([[-1, 3]]), 16)


def test_wrong_packed_width_or_dtype_is_rejected() -> None:
    with pytest.raises(ValueError, match="need 16 bytes per row"):
        unpack_codes(torch.zeros(4, 15, dtype=torch.uint8), 32, 16)
    with pytest.raises(TypeError, match="uint8"):
        unpack_codes(torch.zeros(4, 16, dtype=torch.int64), 32, 16)
    with pytest.raises(TypeError, match="integer"):
        pack_codes(torch.zeros(4, 3), 16)


@pytest.mark.parametrize("codebook_size", CODEBOOK_SIZES)
def test_onnx_export_unpacks_with_arithmetic_only(
    codebook_size: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Exporters bind bit operations to types onnxruntime lacks kernels for; the export path uses none."""
    codes = torch.randint(codebook_size, (5, 7), generator=torch.Generator().manual_seed(codebook_size))
    packed = pack_codes(codes, codebook_size)

    def no_bit_operations(*args: object) -> None:
        raise AssertionError("a bit operation was used while exporting to ONNX")

    monkeypatch.setattr(torch.onnx, "is_in_onnx_export", lambda: True)
    for operation in ("__and__", "__or__", "__rshift__", "__lshift__"):
        monkeypatch.setattr(torch.Tensor, operation, no_bit_operations)
    assert torch.equal(unpack_codes(packed, 7, codebook_size, torch.int32), codes.int())
    assert torch.equal(unpack_codes(packed, 7, codebook_size), codes)
