"""The boot cache (``fuzzer._bootcache``): the same campaigns with it and without it.

    python bench/bootcache.py [--examples 400] [--seeds 1 2 3] [--only NAME ...] [--json PATH]

For the default model (v6.12, Radix, 4 CPUs), v6.12 on Hash (whose boot draws no random
number, so every boot after the second is a copy) and, with ``--only``, some mistakes'
models (v6.12, Radix), runs the fuzzer's campaign at its defaults (no shrinking) for a fixed number
of examples, once with the boot cache off and once on, alternately per seed, and
reports the process CPU time of each (the machine is shared: CPU time, best of the
alternation, is the least noisy figure), the examples per CPU second, the ratio,
and how many boots came from the cache. The two runs of a seed must make the same
examples, emulated steps and finding: the cache changes speed only.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from run import known, model_for

from fuzzer import _bootcache
from fuzzer._engine import run_campaign
from fuzzer._model import Model


def campaign(model: Model, seed: int, examples: int, on: bool) -> dict[str, Any]:
    _bootcache.ENABLED = on
    _bootcache.clear()
    started = time.process_time()
    out = run_campaign(model, seed=seed, max_examples=examples, time_budget=0, shrink=False,
                       known=known(model))
    cpu = time.process_time() - started
    _bootcache.ENABLED = True
    return {"cpu_s": cpu, "examples": out.examples, "steps": out.emulated_steps,
            "found_at": out.examples_to_first_failure,
            "signature": str(out.failure.signature) if out.failure else None}


def measure(name: str, model: Model, seeds: list[int], examples: int) -> dict[str, Any]:
    rows = []
    for seed in seeds:
        off, on = campaign(model, seed, examples, False), campaign(model, seed, examples, True)
        same = all(off[k] == on[k] for k in ("examples", "steps", "found_at", "signature"))
        assert same, f"{name} seed {seed}: the boot cache changed the campaign: {off} != {on}"
        rows.append({"seed": seed, "off": off, "on": on})
    off_cpu = sum(r["off"]["cpu_s"] for r in rows)
    on_cpu = sum(r["on"]["cpu_s"] for r in rows)
    n = sum(r["on"]["examples"] for r in rows)
    return {"name": name, "examples": n, "off_ex_per_cpu_s": n / off_cpu, "on_ex_per_cpu_s": n / on_cpu,
            "speedup": off_cpu / on_cpu, "runs": rows}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--examples", type=int, default=400)
    ap.add_argument("--seeds", type=int, nargs="*", default=[1, 2, 3])
    ap.add_argument("--only", nargs="*", default=[], help="mistakes (v6.12 Radix) to measure too")
    ap.add_argument("--json", default=None)
    opts = ap.parse_args(argv)
    print(f"{time.strftime('%Y-%m-%d %H:%M %Z')}; load {os.getloadavg()[0]:.2f}", flush=True)
    models = [("default", model_for()), ("v6.12 hash", model_for(mmu="hash"))] + [
        (m, model_for(plugins=[f"fuzzer_plugins.mistakes.{m}"])) for m in opts.only]
    results = [measure(name, model, opts.seeds, opts.examples) for name, model in models]
    print("| model | examples | cache off: examples/CPU s | cache on | speed-up |")
    print("|---|---|---|---|---|")
    for r in results:
        print(f"| {r['name']} | {r['examples']} | {r['off_ex_per_cpu_s']:.1f} | {r['on_ex_per_cpu_s']:.1f}"
              f" | {r['speedup']:.2f}x |")
    if opts.json:
        Path(opts.json).write_text(json.dumps(results, indent=1) + "\n")
    return {"results": results}


if __name__ == "__main__":
    main()
