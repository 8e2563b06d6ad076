"""Steps per second of ``run --workers N`` against one worker, measured in one run.

Runs ``python -m fuzzer run`` on the default model with the same seed and a
time budget, once per worker count, and prints each run's examples, emulated
steps and steps per second (from ``--stats``'s last line) with the ratio to
one worker. Leave the machine otherwise idle: on 2 cores, 2 workers should
give close to 2x.

    python bench/workers.py [--seconds 20] [--workers 1 2]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path


def measure(workers: int, seconds: float, cwd: Path) -> dict[str, float]:
    stats = cwd / f"stats-{workers}.jsonl"
    env = {**os.environ, "FUZZER_DISABLE_PLUGIN_AUTOLOAD": "1"}
    subprocess.run([sys.executable, "-m", "fuzzer", "run", "--seed", "1", "--max-examples", "0",
                    "--time-budget", str(seconds), "--corpus", "none", "--workers", str(workers),
                    "--stats", str(stats)], cwd=cwd, env=env, check=True, capture_output=True)
    last: dict[str, float] = json.loads(stats.read_text().splitlines()[-1])
    return last


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=20.0)
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    opts = ap.parse_args()
    print(f"default model, --seed 1, {opts.seconds:g} s per run, {os.cpu_count()} CPUs")
    print(f"{'workers':>7} {'examples':>10} {'steps':>12} {'steps/s':>10} {'ratio':>6}")
    base = None
    with tempfile.TemporaryDirectory() as tmp:
        for n in opts.workers:
            rec = measure(n, opts.seconds, Path(tmp))
            rate = rec["steps_per_s"]
            base = base or rate
            print(f"{n:>7} {rec['examples']:>10,} {rec['steps']:>12,} {rate:>10,.0f} {rate / base:>6.2f}",
                  flush=True)


if __name__ == "__main__":
    main()
