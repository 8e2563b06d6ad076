"""The hot path: examples per CPU second of fixed work, and proof that a change kept every decision.

    python bench/hotpath.py --trees OLD NEW [--rounds 3] [--only a b c raw] [--json PATH]
    python bench/hotpath.py --fingerprint [--json PATH]

Four fixed workloads (the machine is shared: process CPU time, not wall time):

* ``a``: ``python -m fuzzer run --seed 1 --max-examples 300 --time-budget 0`` (default model,
  v6.12 Radix, 4 CPUs, kprobes and optprobes loaded);
* ``b``: the same on a deep-set model, ``-p fuzzer_plugins.mistakes.kprobe_trap_recheck``,
  seed 2 (whose first 300 examples do not reach the mistake: no shrinking, fixed work);
* ``c``: ``--engine hypothesis --max-examples 100``, seed 1;
* ``raw``: bench/run.py's raw emulator, the first 100 recorded examples of the default
  model replayed three times, every boot run.

With ``--trees``, each workload runs in a fresh process with each tree first on the path,
alternately, ``--rounds`` times; the best CPU time of each is compared. Before timing, each
tree's fingerprint (below) must be the same: a speed-up that changes a decision is a bug.

``--fingerprint`` prints a digest of what the searches decided: every example's recorded
steps, emulated steps, kernel log and failure signature, and each search's routines entered
and pairs formed, for the walk on four models and three seeds (150 examples each) and with
``--guide`` (100), the Hypothesis engine on two seeds (40 examples each; the second with
``--guide``), and the raw emulator's replays.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

WORKLOADS: dict[str, list[str]] = {
    "a": ["run", "--seed", "1", "--max-examples", "300", "--time-budget", "0"],
    "b": ["-p", "fuzzer_plugins.mistakes.kprobe_trap_recheck", "run", "--seed", "2",
          "--max-examples", "300", "--time-budget", "0"],
    "c": ["run", "--seed", "1", "--max-examples", "100", "--time-budget", "0",
          "--engine", "hypothesis"],
}
FINGERPRINT_MODELS = {
    "default": {},
    "hash": {"mmu": "hash"},
    "v6.1": {"kernel": "v6.1"},
    "kprobe_trap_recheck": {"plugins": ["fuzzer_plugins.mistakes.kprobe_trap_recheck"]},
}


def run_one(name: str) -> dict[str, Any]:
    """One workload in this process: its CPU seconds and what it did."""
    if name == "raw":
        from run import model_for, raw_once, record_examples
        model = model_for()
        recorded = record_examples(model, 100)
        started = time.process_time()
        steps = sum(raw_once(model, recorded) for _ in range(3))
        return {"cpu_s": time.process_time() - started, "steps": steps, "examples": 3 * len(recorded)}
    from fuzzer._cli import main
    out = io.StringIO()
    started = time.process_time()
    rc = main(WORKLOADS[name], out=out, err=io.StringIO())
    cpu = time.process_time() - started
    tail = out.getvalue().strip().splitlines()[-1]
    return {"cpu_s": cpu, "rc": rc, "summary": tail}


def _digest(records: list[Any]) -> str:
    return hashlib.sha256(repr(records).encode()).hexdigest()[:16]


def fingerprint() -> dict[str, str]:
    """What the searches decided, digested per search (see the module docstring)."""
    from run import known, model_for, raw_once, record_examples

    from fuzzer import _bootcache
    from fuzzer._engine import run_campaign
    from fuzzer._engine.search import Events

    out: dict[str, str] = {}

    def search(label: str, model: Any, **kw: Any) -> None:
        records: list[Any] = []

        def finish(m: Any, caught: Any) -> None:
            sig = getattr(caught, "signature", None) or type(caught).__name__
            records.append((None, sig) if m is None else (
                [repr(s) for s in m.steps], m.nsteps, list(m.log), sig))

        enabled = _bootcache.ENABLED
        _bootcache.clear()
        o = run_campaign(model, events=Events(example_finish=finish), time_budget=0,
                         shrink=False, known=known(model), **kw)
        records.append((o.examples, o.emulated_steps, o.examples_to_first_failure,
                        str(o.failure.signature) if o.failure else None, sorted(o.routines),
                        o.stats.pairs))
        out[label] = _digest(records)
        _bootcache.ENABLED = enabled

    for name, spec in FINGERPRINT_MODELS.items():
        model = model_for(**spec)
        for seed in (1, 2, 3):
            search(f"walk {name} seed {seed}", model, seed=seed, max_examples=150)
        search(f"guided walk {name}", model, seed=4, max_examples=100, guide=True)
    default = model_for()
    for seed in (1, 2):
        search(f"hypothesis default seed {seed}", default, seed=seed, max_examples=40,
               engine="hypothesis", guide=seed == 2)
    recorded = record_examples(default, 30)
    out["raw replays"] = _digest([raw_once(default, recorded, each=True)])
    return out


def in_tree(tree: str, args: list[str]) -> dict[str, Any]:
    env = dict(os.environ, PYTHONPATH=f"{tree}:{tree}/examples/fuzzer-x86")
    done = subprocess.run([sys.executable, str(HERE / "hotpath.py"), *args], env=env, check=True,
                          capture_output=True, text=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def compare(trees: list[str], names: list[str], rounds: int, check: bool = True) -> dict[str, Any]:
    if check:
        prints = [in_tree(t, ["--fingerprint"]) for t in trees]
        diff = [k for k in prints[1] if prints[1][k] != prints[0].get(k)]
        assert not diff, f"{trees[1]} decided differently from {trees[0]}: {diff}"
        print(f"fingerprints identical ({len(prints[0])} searches)", flush=True)
    best: dict[str, dict[str, float]] = {n: {} for n in names}
    for r in range(rounds):
        for n in names:
            for t in (trees if r % 2 == 0 else trees[::-1]):
                res = in_tree(t, ["--one", n])
                best[n][t] = min(best[n].get(t, float("inf")), res["cpu_s"])
                print(f"round {r + 1} {n} {t}: {res['cpu_s']:.2f} CPU s"
                      f" (load {os.getloadavg()[0]:.2f})", flush=True)
    rows = {n: {"cpu_s": best[n], "ratio": best[n][trees[0]] / best[n][trees[1]]} for n in names}
    print("| workload | " + " | ".join(trees) + " | speed-up |")
    print("|---|" + "---|" * len(trees) + "---|")
    for n, row in rows.items():
        print(f"| {n} | " + " | ".join(f"{row['cpu_s'][t]:.2f} s" for t in trees)
              + f" | {row['ratio']:.2f}x |")
    return rows


def main(argv: list[str] | None = None) -> Any:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--trees", nargs=2, metavar=("OLD", "NEW"))
    ap.add_argument("--only", nargs="*", default=["a", "b", "c", "raw"])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--one", choices=[*WORKLOADS, "raw"])
    ap.add_argument("--fingerprint", action="store_true")
    ap.add_argument("--no-check", action="store_true", help="time only (no fingerprints first)")
    ap.add_argument("--no-cache", action="store_true", help="--fingerprint with every boot run")
    ap.add_argument("--json", default=None)
    opts = ap.parse_args(argv)
    if opts.one:
        print(json.dumps(run_one(opts.one)))
        return None
    if opts.fingerprint:
        if opts.no_cache:
            from fuzzer import _bootcache
            _bootcache.ENABLED = False
        print(json.dumps(fingerprint()))
        return None
    print(f"{time.strftime('%Y-%m-%d %H:%M %Z')}; load {os.getloadavg()}", flush=True)
    rows = compare(opts.trees, opts.only, opts.rounds, not opts.no_check)
    if opts.json:
        Path(opts.json).write_text(json.dumps(rows, indent=1) + "\n")
    return rows


if __name__ == "__main__":
    main()
