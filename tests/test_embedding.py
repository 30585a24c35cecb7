import pytest
import torch
from torch import nn

from dccl_hf import CompressedEmbedding


def naive_lookup(codes: torch.Tensor, codebook: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    num_codebooks = codebook.shape[0]
    return codebook[torch.arange(num_codebooks), codes[ids]].sum(-2)


@pytest.mark.parametrize(
    ("vocab", "dim", "num_codebooks", "codebook_size"),
    [
        (50, 8, 4, 2),
        (300, 16, 32, 16),
        (1000, 12, 16, 256),
        (5000, 4, 3, 4096),
        (97, 5, 7, 8),
        (64, 3, 5, 32768),
        (40, 1, 2, 65536),
    ],
)
def test_forward_matches_naive_sum_of_codewords(
    vocab: int, dim: int, num_codebooks: int, codebook_size: int
) -> None:
    generator = torch.Generator().manual_seed(vocab)
    codes = torch.randint(codebook_size, (vocab, num_codebooks), generator=generator)
    codebook = torch.randn(num_codebooks, codebook_size, dim, generator=generator, dtype=torch.float64)
    module = CompressedEmbedding.from_codes(codes, codebook)
    ids = torch.randint(vocab, (3, 7, 2), generator=generator)
    output = module(ids)
    assert output.shape == (3, 7, 2, dim)
    torch.testing.assert_close(output, naive_lookup(codes, codebook, ids))
    assert torch.equal(module.codes, codes)
    torch.testing.assert_close(module.reconstruct(), naive_lookup(codes, codebook, torch.arange(vocab)))


def test_accepts_every_integer_input_shape_like_nn_embedding() -> None:
    module = CompressedEmbedding(20, 6, 4, 16)
    for ids in (
        torch.tensor(3),
        torch.tensor([1, 2]),
        torch.zeros(0, 5, dtype=torch.long),
        torch.ones(2, 3, dtype=torch.int32),
    ):
        assert module(ids).shape == (*ids.shape, 6)
    torch.testing.assert_close(module(torch.tensor(3)), module.reconstruct()[3])


def test_gradients_reach_the_codebook_only() -> None:
    codes = torch.tensor([[0, 1], [1, 1], [1, 0]])
    module = CompressedEmbedding.from_codes(codes, torch.randn(2, 2, 3))
    module(torch.tensor([0, 0, 2])).sum().backward()
    expected = torch.zeros(2, 2, 3)
    expected[0, 0] = 2  # rows 0, 0 use codeword 0 of codebook 0
    expected[0, 1] = 1  # row 2
    expected[1, 1] = 2
    expected[1, 0] = 1
    torch.testing.assert_close(module.codebook.grad, expected)
    assert [name for name, _ in module.named_parameters()] == ["codebook"]
    assert set(module.state_dict()) == {"codebook", "packed_codes"}


def test_codebook_gradient_sums_over_every_position_of_repeated_ids() -> None:
    generator = torch.Generator().manual_seed(0)
    codes = torch.randint(4, (5, 3), generator=generator)
    module = CompressedEmbedding.from_codes(codes, torch.randn(3, 4, 6, generator=generator))
    ids = torch.tensor([[3, 1, 3], [3, 0, 1]])
    upstream = torch.randn(2, 3, 6, generator=generator)
    (module(ids) * upstream).sum().backward()
    expected = torch.zeros(3, 4, 6)
    for row, gradient in zip(ids.reshape(-1).tolist(), upstream.reshape(-1, 6), strict=True):
        expected[torch.arange(3), codes[row]] += gradient
    torch.testing.assert_close(module.codebook.grad, expected)


def test_compiles_into_one_graph_with_inductor_forward_and_backward() -> None:
    module = CompressedEmbedding.from_codes(torch.randint(16, (50, 4)), torch.randn(4, 16, 8), padding_idx=3)
    ids = torch.tensor([[3, 1, 3], [7, 1, 0]])
    compiled = torch.compile(module, fullgraph=True)  # fullgraph: a graph break is an error
    output = compiled(ids)
    output.square().sum().backward()
    compiled_gradient, module.codebook.grad = module.codebook.grad, None
    module(ids).square().sum().backward()
    torch.testing.assert_close(output, module(ids))
    torch.testing.assert_close(compiled_gradient, module.codebook.grad)


def test_runs_where_the_number_of_distinct_ids_cannot_be_known() -> None:
    """Meta and fake tensors (shape inference) and vmap (per-sample gradients) have no data-dependent shapes."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    module = CompressedEmbedding.from_codes(torch.randint(16, (50, 4)), torch.randn(4, 16, 8), padding_idx=3)
    ids = torch.tensor([[3, 1, 3], [7, 1, 0]])
    assert CompressedEmbedding(50, 8, 4, 16, device="meta")(ids.to("meta")).shape == (2, 3, 8)
    with FakeTensorMode(allow_non_fake_inputs=True):
        assert module(ids).shape == (2, 3, 8)
    torch.testing.assert_close(torch.func.vmap(module)(ids), module(ids))


def test_an_empty_batch_is_part_of_the_graph_like_nn_embedding() -> None:
    module = CompressedEmbedding(10, 4, 2, 16)
    output = module(torch.zeros(0, 3, dtype=torch.long))
    assert output.shape == (0, 3, 4)
    output.sum().backward()  # an empty batch in data-parallel training still joins the backward pass
    assert torch.count_nonzero(module.codebook.grad) == 0


def test_padding_idx_row_is_zero_and_gets_no_gradient() -> None:
    module = CompressedEmbedding.from_codes(
        torch.tensor([[0, 1], [1, 1], [1, 0]]), torch.randn(2, 2, 3), padding_idx=1
    )
    output = module(torch.tensor([[1, 0], [1, 1]]))
    assert torch.count_nonzero(output[:, :][torch.tensor([[True, False], [True, True]])]) == 0
    assert torch.count_nonzero(output[0, 1]) > 0
    module(torch.tensor([1, 1])).sum().backward()
    assert torch.count_nonzero(module.codebook.grad) == 0
    assert torch.count_nonzero(module.reconstruct()[1]) == 0
    assert CompressedEmbedding(10, 2, 2, 2, padding_idx=-1).padding_idx == 9


def test_out_of_range_ids_raise_like_nn_embedding() -> None:
    module = CompressedEmbedding(10, 4, 2, 16)
    dense = nn.Embedding(10, 4)
    for ids in (torch.tensor([10]), torch.tensor([-1])):
        with pytest.raises(IndexError) as dense_error:
            dense(ids)
        with pytest.raises(IndexError, match=str(dense_error.value)):
            module(ids)
    with pytest.raises(TypeError, match="integer"):
        module(torch.tensor([1.0]))


@pytest.mark.parametrize("codebook_size", [0, 1, 3, 100, 131072])
def test_invalid_codebook_size_is_a_value_error(codebook_size: int) -> None:
    with pytest.raises(ValueError, match="power of two"):
        CompressedEmbedding(10, 4, 2, codebook_size)


def test_invalid_shapes_are_rejected() -> None:
    with pytest.raises(ValueError, match="num_codebooks"):
        CompressedEmbedding(10, 4, 0, 16)
    with pytest.raises(ValueError, match="padding_idx"):
        CompressedEmbedding(10, 4, 2, 16, padding_idx=10)
    with pytest.raises(ValueError, match="2 codebooks"):
        CompressedEmbedding.from_codes(torch.zeros(5, 3, dtype=torch.long), torch.zeros(2, 4, 8))
    with pytest.raises(ValueError, match=r"\[0, 4\)"):
        CompressedEmbedding.from_codes(torch.full((5, 2), 4), torch.zeros(2, 4, 8))


def test_to_embedding_is_equivalent() -> None:
    module = CompressedEmbedding(30, 5, 3, 8, padding_idx=2)
    dense = module.to_embedding()
    ids = torch.randint(30, (4, 6))
    assert isinstance(dense, nn.Embedding)
    assert dense.padding_idx == 2
    torch.testing.assert_close(dense(ids), module(ids))


def test_sizes_and_repr() -> None:
    module = CompressedEmbedding(30522, 384, 32, 16)
    assert module.bits_per_row == 128
    assert module.packed_codes.shape == (30522, 16)
    assert module.code_bytes == 30522 * 16
    assert module.codebook_bytes == 32 * 16 * 384 * 4
    assert module.compression_ratio == pytest.approx(30522 * 384 * 4 / (30522 * 16 + 32 * 16 * 384 * 4))
    text = repr(module)
    for fragment in ("30522, 384", "num_codebooks=32", "codebook_size=16", "compression_ratio=36.8x"):
        assert fragment in text


def test_half_precision_codebook() -> None:
    codes = torch.randint(16, (40, 4))
    codebook = torch.randn(4, 16, 8)
    module = CompressedEmbedding.from_codes(codes, codebook).to(torch.bfloat16)
    assert module.packed_codes.dtype == torch.uint8
    output = module(torch.arange(40))
    assert output.dtype == torch.bfloat16
    torch.testing.assert_close(
        output.float(), naive_lookup(codes, codebook, torch.arange(40)), atol=0.1, rtol=0.05
    )


@pytest.mark.parametrize("codebook_size", [2, 16, 256, 4096])
def test_gradient_matches_autograd_of_the_plain_codeword_sum(codebook_size: int) -> None:
    """The lookup's own backward (gradients summed per distinct id, then a sparse one-hot product) equals
    autograd through `embedding_bag` on every position, padding row and repeated ids included."""
    generator = torch.Generator().manual_seed(codebook_size)
    codes = torch.randint(codebook_size, (40, 5), generator=generator)
    codebook = torch.randn(5, codebook_size, 6, generator=generator, dtype=torch.float64)
    module = CompressedEmbedding.from_codes(codes, codebook, padding_idx=4)
    ids = torch.randint(40, (3, 50), generator=generator)
    ids[0, :3] = 4
    upstream = torch.randn(3, 50, 6, generator=generator, dtype=torch.float64)
    output = module(ids)
    (output * upstream).sum().backward()
    gradient, module.codebook.grad = module.codebook.grad, None
    with torch.no_grad():
        assert torch.count_nonzero(output[0, :3]) == 0
    plain = module._rows(ids.reshape(-1)).reshape(3, 50, 6)  # autograd's embedding_bag backward
    (plain * upstream).sum().backward()
    torch.testing.assert_close(output, plain)
    torch.testing.assert_close(gradient, module.codebook.grad)


def test_inference_on_repeated_ids_decodes_each_distinct_id_once_with_the_same_result() -> None:
    codes = torch.randint(16, (30, 4), generator=torch.Generator().manual_seed(0))
    codebook = torch.randn(4, 16, 6, generator=torch.Generator().manual_seed(1))
    module = CompressedEmbedding.from_codes(codes, codebook, padding_idx=2)
    ids = torch.tensor([[2, 5, 5, 5, 7, 7], [5, 2, 7, 7, 5, 5]])  # 3 distinct ids in 12 positions
    expected = naive_lookup(codes, codebook, ids)
    expected[ids == 2] = 0.0
    with torch.no_grad():
        torch.testing.assert_close(module(ids), expected)
    torch.testing.assert_close(module(ids).detach(), expected)
