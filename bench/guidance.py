"""Does coverage guidance find the injected mistakes sooner? Guided against unguided, one run.

For each mistake plugin and seed, runs a campaign on v6.2 twice -- unguided, then with
``--guide`` (the walk: later examples start from prefixes of those that entered new
modelled routines; ``--engine hypothesis``: each example's count of distinct
routines goes to ``hypothesis.target``) -- until the first failure (not shrunk)
or the time limit, and prints a table of the median time and examples to find,
and how many seeds found it, with the guided/unguided ratios. Example counts
do not depend on the machine's load; times do, so compare the ratios within
one run.

    python bench/guidance.py [--seeds 6] [--limit 20] [--engine walk] [MISTAKE[@MMU] ...]
"""

from __future__ import annotations

import argparse
import statistics
import time

from fuzzer import Model
from fuzzer._engine import ENGINES, run_campaign
from fuzzer.testing import make_model

DEFAULT = ("unsafe_sequence_order@radix", "leak_on_offline", "shared_patching_mm",
           "pmi_in_patch_window", "skip_restore_breakpoints")


def model_for(mistake: str) -> Model:
    name, _, mmu = mistake.partition("@")
    # The mistakes change v6.2's routines: newer versions do not have them.
    return make_model("v6.2", mmu=mmu or "radix", plugins=[f"fuzzer_plugins.mistakes.{name}"])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, default=6)
    ap.add_argument("--limit", type=float, default=20.0, help="seconds per campaign")
    ap.add_argument("--engine", choices=tuple(ENGINES), default=next(iter(ENGINES)))
    ap.add_argument("mistakes", nargs="*", default=list(DEFAULT))
    opts = ap.parse_args()
    print(f"engine {opts.engine}, {opts.seeds} seeds, {opts.limit:g} s limit per campaign;"
          " not found counts as the limit")
    header = (f"{'mistake':30} {'mode':9} {'found':>6} {'median ms':>10} {'median examples':>16}"
              f" {'s ratio':>8} {'ex ratio':>9}")
    print(header)
    print("-" * len(header))
    started = time.monotonic()
    for mistake in opts.mistakes:
        model = model_for(mistake)
        rows = {}
        for guide in (False, True):
            times, examples, found = [], [], 0
            for seed in range(1, opts.seeds + 1):
                out = run_campaign(model, seed=seed, max_examples=0, time_budget=opts.limit,
                                   guide=guide, shrink=False, engine=opts.engine,
                                   known=[k.signature for k in model.known])
                if out.time_to_first_failure is not None:
                    found += 1
                    times.append(out.time_to_first_failure)
                    examples.append(out.examples_to_first_failure)
                else:
                    times.append(opts.limit)
                    examples.append(out.examples)
            rows[guide] = (found, statistics.median(times), statistics.median(examples))
        for guide in (False, True):
            found, t, ex = rows[guide]
            ratio = "" if not guide else f"{t / rows[False][1]:8.2f} {ex / rows[False][2]:9.2f}"
            print(f"{mistake:30} {'guided' if guide else 'unguided':9} {found:>3}/{opts.seeds:<2}"
                  f" {t * 1000:10.1f} {ex:16,.0f} {ratio}", flush=True)
    print(f"(total {time.monotonic() - started:.0f} s; ratio < 1: guidance finds it sooner)")


if __name__ == "__main__":
    main()
