"""Start-up time: `import dccl_hf` and `dccl-hf --help` against `import torch` (the floor: the package needs torch).

Each command runs in a fresh interpreter, `--repeats` times (interleaved), and the median wall time is reported with its ratio
to `import torch`. `--source DIR` (repeatable) puts another checkout of the package first on PYTHONPATH, so two
versions of the code are measured side by side in one run (e.g. a `git worktree` of an older commit).

Usage: python benchmarks/startup.py [--repeats N] [--source DIR ...]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPOSITORY = Path(__file__).resolve().parents[1]

COMMANDS = {
    "import torch": "import torch",
    "import dccl_hf": "import dccl_hf",
    "dccl-hf --help": "import sys; sys.argv = ['dccl-hf', '--help']; from dccl_hf.cli import main; main()",
    "import dccl_hf + transformers model": "import dccl_hf; from transformers import AutoModel",
}


def seconds(code: str, source: Path) -> float:
    """Wall time of `python -c code` in a fresh interpreter that imports dccl_hf from `source`."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(source), env.get("PYTHONPATH")]))
    check = f"import dccl_hf, pathlib; assert pathlib.Path(dccl_hf.__file__).parents[1] == pathlib.Path({str(source)!r})"
    start = time.perf_counter()
    # Run from a neutral directory: `python -c` puts the working directory ahead of PYTHONPATH.
    subprocess.run(
        [sys.executable, "-c", code],
        env=env,
        cwd=tempfile.gettempdir(),
        check=True,
        stdout=subprocess.DEVNULL,
    )
    elapsed = time.perf_counter() - start
    subprocess.run([sys.executable, "-c", check], env=env, cwd=tempfile.gettempdir(), check=True)
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--repeats", type=int, default=5, help="runs per command (median reported)")
    parser.add_argument(
        "--source", type=Path, action="append", default=[], help="another checkout to measure"
    )
    args = parser.parse_args()
    sources = [REPOSITORY, *(source.resolve() for source in args.source)]
    print(f"# python benchmarks/startup.py --repeats {args.repeats}", *(f"--source {s}" for s in args.source))
    print(
        f"# {os.cpu_count()} CPUs, median of {args.repeats} fresh interpreters, {time.strftime('%Y-%m-%d %H:%M')}"
    )
    print(f"{'code':<20} {'command':<36} {'median s':>9} {'× import torch':>15}")
    times: dict[tuple[Path, str], list[float]] = {(s, name): [] for s in sources for name in COMMANDS}
    for _ in range(
        args.repeats
    ):  # interleaved, so that a change in the machine's load hits every command alike
        for source in sources:
            for name, code in COMMANDS.items():
                times[source, name].append(seconds(code, source))
    for source in sources:
        floor = statistics.median(times[source, "import torch"])
        for name in COMMANDS:
            median = statistics.median(times[source, name])
            label = "this checkout" if source == REPOSITORY else str(source)
            print(f"{label:<20} {name:<36} {median:>9.2f} {median / floor:>15.2f}")


if __name__ == "__main__":
    main()
