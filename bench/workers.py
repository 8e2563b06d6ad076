"""Examples per second of a campaign on 1 and 2 Dask LocalCluster workers, measured in one run.

For each worker count the bench starts a ``LocalCluster`` of that many
processes (one thread each) and times its start-up; then ``python -m fuzzer
run --scheduler ADDRESS`` runs a campaign on it with the same seed and time
budget, and the last line of its ``--stats`` gives examples, emulated steps and
the rates over the campaign alone: the cluster's start-up and the model's build
on the workers (the header's "ready in") are not counted, and are printed
beside. The first row is the same campaign in one process, no cluster
(``--workers 1``), for reference; the last rows run N such processes side by side, independent
of each other: the most N workers can do on this machine, whose cores share caches, memory
bandwidth and (in a VM) a host, so the cluster's rows are also given as a fraction of that
ceiling. Leave the machine otherwise idle: on 2 cores,
2 workers should give close to 2x one. On a busy machine the rates say more
about the neighbours than about the workers; examples per CPU second (the
workers' CPU time during the campaign; with no cluster the whole process's,
start-up included) show what each worker does with the CPU it gets.

    python bench/workers.py [--seconds 20] [--workers 1 2]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any


def start(cwd: Path, seconds: float, *where: str, name: str = "stats.jsonl") -> subprocess.Popen[str]:
    """Start one campaign of ``seconds`` on the default model, seed 1, its statistics in ``name``."""
    return subprocess.Popen([sys.executable, "-m", "fuzzer", "run", "--seed", "1", "--max-examples", "0",
                             "--time-budget", str(seconds), "--corpus", "none", "--stats", str(cwd / name),
                             *where], cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def finish(proc: subprocess.Popen[str], cwd: Path, name: str = "stats.jsonl") -> dict[str, Any]:
    """Wait for a campaign started by ``start``; its last statistics sample."""
    out, err = proc.communicate()
    if proc.returncode != 0:
        raise SystemExit(f"the campaign failed (exit {proc.returncode}):\n{out}{err}")
    last: dict[str, Any] = json.loads((cwd / name).read_text().splitlines()[-1])
    ready = re.search(r"ready in ([0-9.]+)s", out)
    last["ready_s"] = float(ready.group(1)) if ready else 0.0
    return last


def campaign(cwd: Path, seconds: float, *where: str) -> dict[str, Any]:
    """One campaign of ``seconds`` on the default model, seed 1; its last statistics sample."""
    return finish(start(cwd, seconds, *where), cwd)


def side_by_side(n: int, seconds: float, cwd: Path) -> dict[str, Any]:
    """``n`` independent one-process campaigns at once, no cluster: what ``n`` workers could do at
    best on this machine (the cores' shared caches, memory and clock), summed."""
    names = [f"stats-{i}.jsonl" for i in range(n)]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    procs = [start(cwd, seconds, "--workers", "1", name=name) for name in names]
    recs = [finish(proc, cwd, name) for proc, name in zip(procs, names, strict=True)]
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    total = {key: sum(rec[key] for rec in recs)
             for key in ("examples", "steps", "examples_per_s", "steps_per_s")}
    cpu = after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime
    return {**total, "ready_s": max(rec["ready_s"] for rec in recs), "startup_s": 0.0, "cpu_s": cpu}


def measure(workers: int, seconds: float, cwd: Path) -> dict[str, Any]:
    """A campaign on a LocalCluster of ``workers`` processes started here (``workers`` 0: one
    process, no cluster); the cluster's start-up time in ``startup_s``, and the CPU seconds the
    campaign took in ``cpu_s`` (the workers' during it; with no cluster, the whole process's)."""
    # The default model only: the client and the cluster's workers (started here) alike.
    os.environ["FUZZER_DISABLE_PLUGIN_AUTOLOAD"] = "1"
    if workers == 0:
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        rec = campaign(cwd, seconds, "--workers", "1")
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpu = after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime
        return {**rec, "startup_s": 0.0, "cpu_s": cpu}
    import dask
    import psutil
    from distributed import Client, LocalCluster

    started = time.monotonic()
    # As run --workers N starts its own: Dask's statistical profiler off (it costs the emulator ~20%).
    with dask.config.set({"distributed.worker.profile.enabled": False}), \
            LocalCluster(n_workers=workers, threads_per_worker=1, processes=True,
                         dashboard_address=":0") as cluster, Client(cluster) as client:
        startup = time.monotonic() - started
        # One example first, so the workers have built the model before the measured campaign.
        campaign(cwd, 0, "--max-examples", "1", "--scheduler", cluster.scheduler_address)
        procs = [psutil.Process(pid) for pid in client.run(os.getpid).values()]
        before = sum(sum(p.cpu_times()[:2]) for p in procs)
        rec = campaign(cwd, seconds, "--scheduler", cluster.scheduler_address, "--workers", str(workers))
        cpu = sum(sum(p.cpu_times()[:2]) for p in procs) - before
    return {**rec, "startup_s": startup, "cpu_s": cpu}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=20.0)
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    opts = ap.parse_args(argv)
    print(f"default model, --seed 1, {opts.seconds:g} s campaigns, {os.cpu_count()} CPUs")
    print(f"{'workers':>16} {'examples':>9} {'steps':>11} {'examples/s':>10} {'steps/s':>9}"
          f" {'ratio':>6} {'cluster start':>13} {'ready':>6} {'CPU s':>6} {'examples/CPU s':>14}")
    base = None
    cluster: dict[int, float] = {}
    with tempfile.TemporaryDirectory() as tmp:
        rows = [(0, False), *((n, False) for n in opts.workers), *((n, True) for n in opts.workers if n > 1)]
        for n, independent in rows:
            run = side_by_side if independent else measure
            rec = run(n, opts.seconds, Path(tmp))
            rate = rec["examples_per_s"]
            if n == 1 or (base is None and n > 1):
                base = rate
            ratio = f"{rate / base:6.2f}" if base and n else "     -"
            kind = "side by side" if independent else "LocalCluster"
            label = "1 (no cluster)" if n == 0 else f"{n} {kind}"
            print(f"{label:>16} {rec['examples']:>9,} {rec['steps']:>11,} {rate:>10,.1f}"
                  f" {rec['steps_per_s']:>9,.0f} {ratio} {rec['startup_s']:>12.1f}s {rec['ready_s']:>5.1f}s"
                  f" {rec['cpu_s']:>6.1f} {rec['examples'] / rec['cpu_s']:>14.1f}", flush=True)
            if independent:
                print(f"{'':>16} {n} LocalCluster workers did {cluster[n] / rate:.0%} of what {n}"
                      " independent processes did", flush=True)
            elif n:
                cluster[n] = rate


if __name__ == "__main__":
    main()
