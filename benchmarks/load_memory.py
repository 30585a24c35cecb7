"""Peak memory of loading an artifact: `CompressedEmbedding.from_pretrained` on a ~16 MB artifact, as the growth of
the process's peak resident set (VmHWM, Linux) over its resident set just before the load, and its ratio to the
artifact's size (ideal: 1, the loaded module itself).

The artifact (1,000,000 rows, M=32, K=16, D=50: 16 MB of codes, 0.1 MB of codebook) is saved once by this
checkout; each load runs in a fresh interpreter, `--repeats` times, after the load of a tiny artifact (which
pays the lazy imports). `--source DIR` (repeatable) puts another
checkout of the package first on PYTHONPATH, so two versions are measured side by side in one run (e.g. a
`git worktree` of an older commit).

Usage: python benchmarks/load_memory.py [--repeats N] [--source DIR ...]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

REPOSITORY = Path(__file__).resolve().parents[1]
ROWS, DIM, NUM_CODEBOOKS, CODEBOOK_SIZE = 1_000_000, 50, 32, 16

LOAD = """
import pathlib, sys
import dccl_hf
assert pathlib.Path(dccl_hf.__file__).parents[1] == pathlib.Path(sys.argv[2])
from dccl_hf import CompressedEmbedding
def memory(field):
    with open("/proc/self/status") as file:
        return next(int(line.split()[1]) * 1024 for line in file if line.startswith(field + ":"))
CompressedEmbedding.from_pretrained(sys.argv[3])  # warm-up: lazy imports and first-use allocations
before = memory("VmRSS")
module = CompressedEmbedding.from_pretrained(sys.argv[1])
print(memory("VmHWM") - before)
"""


def save_artifacts(directory: Path) -> int:
    """Save the benchmark's artifact and a tiny one (the warm-up load) with this checkout; returns the size of
    the first in bytes."""
    sys.path.insert(0, str(REPOSITORY))
    import torch

    from dccl_hf import CompressedEmbedding

    generator = torch.Generator().manual_seed(0)
    codes = torch.randint(CODEBOOK_SIZE, (ROWS, NUM_CODEBOOKS), generator=generator)
    codebook = torch.randn(NUM_CODEBOOKS, CODEBOOK_SIZE, DIM, generator=generator)
    CompressedEmbedding.from_codes(codes, codebook).save_pretrained(directory / "artifact")
    CompressedEmbedding.from_codes(codes[:10], codebook).save_pretrained(directory / "tiny")
    return sum(path.stat().st_size for path in (directory / "artifact").iterdir())


def peak_growth(directory: Path, source: Path) -> int:
    """Bytes the peak resident set grows by while a fresh interpreter importing dccl_hf from `source` loads."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(source), env.get("PYTHONPATH")]))
    run = subprocess.run(
        [sys.executable, "-c", LOAD, str(directory / "artifact"), str(source), str(directory / "tiny")],
        env=env,
        cwd=tempfile.gettempdir(),  # `python -c` puts the working directory ahead of PYTHONPATH
        check=True,
        capture_output=True,
        text=True,
    )
    return int(run.stdout.split()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--source", type=Path, action="append", default=[], help="another checkout to measure"
    )
    args = parser.parse_args()
    sources = [REPOSITORY, *(path.resolve() for path in args.source)]
    with tempfile.TemporaryDirectory() as directory:
        size = save_artifacts(Path(directory))
        growth: dict[Path, list[int]] = {source: [] for source in sources}
        for _ in range(args.repeats):
            for source in sources:
                growth[source].append(peak_growth(Path(directory), source))
    print(f"# artifact: {ROWS} rows x {DIM} dims, M={NUM_CODEBOOKS}, K={CODEBOOK_SIZE}: {size / 1e6:.1f} MB")
    print(f"# median of {args.repeats} fresh interpreters each")
    print(f"{'code':<40} {'peak growth MB':>15} {'x artifact':>11}")
    for source, values in growth.items():
        median = statistics.median(values)
        name = "this checkout" if source == REPOSITORY else str(source)
        print(f"{name:<40} {median / 1e6:>15.1f} {median / size:>11.2f}")


if __name__ == "__main__":
    main()
