"""Benchmarks: fuzzer throughput against the raw emulator, time-to-bug against a random walk.

One command, one table, one JSON file:

    python bench/run.py [--seeds 5] [--limit 10] [--seconds 10] [--quick] [--json bench/results.json]

It measures, in one run on one machine:

* raw emulator speed: the recorded steps of the fuzzer's own examples (default
  model, default engine, seed 1) replayed with :func:`fuzzer._engine.replay`
  -- every invariant on, no generation, every boot run (the boot cache off) -- in
  emulated steps per second;
* the fuzzer's speed at its default settings (steps/s, examples/s) and its
  ratio to the raw speed; the same with ``--guide`` (the coverage overhead)
  and with ``--engine hypothesis`` (the Hypothesis state machine);
* time to find and reproduction length, for the seed crash and every injected
  mistake of ``fuzzer_plugins.mistakes``, over ``--seeds`` seeds, for four
  searchers on the same emulator: the fuzzer with ``--guide``, the fuzzer
  without guidance (its default), the fuzzer with ``--engine hypothesis``,
  and :func:`random_walk`, a plain uniform random walk over the same
  operations, schedules and interrupts;
* worker scaling, 1 against 2 workers (``bench/workers.py``).

Times to find are from the start of each search to its first failure (not
including shrinking); a seed that does not find it within ``--limit`` seconds
counts as the limit in the medians and is shown in the ``found`` column.
"""

from __future__ import annotations

import time

T0 = time.perf_counter()  # before the heavy imports: "seconds since the command started"

import argparse  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import platform  # noqa: E402
import random  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
from collections.abc import Callable, Sequence  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import attrs  # noqa: E402
import hypothesis  # noqa: E402

from fuzzer import FuzzerPluginManager, KernelConfig, Model, RunConfig  # noqa: E402
from fuzzer import _bootcache as bootcache  # noqa: E402
from fuzzer._args import sampler as search_sampler  # noqa: E402
from fuzzer._config import VersionChain  # noqa: E402
from fuzzer._engine import replay, run_campaign  # noqa: E402
from fuzzer._engine.hypothesis import STEPS_PER_EXAMPLE  # noqa: E402
from fuzzer._engine.walk import SCHEDULE_BLOCK, Walker  # noqa: E402
from fuzzer._errors import KernelFailure  # noqa: E402
from fuzzer._machine import Machine  # noqa: E402
from fuzzer._steps import Step  # noqa: E402
from fuzzer_plugins.mistakes import MISTAKES  # noqa: E402

BENCH = Path(__file__).resolve().parent

#: Kernel and MMU each mistake needs (as in tests/test_injected_mistakes.py; a test checks they agree).
KERNEL = {"cached_pte": "v6.12", "local_kernel_tlb_flush": "v6.1",
          "percpu_context_preemptible": "v6.12", "finish_gather_early": "v6.12-fixed",
          "lazy_switch_after_disable": "v6.12-fixed", "pmi_locks_user_pte": "v6.12"}
MMU = {"hash_no_hpte_flush": "hash", "unsafe_sequence_order": "hash",
       "hash_local_kernel_flush": "hash"}
CONFIG = {"percpu_context_preemptible": ("CONFIG_PREEMPT=y",),
          "alias_on_radix": ("CONFIG_CMDLINE=disable_tlbie",)}

#: Mistakes whose failure has the signature of a known finding of their unmodified kernel
#: (hash_local_kernel_flush: the stale alias of Hash before 6.6, which the mistake reaches
#: without the CPU offline the kernel needs): benchmarked with known findings reported, as
#: the tests run them with ``--report-known``.
REPORT_KNOWN = ("hash_local_kernel_flush",)

#: Known-minimal reproduction length, in steps: the shortest reproduction seen (shipped
#: corpus entries and these benchmarks' shrunk outputs). Boot-time failures need only the
#: boot; each of the others needs the boot, the operation or hotplug that shows it, and
#: the steps listed (``finish`` runs every CPU to completion, so trailing runs are not needed).
MINIMAL = {
    "seed crash": 1,
    "irqs_early": 1, "no_local_flush": 1, "missing_ptesync": 1, "hash_no_hpte_flush": 1,
    "cached_pte": 1, "null_patching_context": 1, "alias_on_radix": 1,
    "static_key_dec_no_update": 4,  # boot, start jump_label.inc, run, start jump_label.dec
    "aggr_disarm_early": 6,         # boot, register, run, register at the same site, run, disable
    "unsafe_sequence_order": 2,     # boot, start fixups.entry_flush (its own fault shows it)
    "shared_patching_mm": 3,        # boot, online CPU 1, start kprobes.register on CPU 0
    "leak_on_offline": 4,           # boot, online, run, offline
    "pmi_in_patch_window": 4,       # boot, start, run into the patch window, irq perf_pmi
    "skip_restore_breakpoints": 4,  # boot, start breakpoints.set, run, start a patching user
    "skip_suspend_breakpoints": 4,  # boot, start breakpoints.set, run, start a patching user
    # boot, online CPU 1, run, start a patching user, run into the window, another CPU's fill
    "local_kernel_tlb_flush": 6,
    "hash_local_kernel_flush": 6,   # as local_kernel_tlb_flush, the fill once the HPTE exists
    # boot, online CPU 1, run, start a patching user, run to the preemption point, migrate
    "percpu_context_preemptible": 6,
    "enomem_leaks_mm": 3,           # boot, fail pgtable_alloc on CPU 1, online CPU 1
    "disarm_lock_order": 4,         # boot, start kprobes.register, run, start kprobes.disable
    "pmi_locks_user_pte": 4,        # boot, start a user task, irq perf_pmi, online CPU 1
    "finish_gather_early": 4,       # boot, online, run, offline
    "lazy_switch_after_disable": 6,  # boot, online, run, start a process there, run, offline
    "optprobe_branch_first": 5,     # boot, start kprobes.register, online CPU 1, run, start a hit
}

#: Where a mistake shows in more than one way, the known-minimal length of a reproduction
#: depends on which failure it reproduces: (mistake, signature) -> steps.
MINIMAL_BY_SIGNATURE = {
    # Another CPU's start_using_temp_mm sees the shared mm: the operation must start on the
    # onlined CPU, which takes boot, online, run (its bring-up to finish), start.
    ("shared_patching_mm", "WARNING in start_using_temp_mm at arch/powerpc/lib/code-patching.c:88"): 4,
}

SEARCHERS = ("guided", "fuzzer", "hypothesis", "walk")
SEARCHER_TITLE = {"guided": "fuzzer --guide", "fuzzer": "fuzzer (default)",
                  "hypothesis": "fuzzer --engine hypothesis", "walk": "random walk"}


def model_for(kernel: str = "v6.12", mmu: str = "radix", plugins: Sequence[str] = (),
              config: Sequence[str] = ()) -> Model:
    """The model ``python -m fuzzer -p PLUGIN run --kernel K --mmu M --config C`` builds (no
    autoload), with the version's own config defaults."""
    pm = FuzzerPluginManager()
    pm.load(list(plugins), autoload=False)
    pm.check_pending()
    chain = VersionChain.of(kernel, {v.name: v.based_on for v in pm.kernel_versions()})
    run = RunConfig(kernel, mmu, KernelConfig.build(pm.config_options(), config, chain), 4)
    return Model.build(pm, run)


def known(model: Model) -> frozenset[Any]:
    """The model's known findings (on unmodified kernels): every searcher here searches past
    them, as ``run`` does, so a mistake is never "found" through the kernel's own known bug."""
    return frozenset(k.signature for k in model.known)


def targets() -> list[tuple[str, Model]]:
    """The seed crash and every injected mistake, each with the model it needs."""
    out = [("seed crash", model_for("next-20221215"))]
    for name in MISTAKES:
        model = model_for(KERNEL.get(name, "v6.2"), MMU.get(name, "radix"),
                          [f"fuzzer_plugins.mistakes.{name}"], CONFIG.get(name, ()))
        if name in REPORT_KNOWN:
            model = attrs.evolve(model, known=())
        out.append((name, model))
    return out


# -- the random walk -------------------------------------------------------------------------


def sampler(strategy: Any) -> Callable[[random.Random], Any]:
    """A uniform sampler for an operation argument (the fuzzer's own, :func:`fuzzer._args.sampler`)."""
    return search_sampler(strategy)[0]


def random_walk(model: Model, *, seed: int, time_budget: float,
                rules: int = STEPS_PER_EXAMPLE, max_examples: int = 0) -> dict[str, Any]:
    """A plain uniform random walk over the state machine's rules, without Hypothesis.

    Each example boots (random kernel seed), then applies ``rules`` rules, each
    chosen uniformly among the enabled ones -- bring a CPU online or offline,
    start one of the operations (arguments uniform), deliver one of the
    interrupts, or advance 1-48 uniformly random schedule bytes -- on a uniformly
    chosen CPU, then finishes as the fuzzer does. It stops at the first kernel
    failure; with no shrinking, its reproduction is the failing example's steps.
    ``time_budget`` (seconds) and ``max_examples`` of 0 mean unbounded; the first spent ends it.
    """
    rng = random.Random(seed)
    ops = [(op, {k: sampler(s) for k, s in op.args.items()}) for op in model.operations]
    started = time.perf_counter()
    examples = nsteps = 0
    while (not time_budget or time.perf_counter() - started < time_budget) \
            and (not max_examples or examples < max_examples):
        m = Machine(model)
        examples += 1
        try:
            m.boot(rng.getrandbits(32))
            for _ in range(rules):
                _walk_rule(m, rng, ops)
            m.finish()
        except KernelFailure as failure:
            if failure.signature in known(model):
                nsteps += m.nsteps
                continue
            return {"found": True, "time": time.perf_counter() - started, "examples": examples,
                    "length": len(m.steps), "signature": str(failure.signature),
                    "steps_per_s": (nsteps + m.nsteps) / (time.perf_counter() - started)}
        nsteps += m.nsteps
    spent = time.perf_counter() - started
    return {"found": False, "time": spent if max_examples and examples >= max_examples else time_budget,
            "examples": examples, "length": None,
            "steps_per_s": nsteps / (time.perf_counter() - started)}


def _walk_rule(m: Machine, rng: random.Random, ops: list[tuple[Any, dict[str, Any]]]) -> None:
    """Apply one rule, chosen uniformly among those enabled, on a uniformly chosen CPU."""
    choices: list[tuple[str, Any, list[Any]]] = []
    up = [c for c in m.cpus if m.can_online(c)]
    down = [c for c in m.cpus if m.can_offline(c)]
    idle = [c for c in m.cpus if m.can_start(c)]
    if up:
        choices.append(("online", None, up))
    if down:
        choices.append(("offline", None, down))
    if idle:
        choices.extend(("start", op, idle) for op in ops)
    for src in m.model.interrupts:
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
        m.start(rng.choice(cpus), op, {k: draw(rng) for k, draw in args.items()})
    elif action == "irq":
        m.interrupt(rng.choice(cpus), what)
    else:
        m.run_bytes(rng.randbytes(rng.randint(1, SCHEDULE_BLOCK)))


# -- throughput ------------------------------------------------------------------------------


def record_examples(model: Model, n: int, seed: int = 1) -> list[list[Step]]:
    """The steps of the fuzzer's first ``n`` examples on ``model`` (its default engine, recorded)."""
    walker = Walker(model, seed=seed)
    recorded = []
    while len(recorded) < n:
        m, failure = walker.example()
        if failure is not None and getattr(failure, "signature", None) in known(model):
            continue  # a known finding of the unmodified kernel: searched past, as run does
        assert failure is None and m is not None, "the default model must run clean"
        recorded.append(list(m.steps))
    return recorded


def raw_speed(model: Model, examples: list[list[Step]], seconds: float) -> dict[str, float]:
    """Replay recorded examples (every invariant on, no generation) for ``seconds``, every
    boot run (the boot cache off: replaying the same 100 examples would copy each boot)."""
    steps = runs = 0
    started = time.perf_counter()
    while True:
        steps += raw_once(model, examples)
        runs += len(examples)
        elapsed = time.perf_counter() - started
        if elapsed >= seconds:
            return {"steps_per_s": steps / elapsed, "examples_per_s": runs / elapsed,
                    "steps": steps, "examples": runs, "seconds": elapsed}


def raw_once(model: Model, examples: list[list[Step]], each: bool = False) -> Any:
    """Replay each recorded example once, every boot run: the emulated steps (with ``each``,
    every replay's steps, log and outcome, for bench/hotpath.py's fingerprint)."""
    steps, out = 0, []
    bootcache.ENABLED = False
    try:
        for ex in examples:
            machine, caught = replay(model, ex)
            steps += machine.nsteps
            if each:
                out.append((machine.nsteps, list(machine.log), repr(caught)))
    finally:
        bootcache.ENABLED = True
    return out if each else steps


def fuzzer_speed(model: Model, seconds: float, guide: bool, engine: str = "walk") -> dict[str, float]:
    out = run_campaign(model, seed=1, max_examples=0, time_budget=seconds, guide=guide, engine=engine,
                       known=known(model))
    return {"steps_per_s": out.emulated_steps / out.duration, "examples_per_s": out.examples / out.duration,
            "steps": out.emulated_steps, "examples": out.examples, "seconds": out.duration}


def worker_scaling(seconds: float) -> list[dict[str, float]]:
    sys.path.insert(0, str(BENCH))
    import tempfile

    from workers import measure  # bench/workers.py

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for n in (1, 2):
            rec = measure(n, seconds, Path(tmp))
            rows.append({"workers": n, "steps_per_s": rec["steps_per_s"], "examples": rec["examples"]})
    return rows


# -- time to find ----------------------------------------------------------------------------


def find(name: str, model: Model, searcher: str, seed: int, limit: float) -> dict[str, Any]:
    if searcher == "walk":
        return random_walk(model, seed=seed, time_budget=limit)
    out = run_campaign(model, seed=seed, max_examples=0, time_budget=limit, guide=searcher == "guided",
                       engine="hypothesis" if searcher == "hypothesis" else "walk",
                       known=known(model))
    found = out.time_to_first_failure is not None
    return {"found": found, "time": out.time_to_first_failure if found else limit,
            "examples": out.examples_to_first_failure if found else out.examples,
            "length": len(out.steps) if out.status == "failed" else None,
            "signature": str(out.failure.signature) if out.failure else None,
            "shrink_s": out.duration - out.time_to_first_failure if found else None}


def minimal_for(name: str, signature: str | None) -> int:
    """The known-minimal reproduction length of ``name``'s failure with ``signature``."""
    return MINIMAL_BY_SIGNATURE.get((name, signature or ""), MINIMAL[name])


def summarise(runs: list[dict[str, Any]], name: str) -> dict[str, Any]:
    minimal = MINIMAL[name]
    lengths = [r["length"] for r in runs if r["length"] is not None]
    return {"found": sum(r["found"] for r in runs), "seeds": len(runs),
            "median_s": statistics.median(r["time"] for r in runs),
            "median_examples": statistics.median(r["examples"] for r in runs),
            "median_length": statistics.median(lengths) if lengths else None,
            "minimal": minimal,
            "all_minimal": bool(lengths) and all(r["length"] <= minimal_for(name, r.get("signature"))
                                                 for r in runs if r["length"] is not None)}


def seed_crash_cli() -> float:
    """Wall-clock seconds of the README's seed-crash command, start to exit (found, shrunk, reported)."""
    env = {**os.environ, "FUZZER_DISABLE_PLUGIN_AUTOLOAD": "1"}
    started = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "fuzzer", "run", "--kernel", "next-20221215",
                           "--seed", "1", "--corpus", "none"], env=env, capture_output=True, text=True)
    took = time.perf_counter() - started
    if proc.returncode != 1:
        raise RuntimeError(f"the seed crash was not found (exit {proc.returncode}):\n{proc.stdout}")
    return took


# -- the table -------------------------------------------------------------------------------


def verdict(ok: bool) -> str:
    return "met" if ok else "MISSED"


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, default=5, help="seeds per target and searcher (default 5)")
    ap.add_argument("--limit", type=float, default=10.0, help="seconds per search (default 10)")
    ap.add_argument("--seconds", type=float, default=10.0, help="seconds per throughput run (default 10)")
    ap.add_argument("--quick", action="store_true", help="3 seeds, 3 s searches, 3 s throughput runs")
    ap.add_argument("--no-workers", action="store_true", help="skip the worker-scaling runs")
    ap.add_argument("--only", nargs="*", help="time-to-find targets to run (default: all)")
    ap.add_argument("--json", default=str(BENCH / "results.json"), help="where to write the results")
    opts = ap.parse_args(argv)
    if opts.quick:
        opts.seeds, opts.limit = min(opts.seeds, 3), min(opts.limit, 3.0)
        opts.seconds = min(opts.seconds, 3.0)
    results: dict[str, Any] = {
        "date": time.strftime("%Y-%m-%d %H:%M %Z"),
        "machine": f"{os.cpu_count()} CPUs, {platform.machine()}, Python {platform.python_version()},"
                   f" hypothesis {hypothesis.__version__}",
        "settings": {"seeds": opts.seeds, "limit": opts.limit, "seconds": opts.seconds},
    }
    print(f"{results['date']}; {results['machine']}", flush=True)

    # The seed crash first: how long after the command started is it found?
    crash = model_for("next-20221215")
    out = run_campaign(crash, seed=1, max_examples=0, time_budget=opts.limit, shrink=False)
    assert out.time_to_first_failure is not None, "the seed crash was not found"
    results["seed_crash_from_start_s"] = time.perf_counter() - T0
    results["seed_crash_cli_s"] = seed_crash_cli()

    # Throughput, side by side.
    default = model_for()
    recorded = record_examples(default, 100)
    results["raw"] = raw_speed(default, recorded, opts.seconds)
    results["fuzzer"] = fuzzer_speed(default, opts.seconds, guide=False)
    results["guided"] = fuzzer_speed(default, opts.seconds, guide=True)
    results["hypothesis"] = fuzzer_speed(default, opts.seconds, guide=False, engine="hypothesis")
    results["workers"] = [] if opts.no_workers else worker_scaling(opts.seconds)

    # Time to find, per target and searcher.
    table: dict[str, dict[str, Any]] = {}
    for name, model in targets():
        if opts.only and name not in opts.only:
            continue
        table[name] = {}
        for searcher in SEARCHERS:
            runs = [find(name, model, searcher, seed, opts.limit) for seed in range(1, opts.seeds + 1)]
            table[name][searcher] = {**summarise(runs, name), "runs": runs}
        print(f"  {name}: " + ", ".join(f"{s} {table[name][s]['median_s']:.3f} s" for s in SEARCHERS),
              file=sys.stderr, flush=True)
    results["find"] = table
    results["targets"] = check_targets(results)
    print_table(results)
    Path(opts.json).write_text(json.dumps(results, indent=1, default=str) + "\n")
    print(f"results: {opts.json} ({time.perf_counter() - T0:.0f} s)")
    return results


def check_targets(r: dict[str, Any]) -> dict[str, Any]:
    t: dict[str, Any] = {}
    t["throughput_ratio"] = r["fuzzer"]["steps_per_s"] / r["raw"]["steps_per_s"]
    t["guidance_cost"] = r["fuzzer"]["steps_per_s"] / r["guided"]["steps_per_s"]
    bugs = [n for n in r["find"] if n != "seed crash"]
    if bugs:
        fuzz = statistics.median(r["find"][n]["fuzzer"]["median_s"] for n in bugs)
        walk = statistics.median(r["find"][n]["walk"]["median_s"] for n in bugs)
        t["find_median_fuzzer_s"], t["find_median_walk_s"] = fuzz, walk
        t["find_ratio"] = fuzz / walk
        t["minimal_share"] = sum(r["find"][n]["fuzzer"]["all_minimal"] for n in bugs) / len(bugs)
    t["seed_crash_s"] = r["seed_crash_from_start_s"]
    return t


def print_table(r: dict[str, Any]) -> None:
    raw, fz, gd = r["raw"], r["fuzzer"], r["guided"]
    print()
    print("| throughput (default model, v6.12 Radix, 4 CPUs) | steps/s | examples/s | ratio |")
    print("|---|---|---|---|")
    print(f"| raw emulator: recorded examples replayed | {raw['steps_per_s']:,.0f} |"
          f" {raw['examples_per_s']:,.0f} | 1.00 |")
    print(f"| fuzzer, default settings | {fz['steps_per_s']:,.0f} | {fz['examples_per_s']:,.0f} |"
          f" {fz['steps_per_s'] / raw['steps_per_s']:.2f} |")
    print(f"| fuzzer `--guide` | {gd['steps_per_s']:,.0f} | {gd['examples_per_s']:,.0f} |"
          f" {gd['steps_per_s'] / raw['steps_per_s']:.2f} |")
    hy = r["hypothesis"]
    print(f"| fuzzer `--engine hypothesis` | {hy['steps_per_s']:,.0f} | {hy['examples_per_s']:,.0f} |"
          f" {hy['steps_per_s'] / raw['steps_per_s']:.2f} |")
    for w in r["workers"]:
        print(f"| fuzzer `--workers {w['workers']}` | {w['steps_per_s']:,.0f} | |"
              f" {w['steps_per_s'] / r['workers'][0]['steps_per_s']:.2f} x 1 worker |")
    print()
    s = r["settings"]
    print(f"| time to find ({s['seeds']} seeds, {s['limit']:g} s limit) | searcher | found |"
          " median s | median examples | shrunk length (median) | minimal |")
    print("|---|---|---|---|---|---|---|")
    for name, row in r["find"].items():
        for i, searcher in enumerate(SEARCHERS):
            c = row[searcher]
            length = "-" if c["median_length"] is None else f"{c['median_length']:g}"
            ok = "" if searcher == "walk" else (" yes" if c["all_minimal"] else " no")
            if c["median_length"] is None:
                ok = ""
            print(f"| {f'`{name}`' if i == 0 else ''} | {SEARCHER_TITLE[searcher]} |"
                  f" {c['found']}/{c['seeds']} | {c['median_s']:.3f} | {c['median_examples']:g} |"
                  f" {length} | {c['minimal'] if i == 0 else ''}{ok} |")
    t = r["targets"]
    print()
    print("| target | measured | |")
    print("|---|---|---|")
    print(f"| fuzzer steps/s >= 50% of raw | {t['throughput_ratio']:.0%} |"
          f" {verdict(t['throughput_ratio'] >= 0.5)} |")
    if "find_ratio" in t:
        print(f"| median time to find <= 1/10 of the walk's | {t['find_median_fuzzer_s']:.3f} s vs"
              f" {t['find_median_walk_s']:.3f} s = {t['find_ratio']:.2f}x |"
              f" {verdict(t['find_ratio'] <= 0.1)} |")
        print(f"| known-minimal reproductions for >= 90% of the injected bugs | {t['minimal_share']:.0%} |"
              f" {verdict(t['minimal_share'] >= 0.9)} |")
    print(f"| guidance costs <= 1.3x steps/s | {t['guidance_cost']:.2f}x |"
          f" {verdict(t['guidance_cost'] <= 1.3)} |")
    print(f"| seed crash found <= 2 s after the command starts | {t['seed_crash_s']:.2f} s"
          f" (CLI, found+shrunk+reported: {r['seed_crash_cli_s']:.2f} s) |"
          f" {verdict(t['seed_crash_s'] <= 2)} |")


if __name__ == "__main__":
    main()
