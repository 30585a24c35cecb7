"""How much better codes the default learner leaves unfound for its own codebook: the search's headroom.

    python benchmarks/headroom.py --datasets minilm --settings 8x16 16x256 32x16 --threads 1
    python benchmarks/headroom.py --datasets glove --rows 50000 --settings 8x16 --time-budget 60

Compresses each dataset at each setting with `dccl_hf.compress`'s default method (its plateau rule, or
`--time-budget` seconds), then re-encodes a random sample of `--sample` rows with the learnt codebook by beam
searches far wider than the learner's own (`--beams`), each followed by ICM, and prints the sample's mean
euclidean distance with the learnt codes, with each wider search's codes, and per row the better of the two.
A gain near zero means the codes are already (close to) the best this codebook allows: a lower distance then
needs a different codebook, i.e. another local optimum of the alternation, not a better search.
"""

from __future__ import annotations

import argparse
import time

import torch
from reconstruction import DATASETS, DEFAULT_ROWS, SETTINGS, load_dataset, parse_setting

import dccl_hf
from dccl_hf.learning.additive import beam_search, icm, row_distances


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--datasets", nargs="+", default=list(DATASETS))
    parser.add_argument("--settings", nargs="+", default=list(SETTINGS), help="MxK settings")
    parser.add_argument(
        "--rows", type=int, help="only the first N rows of each dataset (default: the benchmark's)"
    )
    parser.add_argument("--time-budget", type=float, help="seconds for compress (default: its plateau rule)")
    parser.add_argument("--sample", type=int, default=3000, help="rows re-encoded by the wider searches")
    parser.add_argument("--beams", type=int, nargs="+", default=[64, 256, 1024])
    parser.add_argument("--icm-sweeps", type=int, default=4)
    parser.add_argument("--threads", type=int, help="torch threads (default: its own)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    print(
        "dataset  setting  learnt  compress s  beam  sample: learnt  searched  better of two  gain  search s"
    )
    for dataset in args.datasets:
        rows = args.rows if args.rows is not None else DEFAULT_ROWS.get(dataset)
        matrix = torch.from_numpy(load_dataset(dataset, rows))
        for setting in args.settings:
            num_codebooks, codebook_size = parse_setting(setting)
            start = time.monotonic()
            compressed = dccl_hf.compress(
                matrix, num_codebooks, codebook_size, time_budget=args.time_budget, progress=False
            )
            compress_seconds = time.monotonic() - start
            codes, codebook = compressed.codes, compressed.codebook.detach()
            learnt = dccl_hf.reconstruction_report(matrix, compressed).mean_euclidean_distance
            generator = torch.Generator().manual_seed(0)
            sample = torch.randperm(matrix.shape[0], generator=generator)[: args.sample]
            rows_sample = matrix[sample]
            sample_learnt = row_distances(rows_sample, codes[sample], codebook)
            for beam in args.beams:
                start = time.monotonic()
                searched = icm(
                    rows_sample, beam_search(rows_sample, codebook, beam), codebook, args.icm_sweeps
                )
                search_seconds = time.monotonic() - start
                sample_searched = row_distances(rows_sample, searched, codebook)
                better = torch.minimum(sample_learnt, sample_searched)
                gain = 1.0 - float(better.mean()) / float(sample_learnt.mean())
                print(
                    f"{dataset:8s} {setting:8s} {learnt:7.5f} {compress_seconds:10.1f}  {beam:5d}"
                    f"  {float(sample_learnt.mean()):14.5f}  {float(sample_searched.mean()):8.5f}"
                    f"  {float(better.mean()):13.5f}  {gain:5.2%}  {search_seconds:8.1f}",
                    flush=True,
                )


if __name__ == "__main__":
    main()
