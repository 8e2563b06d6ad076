"""The deep-bug set: how many examples a uniform random walk needs, and what the schedulers need.

    python bench/deep.py [--seeds 5] [--examples 10000 | --limit 60] [--only NAME ...]
                         [--searchers walk fuzzer ...] [--json bench/deep.json]

For each mistake of the deep set (``DEEP``), over ``--seeds`` seeds, each
search with a budget of ``--examples`` examples or ``--limit`` seconds
(whichever is spent first; ``--examples`` alone sets no time limit, so the
figures do not depend on the machine's load), side by side in one run:

* ``walk``: bench/run.py's :func:`random_walk`, the uniform baseline
  (rules uniform among the enabled ones, schedule bytes uniform);
* ``fuzzer``: the fuzzer's campaign at its defaults, exactly what ``python -m
  fuzzer run`` searches with (the walk engine, ``--cpu-scheduler mixed``,
  interleaving feedback, the model's known findings searched past);
  ``fuzzer-uniform``, ``fuzzer-pct``, ``fuzzer-bounded``: one scheduler alone;
  ``fuzzer-nofeedback``: ``--no-interleave``; ``hypothesis``: ``--engine hypothesis``;
* ``uniform``, ``pct``, ``bounded``, ``mixed``, ``feedback``: bench/run.py's
  walk with the run rules' CPUs chosen by a scheduler of :mod:`fuzzer._schedulers`.

Per seed: examples and seconds to the first failure (a miss counts as the
examples and seconds it ran). Per mistake and searcher: seeds found, the
median examples and seconds. The first failure each searcher finds is shrunk
(``--shrink`` seconds at most) and the table says how many CPUs its
reproduction interleaves: the deep set's claim is that it needs two or more
CPUs in a specific order. A mistake is *deep* when the walk's median is
1,000 examples or more (or it misses within the budget).

The machine is shared: examples to find are the number to compare across
machines; seconds are wall-clock, with the load average printed beside them.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from run import SCHEDULE_BLOCK, known, model_for, random_walk, sampler

from fuzzer._errors import KernelFailure
from fuzzer._machine import Machine
from fuzzer._model import Model
from fuzzer._schedulers import Scheduler, make, reuse_or_draw
from fuzzer._steps import Step

#: The deep set: mistake -> (kernel, MMU). Each needs two CPUs in a particular order.
DEEP = {
    "kprobe_trap_recheck": ("v6.12", "radix"),
    "kprobe_slot_before_rcu": ("v6.12", "radix"),
    "kprobe_irqs_on_in_handler": ("v6.12", "radix"),
    "kprobe_unhash_first": ("v6.12", "radix"),
    "kprobe_arm_before_hash": ("v6.12", "radix"),
    "kprobe_rcu_too_early": ("v6.12", "radix"),
    "static_key_inc_enabling": ("v6.12", "radix"),
    "static_key_dec_stale_count": ("v6.12", "radix"),
    "kprobe_aggr_publish_early": ("v6.12", "radix"),
}
#: Rules per example for the scheduled walks: the fuzzer's walk's range (and its swarm share).
RULES = (10, 100)
SWARM = 0.25
SEARCHERS = ("walk", "fuzzer", "fuzzer-uniform", "fuzzer-pct", "fuzzer-bounded", "fuzzer-nofeedback",
             "hypothesis")
#: bench-only walks (no fuzzer engine): the schedulers alone, on bench/run.py's walk.
BENCH_WALKS = ("uniform", "pct", "bounded", "mixed", "feedback")


def scheduled_walk(model: Model, *, seed: int, time_budget: float, scheduler: Scheduler,
                   rules: int | tuple[int, int] = RULES, feedback: bool = False,
                   max_examples: int = 0) -> dict[str, Any]:
    """bench/run.py's uniform random walk with each ``run`` rule's CPUs chosen by ``scheduler``
    (and the fuzzer's swarm share and argument reuse). With ``feedback``, examples that add an
    interleaving pair are kept and half the examples replay one with a run step rescheduled."""
    from fuzzer._engine.replay import apply_step
    from fuzzer._interleave import Interleavings, replay_rescheduled
    from fuzzer._schedulers import PCT

    def apply_if_possible(m: Machine, step: Step) -> bool:
        return apply_step(m, step, strict=False)

    seen = Interleavings()
    rng = random.Random(seed)
    ops = [(op, {k: sampler(s) for k, s in op.args.items()}) for op in model.operations]
    kinds = ["online", "offline"] + [op.name for op, _ in ops] + [s.name for s in model.interrupts]
    started = time.perf_counter()
    examples = 0
    while not _spent(started, time_budget, examples, max_examples):
        m = Machine(model)
        examples += 1
        scheduler.begin(rng, len(m.cpus))
        # Swarm testing on a quarter of the examples, as the fuzzer's walk does.
        swarm = rng.random() < SWARM
        on = {k for k in kinds if not swarm or rng.random() < 0.5}
        if feedback:
            seen.attach(m)
        try:
            if feedback and seen.kept and rng.random() < 0.5:
                replay_rescheduled(m, seen.pick(rng), rng, PCT(), apply_if_possible)
            else:
                m.boot(rng.getrandbits(32))
                for _ in range(rng.randint(*rules) if isinstance(rules, tuple) else rules):
                    _rule(m, rng, ops, scheduler, on)
            m.finish()
        except KernelFailure as failure:
            if failure.signature in known(model):
                continue
            return {"found": True, "time": time.perf_counter() - started, "examples": examples,
                    "steps": list(m.steps), "signature": str(failure.signature)}
        finally:
            scheduler.end(sum(len(s.cpus) for s in m.steps))
            if feedback:
                seen.end_example(m)
    return {"found": False, "time": time.perf_counter() - started, "examples": examples}


def _spent(started: float, seconds: float, examples: int, most: int) -> bool:
    """A budget of ``seconds`` and ``most`` examples (0: unbounded) is spent."""
    return bool((seconds and time.perf_counter() - started >= seconds) or (most and examples >= most))


def _rule(m: Machine, rng: random.Random, ops: list[tuple[Any, dict[str, Any]]],
          scheduler: Scheduler, on: set[str]) -> None:
    choices: list[tuple[str, Any, list[Any]]] = []
    up = [c for c in m.cpus if m.can_online(c)] if "online" in on else []
    down = [c for c in m.cpus if m.can_offline(c)] if "offline" in on else []
    idle = [c for c in m.cpus if m.can_start(c)]
    if up:
        choices.append(("online", None, up))
    if down:
        choices.append(("offline", None, down))
    if idle:
        choices.extend(("start", op, idle) for op in ops if op[0].name in on)
    for src in m.model.interrupts:
        if src.name not in on:
            continue
        ok = [c for c in m.cpus if m.can_interrupt(c, src)]
        if ok:
            choices.append(("irq", src, ok))
    choices.append(("run", None, []))
    action, what, cpus = rng.choice(choices)
    if action == "online":
        m.cpu_up(rng.choice(cpus))
    elif action == "offline":
        m.cpu_down(rng.choice(cpus))
    elif action == "start":
        op, args = what
        m.start(rng.choice(cpus), op,
                {k: reuse_or_draw(m, rng, op.args[k], draw) for k, draw in args.items()})
    elif action == "irq":
        m.interrupt(rng.choice(cpus), what)
    else:
        scheduler.run(m, rng, rng.randint(1, SCHEDULE_BLOCK))


def cpus_of(steps: list[Step]) -> int:
    """How many CPUs a reproduction uses (starts, interrupts and scheduled runs; ``finish``
    round-robins the CPUs still busy, so two started operations interleave there too)."""
    return len({n for s in steps for n in (*s.cpus, *((s.cpu,) if s.action in ("start", "irq") else ()))})


def shrink(model: Model, steps: list[Step], signature: str, seconds: float) -> list[Step]:
    from fuzzer._engine.replay import replay
    from fuzzer._engine.shrink import Shrinker

    _, failure = replay(model, steps, strict=False)
    assert failure is not None and hasattr(failure, "signature"), "a found failure must replay"
    sh = Shrinker(model, steps, failure.signature, deadline=time.monotonic() + seconds)
    return list(sh.shrink())


def fuzzer(model: Model, searcher: str, seed: int, limit: float, examples: int = 0) -> dict[str, Any]:
    """The fuzzer's own campaign (no shrinking), past the model's known findings as ``run``
    searches: ``fuzzer`` at defaults, ``fuzzer-X`` with ``--cpu-scheduler X``,
    ``fuzzer-nofeedback`` with ``--no-interleave``, ``hypothesis`` with ``--engine hypothesis``."""
    from fuzzer._engine import run_campaign

    kind = searcher.removeprefix("fuzzer").removeprefix("-")
    knobs: dict[str, Any] = {}
    if kind in ("uniform", "pct", "bounded"):
        knobs["scheduler"] = kind
    elif kind == "nofeedback":
        knobs["interleave"] = False
    elif searcher == "hypothesis":
        knobs["engine"] = "hypothesis"
    out = run_campaign(model, seed=seed, max_examples=examples, time_budget=limit, shrink=False,
                       known=known(model), **knobs)
    found = out.time_to_first_failure is not None
    return {"found": found, "time": out.time_to_first_failure if found else out.duration,
            "examples": out.examples_to_first_failure if found else out.examples,
            "steps": list(out.steps) if found else None,
            "signature": str(out.failure.signature) if out.failure else None}


def find(model: Model, searcher: str, seed: int, limit: float, examples: int = 0) -> dict[str, Any]:
    """One search of ``model`` by ``searcher`` from ``seed``, within ``limit`` seconds and
    ``examples`` examples (0: unbounded): found, seconds and examples to the first failure."""
    if searcher in SEARCHERS and searcher != "walk":
        return fuzzer(model, searcher, seed, limit, examples)
    if searcher == "walk":
        return random_walk(model, seed=seed, time_budget=limit, max_examples=examples)
    if searcher == "feedback":
        return scheduled_walk(model, seed=seed, time_budget=limit, scheduler=make("mixed"),
                              feedback=True, max_examples=examples)
    return scheduled_walk(model, seed=seed, time_budget=limit, scheduler=make(searcher),
                          max_examples=examples)


#: A scenario per mistake for ``python -m fuzzer check`` (the CPUs are named; setup lines run first).
HIT_UNREGISTER = ("setup 0 kprobes.register site=0\ncpu 1 kprobes.hit site=0\n"
                  "cpu 0 kprobes.unregister site=0\n")
SLOT_REUSE = HIT_UNREGISTER + "cpu 2 kprobes.register site=4\n"
SCENARIOS = {
    "kprobe_trap_recheck": HIT_UNREGISTER,
    "kprobe_unhash_first": HIT_UNREGISTER,
    "kprobe_arm_before_hash": "cpu 0 kprobes.register site=0\ncpu 1 kprobes.hit site=0\n",
    "kprobe_slot_before_rcu": SLOT_REUSE,
    "kprobe_irqs_on_in_handler": SLOT_REUSE,
    "kprobe_rcu_too_early": HIT_UNREGISTER + "cpu 0 kprobes.register site=4\n",
    "static_key_inc_enabling": "cpu 0 jump_label.inc\ncpu 1 jump_label.inc\n",
    "static_key_dec_stale_count": "setup 1 jump_label.inc\ncpu 1 jump_label.dec\ncpu 0 jump_label.inc\n",
    # At the blr after pcrel_copy's prefixed instruction (site 7): a probe there is never
    # optimized, so the second registration is what makes the aggregator (at an optimizable
    # site the first one's try_to_optimize_kprobe makes it, in setup).
    "kprobe_aggr_publish_early": ("setup 0 kprobes.register site=7\ncpu 1 kprobes.register site=7 probe=1\n"
                                  "cpu 2 kprobes.hit site=7\n"),
}
#: The two scenarios whose exploration is measured with and without pruning.
CHECK_BENCH = {"hit vs unregister": HIT_UNREGISTER,
               "two keys toggled": "cpu 0 jump_label.toggle key=0\ncpu 1 jump_label.toggle key=1\n"}


def verify(names: list[str] | None, k: int) -> dict[str, Any]:
    """Each mistake's scenario under ``check`` (K preemptions): found, in how many schedules,
    and how many CPUs its shrunk reproduction interleaves; the unmodified kernel for contrast."""
    from fuzzer._check import check, parse_scenario

    out: dict[str, Any] = {}
    for name, text in SCENARIOS.items():
        if names and name not in names:
            continue
        kernel, mmu = DEEP[name]
        cpus = 3 if "cpu 2" in text else 2
        bad = check(model_for(kernel, mmu, [f"fuzzer_plugins.mistakes.{name}"]), parse_scenario(text),
                    preemptions=k, shrink_seconds=20)
        clean = check(_clean(kernel, mmu, cpus), parse_scenario(text), preemptions=k, shrink_seconds=0)
        row = {"found": bad.failure is not None, "schedules": bad.schedules, "seconds": bad.seconds,
               "shrunk_cpus": cpus_of(list(bad.steps or ())), "signature": str(bad.failure.signature)
               if bad.failure else None, "clean_schedules": clean.schedules,
               "clean_failure": str(clean.failure.signature) if clean.failure else None}
        out[name] = row
        print(f"check {name:28} K={k} found {row['found']} after {row['schedules']} schedules"
              f" ({row['seconds']:.1f} s), reproduction on {row['shrunk_cpus']} CPUs;"
              f" unmodified: {row['clean_failure'] or 'clean'} in {row['clean_schedules']}", flush=True)
    return out


def check_bench(most: int) -> list[dict[str, Any]]:
    """Schedules, emulated steps and time to exhaust the two benchmark scenarios, K = 1, 2, 3,
    with each pruning (``por``, the default; ``state``; ``none``), ``most`` schedules at most
    each (a run stopped there is marked incomplete)."""
    from fuzzer._check import check, parse_scenario

    rows = []
    for name, text in CHECK_BENCH.items():
        for k in (1, 2, 3):
            for prune in ("por", "state", "none"):
                r = check(_clean("v6.12", "radix", 2), parse_scenario(text), preemptions=k, prune=prune,
                          shrink_seconds=0, max_schedules=most)
                rows.append({"scenario": name, "k": k, "prune": prune, "schedules": r.schedules,
                             "pruned": r.pruned, "emulated": r.emulated, "seconds": r.seconds,
                             "complete": r.complete,
                             "verdict": str(r.failure.signature) if r.failure else "clean"})
                print(f"check-bench {name:18} K={k} prune={prune:5} {r.schedules:6} schedules"
                      f" {'' if r.complete else '(stopped) '}{r.pruned:6} cut {r.emulated:8} steps"
                      f" {r.seconds:6.1f} s  {rows[-1]['verdict']}", flush=True)
    return rows


def _clean(kernel: str, mmu: str, cpus: int) -> Model:
    from fuzzer import FuzzerPluginManager, KernelConfig, RunConfig

    pm = FuzzerPluginManager()
    pm.load([], autoload=False)
    pm.check_pending()
    return Model.build(pm, RunConfig(kernel, mmu, KernelConfig.build(pm.config_options(), ()), cpus))


def search_deep(opts: argparse.Namespace,
                save: Callable[[dict[str, Any]], None] | None = None) -> dict[str, Any]:
    """Every deep mistake (``--only``) under every searcher, ``--seeds`` seeds each, within the
    budget: per seed and per mistake, examples and seconds to the first failure. Each seed's
    result is printed as it comes (a run of hours shows where it is), and ``save(table)`` is
    called after each mistake and searcher, so a stopped run keeps what it measured."""
    table: dict[str, Any] = {}
    for name, (kernel, mmu) in DEEP.items():
        if opts.only and name not in opts.only:
            continue
        model = model_for(kernel, mmu, [f"fuzzer_plugins.mistakes.{name}"])
        row: dict[str, Any] = {}
        for searcher in opts.searchers:
            runs = []
            for seed in range(1, opts.seeds + 1):
                r = find(model, searcher, seed, opts.limit, opts.examples)
                runs.append(r)
                print(f"  {name} {searcher} seed {seed}: "
                      + ("found" if r["found"] else "missed") + f" at {r['examples']:,} examples"
                      f" ({r['time']:.1f} s, load {os.getloadavg()[0]:.1f})",
                      file=sys.stderr, flush=True)
            cell = {"found": sum(r["found"] for r in runs), "seeds": len(runs),
                    "median_s": statistics.median(r["time"] for r in runs),
                    "median_examples": statistics.median(r["examples"] for r in runs),
                    "runs": [{"found": r["found"], "examples": r["examples"], "seconds": r["time"]}
                             for r in runs], "load": os.getloadavg()[0]}
            hit = next((r for r in runs if r.get("steps")), None)
            if hit is not None and opts.shrink > 0:
                shrunk = shrink(model, hit["steps"], hit["signature"], opts.shrink)
                cell["shrunk"] = [s.describe() for s in shrunk]
                cell["shrunk_cpus"] = cpus_of(shrunk)
                cell["signature"] = hit["signature"]
            row[searcher] = cell
            print(f"{name:28} {searcher:8} found {cell['found']}/{cell['seeds']}"
                  f" median {cell['median_examples']:8g} examples {cell['median_s']:7.2f} s"
                  f" {_per_seed(cell['runs'])}"
                  f" cpus {cell.get('shrunk_cpus', '-')} load {cell['load']:.1f}", flush=True)
            table[name] = row
            if save is not None:
                save(table)
    return table


def _per_seed(runs: list[dict[str, Any]]) -> str:
    """Examples to the first failure per seed, a miss as ``>N`` (the examples it ran)."""
    return ", ".join(f"{r['examples']:,}" if r["found"] else f">{r['examples']:,}" for r in runs)


def print_search_table(results: dict[str, Any]) -> None:
    """The table of ``search_deep``'s results, in the README's form, with the targets."""
    table, searchers = results["find"], results["settings"]["searchers"]
    print(f"\n{results['date']}; load average {results['load']}; budget per seed:"
          f" {results['settings']['examples'] or 'no'} examples, {results['settings']['limit'] or 'no'} s")
    print("| mistake | " + " | ".join(f"{s}: found, median examples (s) per seed" for s in searchers)
          + " | deep? |")
    print("|---|" + "---|" * (len(searchers) + 1))
    for name, row in table.items():
        cells = []
        for s in searchers:
            c = row[s]
            cells.append(f"{c['found']}/{c['seeds']}, **{c['median_examples']:,.0f}**"
                         f" ({c['median_s']:.1f} s): {_per_seed(c['runs'])}")
        walk = row.get("walk")
        deep = "-" if walk is None else ("yes" if walk["median_examples"] >= 1000 else "no")
        print(f"| `{name}` | " + " | ".join(cells) + f" | {deep} |")
    if "walk" in searchers and len(searchers) > 1 and table:
        walk = statistics.median(r["walk"]["median_examples"] for r in table.values())
        walk_s = statistics.median(r["walk"]["median_s"] for r in table.values())
        for s in searchers:
            if s == "walk":
                continue
            ex = statistics.median(r[s]["median_examples"] for r in table.values())
            sec = statistics.median(r[s]["median_s"] for r in table.values())
            full = sum(r[s]["found"] == r[s]["seeds"] for r in table.values())
            print(f"{s}: found on every seed for {full}/{len(table)}; median over the set"
                  f" {ex:,.0f} examples ({sec:.1f} s) against the walk's {walk:,.0f} ({walk_s:.1f} s):"
                  f" {ex / walk:.3f}x in examples, {sec / walk_s:.3f}x in seconds")


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--limit", type=float, default=None,
                    help="seconds per search (default 60; none with --examples alone)")
    ap.add_argument("--examples", type=int, default=0,
                    help="examples per search (10,000 is about 60 s of an idle machine)")
    ap.add_argument("--only", nargs="*")
    ap.add_argument("--searchers", nargs="*", default=["walk", "fuzzer"],
                    help=f"of {', '.join(SEARCHERS + BENCH_WALKS)} (default: walk fuzzer)")
    ap.add_argument("--shrink", type=float, default=30.0, help="seconds to shrink one failure")
    ap.add_argument("--json", default=None)
    ap.add_argument("--verify", type=int, metavar="K", default=None,
                    help="instead: each mistake's scenario under check with K preemptions")
    ap.add_argument("--check-bench", type=int, metavar="N", default=None,
                    help="instead: exhaust the two check scenarios, K = 1-3, with each pruning"
                    " (por, state, none), at most N schedules each")
    opts = ap.parse_args(argv)
    if opts.limit is None:
        opts.limit = 0.0 if opts.examples else 60.0
    results: dict[str, Any] = {"date": time.strftime("%Y-%m-%d %H:%M %Z"),
                               "settings": vars(opts), "find": {}}
    if opts.verify is not None or opts.check_bench is not None:
        if opts.verify is not None:
            results["verify"] = verify(opts.only, opts.verify)
        if opts.check_bench is not None:
            results["check"] = check_bench(opts.check_bench)
        if opts.json:
            Path(opts.json).write_text(json.dumps(results, indent=1, default=str) + "\n")
        return results
    def save(table: dict[str, Any]) -> None:
        if opts.json:
            results["find"] = table
            Path(opts.json).write_text(json.dumps(results, indent=1, default=str) + "\n")

    results["find"] = search_deep(opts, save)
    results["load"] = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    print_search_table(results)
    if opts.json:
        Path(opts.json).write_text(json.dumps(results, indent=1, default=str) + "\n")
    return results


if __name__ == "__main__":
    main()
