"""Data-parallel learning against one process, side by side: the same rows, setting and time budget (or number of
rounds), once in one process using every core and once under `torchrun` with one process per core, each holding a
block of the rows.

    python benchmarks/distributed.py --rows 50000 --setting 32x16 --time-budget 120
    python benchmarks/distributed.py --rows 20000 --setting 16x256 --max-iterations 3

Both runs are `examples/distributed_glove.py` (GloVe 6B 50d, the first `--rows` rows), so the benchmark measures
what a user of that example gets; it prints each run's learning time and the mean euclidean distance of the whole
table, and the ratios of the sharded run to the single one.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "distributed_glove.py"
LEARNED = re.compile(r"learned in ([0-9.]+) s")
DISTANCE = re.compile(r"mean euclidean distance\s+([0-9.]+)")


def run(command: list[str]) -> tuple[float, float]:
    """(learning seconds, mean euclidean distance) as the example reports them."""
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    output = result.stdout + result.stderr
    learned, distance = LEARNED.search(output), DISTANCE.search(output)
    if result.returncode != 0 or learned is None or distance is None:
        raise RuntimeError(f"{' '.join(command)} failed:\n{output[-3000:]}")
    return float(learned.group(1)), float(distance.group(1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=50_000)
    parser.add_argument("--setting", default="32x16", help="MxK")
    parser.add_argument("--time-budget", type=float, help="seconds of learning per run")
    parser.add_argument(
        "--max-iterations", type=int, help="refit rounds per run (equal work, whatever the speed)"
    )
    parser.add_argument("--processes", type=int, default=os.cpu_count() or 1, help="sharded run's processes")
    args = parser.parse_args()
    num_codebooks, codebook_size = args.setting.split("x")
    options = ["--limit", str(args.rows), "-M", num_codebooks, "-K", codebook_size]
    if args.time_budget is not None:
        options += ["--time-budget", str(args.time_budget)]
    if args.max_iterations is not None:
        options += ["--max-iterations", str(args.max_iterations)]
    with tempfile.TemporaryDirectory() as directory:
        single = run([sys.executable, str(EXAMPLE), *options, "-o", f"{directory}/single"])
        torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
        sharded = run(
            [*torchrun, f"--nproc-per-node={args.processes}", str(EXAMPLE), *options, "-o", f"{directory}/dp"]
        )
    limits = [f"time budget {args.time_budget:.0f} s"] if args.time_budget is not None else []
    limits += [f"at most {args.max_iterations} rounds"] if args.max_iterations is not None else []
    print(
        f"GloVe first {args.rows} rows, M={num_codebooks}, K={codebook_size}, {', '.join(limits) or 'to the plateau'}"
    )
    print("run                          learned s  mean dist")
    print(f"1 process x {os.cpu_count()} threads        {single[0]:>9.1f}  {single[1]:>9.5f}")
    print(f"{args.processes} processes x 1 thread each  {sharded[0]:>9.1f}  {sharded[1]:>9.5f}")
    print(f"sharded / single: time {sharded[0] / single[0]:.2f}, distance {sharded[1] / single[1]:.3f}")


if __name__ == "__main__":
    main()
