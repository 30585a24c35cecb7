"""Word vectors queried on their codes: gensim's `KeyedVectors` API over a `CompressedEmbedding` with words.

Cosine queries never rebuild the table. Row i is the sum of M codewords, so its dot product with a query q is the
sum of M entries of the (M, K) table of codeword-query dot products, scored once per query. Where a code takes a
whole number of bits per byte (K = 2, 4, 16, 256) the tables fold further into one 256-entry table per byte of the
packed codes, and pairs of those into one 65,536-entry table per two bytes, so each row sums about
M·log2 K / 16 looked-up scores straight from its packed bytes, never unpacked (GloVe 50d at M=32, K=16: 8 per
row instead of 50 multiply-adds). Other K sum M scores from codes unpacked in chunks. Row norms are computed once,
decoding the rows in chunks. Scores equal those of the brute-force
product with the reconstructed table up to float32 rounding.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F

from dccl_hf.embedding import CompressedEmbedding
from dccl_hf.files import write_chunks_atomic
from dccl_hf.packing import bits_per_code, packed_row_bytes

if TYPE_CHECKING:
    from gensim.models import KeyedVectors

logger = logging.getLogger(__name__)

#: Rows scored per step: bounds the indices and scores held at once to a few MB.
CHUNK_ROWS = 65536
#: Rows decoded per step (norms, exports): decoding holds a few float copies of the rows at once.
DECODE_ROWS = 8192
#: A word, a row index, or a vector of the table's dimension.
Key = str | int | np.ndarray | torch.Tensor
WORD2VEC_FORMATS = ("word2vec", "word2vec-binary")


class CompressedKeyedVectors:
    """Nearest-neighbour, similarity and analogy queries on a compressed table of word vectors.

    Mirrors gensim's `KeyedVectors` (`most_similar`, `most_similar_cosmul`, `similarity`, `get_vector`,
    `key_to_index`, ...) while holding only the packed codes, the codebook and one norm per row.
    """

    def __init__(self, embedding: CompressedEmbedding) -> None:
        if embedding.words is None:
            raise ValueError(
                "the CompressedEmbedding has no words; set embedding.words (one per row) or load an artifact "
                "that has vocab.txt."
            )
        self.embedding = embedding
        self.index_to_key: list[str] = list(embedding.words)
        self.key_to_index: dict[str, int] = {}
        for index, word in enumerate(self.index_to_key):
            self.key_to_index.setdefault(word, index)  # a duplicated word means its first row, as in a lookup
        self._scorer = _CodeScorer(embedding)
        norms = torch.cat([torch.from_numpy(vectors).norm(dim=1) for _, vectors in self._chunks()])
        #: ||row|| of every row, float32 (V,), as gensim's `norms`.
        self.norms: np.ndarray = norms.numpy()
        # 1 / ||row||, 0 for a zero row (the padding row): such a row scores 0 against every query.
        self._inverse_norms = torch.where(norms > 0, 1 / norms, torch.zeros_like(norms))

    @classmethod
    def from_pretrained(cls, model_id: str | os.PathLike[str], **kwargs: Any) -> CompressedKeyedVectors:
        """Load an artifact with words (a directory or Hub repo id); `kwargs` go to
        `CompressedEmbedding.from_pretrained`."""
        return cls(CompressedEmbedding.from_pretrained(model_id, **kwargs))

    def save_pretrained(self, save_directory: str | os.PathLike[str], **kwargs: Any) -> str | None:
        """Save the artifact, words included (see `CompressedEmbedding.save_pretrained`)."""
        return self.embedding.save_pretrained(save_directory, **kwargs)

    def push_to_hub(self, repo_id: str, **kwargs: Any) -> str:
        """Upload the artifact, words included, to a Hub model repository."""
        return self.embedding.push_to_hub(repo_id, **kwargs)

    @property
    def vector_size(self) -> int:
        """Dimension of the vectors."""
        return self.embedding.embedding_dim

    def __len__(self) -> int:
        return len(self.index_to_key)

    def __contains__(self, key: object) -> bool:
        return key in self.key_to_index

    def has_index_for(self, key: object) -> bool:
        """Whether `key` is a word of the table."""
        return key in self.key_to_index

    def get_index(self, key: str | int, default: int | None = None) -> int:
        """The row of a word (or a valid row index itself); `default` if given, else KeyError, when absent."""
        if isinstance(key, str) and key in self.key_to_index:
            return self.key_to_index[key]
        if isinstance(key, (int, np.integer)) and 0 <= key < len(self):
            return int(key)
        if default is not None:
            return default
        raise KeyError(f"Key {key!r} not present in the {len(self)} words of the table.")

    def get_vector(self, key: str | int, norm: bool = False) -> np.ndarray:
        """The (reconstructed) vector of a word, float32 (D,); unit length when `norm`."""
        index = self.get_index(key)
        vector = self._decode(torch.tensor([index]))[0]
        if norm:
            vector = vector * self._inverse_norms[index]
        return vector.numpy()

    def __getitem__(self, keys: str | int | Sequence[str | int]) -> np.ndarray:
        """One word's vector (D,), or the vectors of a list of words (N, D)."""
        if isinstance(keys, (str, int, np.integer)):
            return self.get_vector(keys)
        indices = torch.tensor([self.get_index(key) for key in keys], dtype=torch.int64)
        return self._decode(indices).numpy()

    def similarity(self, word1: str | int, word2: str | int) -> float:
        """Cosine similarity of two words."""
        vectors = self._decode(torch.tensor([self.get_index(word1), self.get_index(word2)]))
        return float(F.cosine_similarity(vectors[0], vectors[1], dim=0, eps=1e-30))

    def distance(self, word1: str | int, word2: str | int) -> float:
        """Cosine distance, 1 - similarity."""
        return 1.0 - self.similarity(word1, word2)

    def most_similar(
        self,
        positive: Key | Sequence[Key | tuple[Key, float]] = (),
        negative: Key | Sequence[Key | tuple[Key, float]] = (),
        topn: int | None = 10,
        restrict_vocab: int | None = None,
    ) -> list[tuple[str, float]] | np.ndarray:
        """The `topn` words most cosine-similar to the weighted mean of the unit vectors of `positive` minus
        those of `negative` (3CosAdd: ``most_similar(positive=["king", "woman"], negative=["man"])``).

        As in gensim, keys may be words, row indices or vectors, optionally as (key, weight); words given are
        left out of the results; `restrict_vocab` searches the first rows only; ``topn=None`` returns every
        row's similarity as a float32 array.
        """
        keys, weights = _weighted_keys(positive, negative)
        query = (torch.tensor(weights).unsqueeze(1) * self._unit_vectors(keys)).sum(0)
        query = query / query.norm().clamp_min(1e-30)
        similarities = self._cosines(query.unsqueeze(0), restrict_vocab)[:, 0]
        return self._best(similarities, keys, topn)

    def most_similar_cosmul(
        self,
        positive: Key | Sequence[Key] = (),
        negative: Key | Sequence[Key] = (),
        topn: int | None = 10,
        restrict_vocab: int | None = None,
    ) -> list[tuple[str, float]] | np.ndarray:
        """Analogy by 3CosMul (Levy & Goldberg 2014): rank rows by the product of their cosines, shifted to
        [0, 1], with `positive` over that with `negative` (+1e-6), as gensim's `most_similar_cosmul`."""
        positive, negative = _as_list(positive), _as_list(negative)
        if not positive:
            raise ValueError("most_similar_cosmul needs at least one positive key.")
        keys = positive + negative
        cosines = (1 + self._cosines(self._unit_vectors(keys), restrict_vocab)) / 2
        scores = cosines[:, : len(positive)].prod(1) / (cosines[:, len(positive) :].prod(1) + 1e-6)
        return self._best(scores, keys, topn)

    def similar_by_word(self, word: str, topn: int | None = 10, restrict_vocab: int | None = None) -> Any:
        """The `topn` words most similar to `word`."""
        return self.most_similar(positive=[word], topn=topn, restrict_vocab=restrict_vocab)

    def similar_by_vector(
        self, vector: np.ndarray | torch.Tensor, topn: int | None = 10, restrict_vocab: int | None = None
    ) -> Any:
        """The `topn` words most similar to a vector."""
        return self.most_similar(positive=[vector], topn=topn, restrict_vocab=restrict_vocab)

    def cosine_similarities_to(self, vectors: np.ndarray | torch.Tensor) -> torch.Tensor:
        """Cosine similarity of every row with each of the (N, D) `vectors`: float32 (V, N)."""
        queries = torch.as_tensor(vectors, dtype=torch.float32).reshape(-1, self.vector_size)
        queries = queries / queries.norm(dim=1, keepdim=True).clamp_min(1e-30)
        return self._cosines(queries, None)

    def to_gensim(self) -> KeyedVectors:
        """A gensim `KeyedVectors` holding the reconstructed dense table (as large as the uncompressed one)."""
        try:
            from gensim.models import KeyedVectors
        except ImportError as error:
            raise ImportError(
                f"to_gensim needs gensim ({error}); install it with: pip install gensim"
            ) from error
        vectors = KeyedVectors(self.vector_size, dtype=np.float32)
        vectors.add_vectors(self.index_to_key, self._decode_all())
        return vectors

    def save_word2vec_format(self, path: str | os.PathLike[str], *, binary: bool = False) -> Path:
        """Write the reconstructed vectors as word2vec text (``word v1 ... vD`` lines) or binary (``word``, a space,
        D little-endian float32), after a ``count dim`` header line; atomically, decoding the rows in chunks."""
        for row, word in enumerate(self.index_to_key):
            if word.split() != [word]:
                raise ValueError(
                    f"word {row} ({word!r}) is empty or contains whitespace, which the word2vec format cannot "
                    "hold; export with `dccl-hf export --format codes` (tab-separated) instead."
                )
        path = Path(path)
        write_chunks_atomic(path, self._word2vec_chunks(binary))
        logger.info("Wrote %d vectors to %s", len(self), path)
        return path

    def _word2vec_chunks(self, binary: bool) -> Iterator[bytes]:
        yield f"{len(self)} {self.vector_size}\n".encode()
        for start, vectors in self._chunks():
            words = self.index_to_key[start : start + len(vectors)]
            if binary:
                little_endian = vectors.astype("<f4", copy=False)
                yield b"".join(
                    word.encode("utf-8") + b" " + row.tobytes() + b"\n"
                    for word, row in zip(words, little_endian, strict=True)
                )
            else:
                yield "".join(
                    word + " " + " ".join(map(repr, row.tolist())) + "\n"
                    for word, row in zip(words, vectors.astype(np.float64), strict=True)
                ).encode("utf-8")

    def _chunks(self) -> Iterator[tuple[int, np.ndarray]]:
        """(first row, float32 rows) of the reconstructed table, DECODE_ROWS at a time."""
        for start in range(0, len(self), DECODE_ROWS):
            indices = torch.arange(start, min(start + DECODE_ROWS, len(self)))
            yield start, self._decode(indices).numpy()

    def _decode_all(self) -> np.ndarray:
        return np.concatenate([vectors for _, vectors in self._chunks()])

    def _decode(self, indices: torch.Tensor) -> torch.Tensor:
        """Rows `indices` of the reconstructed table, float32 on the CPU."""
        device = self.embedding.packed_codes.device
        with torch.no_grad():
            return self.embedding(indices.to(device)).float().cpu()

    def _unit_vectors(self, keys: Sequence[Key]) -> torch.Tensor:
        """(N, D): the unit vector of each word or row index; vectors given as such are used unchanged."""
        rows = []
        for key in keys:
            if isinstance(key, (np.ndarray, torch.Tensor)):
                vector = torch.as_tensor(key, dtype=torch.float32).reshape(-1)
                if vector.numel() != self.vector_size:
                    raise ValueError(
                        f"a query vector must have {self.vector_size} values, got {vector.numel()}."
                    )
                rows.append(vector)
            else:
                index = self.get_index(key)
                rows.append(self._decode(torch.tensor([index]))[0] * self._inverse_norms[index])
        if not rows:
            raise ValueError("give at least one positive or negative key.")
        return torch.stack(rows)

    def _cosines(self, unit_queries: torch.Tensor, restrict_vocab: int | None) -> torch.Tensor:
        """(rows, N) cosine similarities of the first `restrict_vocab` rows with N unit queries, on the codes."""
        rows = len(self) if restrict_vocab is None else max(0, min(restrict_vocab, len(self)))
        dots = self._scorer.dot_products(unit_queries, rows)
        return dots * self._inverse_norms[:rows].unsqueeze(1)

    def _best(
        self, scores: torch.Tensor, keys: Sequence[Key], topn: int | None
    ) -> list[tuple[str, float]] | np.ndarray:
        """The `topn` best (word, score) pairs, leaving out the rows of words and indices among `keys`."""
        if topn is None:
            return scores.numpy()
        excluded = {self.get_index(key) for key in keys if not isinstance(key, (np.ndarray, torch.Tensor))}
        count = min(topn + len(excluded), len(scores))
        values, indices = torch.topk(scores, count)
        best = [
            (self.index_to_key[index], value)
            for index, value in zip(indices.tolist(), values.tolist(), strict=True)
            if index not in excluded
        ]
        return best[:topn]


class _CodeScorer:
    """Dot products of queries with every row of a `CompressedEmbedding`, summed from looked-up codeword scores."""

    def __init__(self, embedding: CompressedEmbedding) -> None:
        self.embedding = embedding
        bits = bits_per_code(embedding.codebook_size)
        # Whole codes per byte: each byte of a packed row folds its codes' scores into one of 256 entries.
        self.per_byte = 8 // bits if 8 % bits == 0 else 0
        if self.per_byte:
            byte_values = torch.arange(256)
            shifts = torch.arange(self.per_byte) * bits
            self.byte_codes = (byte_values.unsqueeze(1) >> shifts) & (embedding.codebook_size - 1)  # (256, P)

    def dot_products(self, queries: torch.Tensor, rows: int) -> torch.Tensor:
        """(rows, N) dot products of the first `rows` rows with the (N, D) `queries`, float32."""
        embedding = self.embedding
        codebook = embedding.codebook.detach().float().cpu()
        tables = torch.einsum("mkd,nd->mkn", codebook, queries)  # the (M, K) scores of each query
        if self.per_byte:
            result = self._sum_byte_scores(self._byte_tables(tables), rows)
        else:
            result = self._sum_code_scores(tables.reshape(-1, queries.shape[0]), rows)
        if embedding.padding_idx is not None and embedding.padding_idx < rows:
            result[embedding.padding_idx] = 0.0
        return result

    def _byte_tables(self, tables: torch.Tensor) -> torch.Tensor:
        """(B, 256, N): entry [j, v] is the summed score of the codes byte j of a packed row holds when it is v."""
        num_codebooks, _, queries = tables.shape
        row_bytes = packed_row_bytes(num_codebooks, self.embedding.codebook_size)
        spare = row_bytes * self.per_byte - num_codebooks  # unused codes of the last byte score 0
        padded = F.pad(tables, (0, 0, 0, 0, 0, spare)).reshape(row_bytes, self.per_byte, -1, queries)
        byte_tables = torch.zeros(row_bytes, 256, queries)
        for field in range(self.per_byte):
            byte_tables += padded[:, field, self.byte_codes[:, field], :]
        return byte_tables

    def _sum_byte_scores(self, byte_tables: torch.Tensor, rows: int) -> torch.Tensor:
        """Per row, the sum over its packed bytes of the byte tables' entries. Pairs of bytes index a 65,536-entry
        table as one little-endian uint16 (half the lookups, tables still in cache); the codes are used as they
        are stored (numpy gathers with uint8/uint16 indices, where torch would need an int64 copy)."""
        tables = byte_tables.numpy()
        pairs = len(tables) // 2
        # pair_tables[p, high, low] = tables[2p, low] + tables[2p + 1, high]
        pair_tables = (tables[0 : 2 * pairs : 2, None] + tables[1 : 2 * pairs : 2, :, None]).reshape(
            pairs, 65536, tables.shape[2]
        )
        packed = self.embedding.packed_codes.cpu().numpy()
        result = np.zeros((rows, tables.shape[2]), dtype=np.float32)
        for start in range(0, rows, CHUNK_ROWS):
            block = packed[start : min(start + CHUNK_ROWS, rows)]
            scores = result[start : start + len(block)]  # a view: accumulated in place, in cache
            words = np.ascontiguousarray(block[:, : 2 * pairs]).view("<u2")
            for pair, table in enumerate(pair_tables):
                scores += table[words[:, pair]]
            if len(tables) % 2:
                scores += tables[-1][block[:, -1]]
        return torch.from_numpy(result)

    def _sum_code_scores(self, flat_tables: torch.Tensor, rows: int) -> torch.Tensor:
        """Per row, the sum of its M codes' entries of the flattened (M·K, N) tables, codes unpacked in chunks."""
        embedding = self.embedding
        device = embedding.packed_codes.device
        result = torch.empty(rows, flat_tables.shape[1])
        for start in range(0, rows, CHUNK_ROWS):
            stop = min(start + CHUNK_ROWS, rows)
            indices = embedding.lookup_indices(torch.arange(start, stop, device=device)).cpu()
            result[start:stop] = F.embedding_bag(indices, flat_tables, mode="sum")
        return result


def _as_list(keys: Key | Sequence[Any]) -> list[Any]:
    """One key (a word, an index or a vector) as a list; a list or tuple of keys unchanged."""
    if isinstance(keys, (str, int, np.integer, np.ndarray, torch.Tensor)):
        return [keys]
    return list(keys)


def _weighted_keys(
    positive: Key | Sequence[Key | tuple[Key, float]], negative: Key | Sequence[Key | tuple[Key, float]]
) -> tuple[list[Key], list[float]]:
    """Keys and their weights: +1 for positive, -1 for negative keys, unless given as (key, weight)."""
    keys: list[Key] = []
    weights: list[float] = []
    for items, default in ((_as_list(positive), 1.0), (_as_list(negative), -1.0)):
        for item in items:
            if isinstance(item, tuple):
                key, weight = item
                keys.append(key)
                weights.append(float(weight))
            else:
                keys.append(item)
                weights.append(default)
    return keys, weights
