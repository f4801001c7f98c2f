"""How long the `evoked` command takes to start, against ``python -c "import torch"``, in one run.

    python bench/startup.py            # median of 5 fresh processes per command
    python bench/startup.py --repeat 9 --json
    python bench/startup.py --src ../other-checkout/src   # another version, for a before/after

Commands, each in a fresh Python process (wall time, start to exit, the rounds alternating):

- ``import torch``: the reference, what every command would pay if it imported torch;
- ``evoked --help``: building the whole parser (every subcommand, choices from the registries);
- ``evoked search STORE --va 8,6 -k 5``: a VA query on a small store (2,000 rows of 512-d
  features, no index, no model), made once in a temporary folder.

Goals: ``--help`` under 1 s, ``search --va`` under 2 s on the 2-core machine.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
GOALS = {"evoked --help": 1.0, "evoked search --va": 2.0}


def make_store(work: Path, n: int = 2000, d: int = 512) -> Path:
    """A store with random features and VA ratings, written with the package's own writer."""
    sys.path.insert(0, str(REPO / "tests"))
    import numpy as np

    from storeutil import make_store as write

    rng = np.random.default_rng(0)
    return write(
        work / "bench.h5",
        {"net/pool": rng.normal(size=(n, d)).astype(np.float32)},
        valence=rng.uniform(1, 9, n),
        arousal=rng.uniform(1, 9, n),
    )


def wall(argv: list[str], env: dict[str, str]) -> float:
    t0 = time.perf_counter()
    subprocess.run(argv, env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    return time.perf_counter() - t0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeat", type=int, default=5, help="fresh processes per command (median reported)")
    ap.add_argument("--json", action="store_true", help="print the results as JSON")
    ap.add_argument(
        "--src", type=Path, default=REPO / "src", help="the evoked source tree to time (default ./src)"
    )
    args = ap.parse_args()

    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(args.src), os.environ.get("PYTHONPATH")])),
    }
    with tempfile.TemporaryDirectory() as tmp:
        store = make_store(Path(tmp))
        commands = {
            "import torch": [sys.executable, "-c", "import torch"],
            "evoked --help": [sys.executable, "-m", "evoked", "--help"],
            "evoked search --va": [
                sys.executable,
                "-m",
                "evoked",
                "search",
                str(store),
                "--feature",
                "net/pool",
                "--va",
                "8,6",
                "-k",
                "5",
            ],
        }
        for argv in commands.values():  # warm the page cache once, untimed
            wall(argv, env)
        load0 = os.getloadavg()[0]
        times: dict[str, list[float]] = {name: [] for name in commands}
        for _ in range(args.repeat):
            for name, argv in commands.items():
                times[name].append(wall(argv, env))
        load1 = os.getloadavg()[0]

    median = {name: round(statistics.median(t), 3) for name, t in times.items()}
    report = {
        "median_s": median,
        "goal_s": GOALS,
        "met": {name: median[name] < goal for name, goal in GOALS.items()},
        "repeat": args.repeat,
        "loadavg_1min": [round(load0, 2), round(load1, 2)],
        "src": str(args.src),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}",
    }
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    print(
        f"startup, median of {args.repeat} fresh processes ({report['machine']}, load {load0:.1f} -> {load1:.1f})"
    )
    print(f"  {'command':<20} {'s':>6}  goal")
    for name, s in median.items():
        goal = GOALS.get(name)
        print(
            f"  {name:<20} {s:6.3f}  " + (f"< {goal:g} s: {'met' if s < goal else 'missed'}" if goal else "-")
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
