"""The command line: ``python -m fuzzer run``, ``replay`` and ``plugins``.

Exit codes (pytest's numbering where it applies):

* 0 -- the campaign found nothing; every replayed corpus entry gave its expected outcome;
* 1 -- a kernel failure was found (reported, with a minimal reproduction);
  a replayed entry's outcome differed from its expectation;
* 2 -- interrupted (Ctrl-C);
* 3 -- internal error, or a plugin raised (reported as that plugin's fault);
* 4 -- usage error: a bad option, an unknown plugin, a broken plugin.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import traceback
from collections.abc import Sequence
from pathlib import Path
from typing import NoReturn, TextIO

import attrs

from fuzzer._boot import boot as boot_real
from fuzzer._campaign import ENGINES, Outcome, replay, run_campaign
from fuzzer._config import KernelConfig, RunConfig, VersionChain
from fuzzer._corpus import DEFAULT_DIR as DEFAULT_CORPUS
from fuzzer._corpus import CorpusError, Entry, find, load, save
from fuzzer._coverage import DEFAULT_DIR as DEFAULT_COVERAGE_DIR
from fuzzer._coverage import CoverageSession, CoverageSummary, measured_files
from fuzzer._database import check_spec, is_redis, open_database
from fuzzer._errors import KernelFailure, ModelLimitation, PluginError, Signature, UsageError
from fuzzer._export import FORMATS, write_export
from fuzzer._model import Model
from fuzzer._plugins import AUTOLOAD_ENV, FuzzerPluginManager
from fuzzer._report import failure_json, format_failure, write_json
from fuzzer._statemachine import Stats
from fuzzer._stats import StatsLog, check_plot_path
from fuzzer._steps import Step
from fuzzer._workers import WorkerSpec, run_workers, split_examples, worker_seed

EXIT_OK, EXIT_FAILURE, EXIT_INTERRUPTED, EXIT_INTERNAL, EXIT_USAGE = 0, 1, 2, 3, 4
DEFAULT_MAX_EXAMPLES = 10_000
DEFAULT_TIME_BUDGET = 60.0
#: What ``run`` prints for each engine and its guidance.
ENGINE_TEXT = {
    "walk": "walk (random walks at emulator speed, shrunk step by step)",
    "hypothesis": "hypothesis (RuleBasedStateMachine, shrunk by Hypothesis then step by step)",
}
GUIDE_TEXT = {
    "walk": "examples start from prefixes of those that entered new modelled routines",
    "hypothesis": "hypothesis.target on the distinct modelled routines each example enters",
}
#: The example database when ``run`` has no ``--seed`` (relative to the working directory).
DEFAULT_DB = os.path.join(".hypothesis", "fuzzer")
#: ``run``'s own options; every other dest belongs to a plugin (``RunConfig.options``).
HOST_DESTS = ("command", "plugins", "kernel", "mmu", "config", "cpus", "max_examples", "time_budget",
              "seed", "report_json", "corpus", "db", "workers", "coverage", "coverage_dir", "stats",
              "stats_plot", "guide", "engine")


class _Parser(argparse.ArgumentParser):
    """argparse, but errors are one-line usage errors (exit 4), not exit 2."""

    def error(self, message: str) -> NoReturn:
        raise UsageError(f"{self.prog}: {message}")


def preparse_plugins(argv: Sequence[str]) -> list[str]:
    """The ``-p`` values, wherever they appear, before the full parser exists."""
    out: list[str] = []
    it = iter(range(len(argv)))
    for i in it:
        a = argv[i]
        if a == "-p":
            if i + 1 >= len(argv):
                raise UsageError("-p needs a plugin name (or no:NAME to block one)")
            out.append(argv[i + 1])
            next(it, None)
        elif a.startswith("-p") and len(a) > 2 and not a.startswith("--"):
            out.append(a[2:].lstrip("="))
    return out


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, not {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, not {value}")
    return value


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected seconds, not {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, not {value}")
    return value


def build_parser(pm: FuzzerPluginManager) -> _Parser:
    parser = _Parser(
        prog="python -m fuzzer",
        description="Fuzz modelled powerpc kernel logic (code patching, page-table locking,"
        " TLB flushing, CPU hotplug) with Hypothesis.",
        epilog="Exit codes: 0 nothing found, 1 kernel failure found, 2 interrupted,"
        " 3 internal or plugin error, 4 usage error.",
    )
    plugin_help = (
        "load plugin NAME (a built-in short name or a module); -p no:NAME blocks one"
        f" (set {AUTOLOAD_ENV}=1 to skip entry-point plugins)"
    )
    parser.add_argument("-p", dest="plugins", action="append", default=[], metavar="NAME",
                        help=plugin_help)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    run = sub.add_parser("run", help="fuzz the modelled kernel")
    versions = [v.name for v in pm.kernel_versions()]
    run.add_argument("--kernel", metavar="VERSION", default=None,
                     help=f"kernel version to model, one of --mmu's architecture: {_versions_by_arch(pm)}"
                     " (default: the newest the MMU runs)")
    run.add_argument("--mmu", metavar="NAME", default="radix",
                     help=f"MMU plugin: {', '.join(_mmu_names(pm))} (default: radix)")
    run.add_argument("--config", dest="config", action="append", default=[],
                     metavar="CONFIG_X=VALUE",
                     help="set a kernel config option (repeatable); the default is a debug config:"
                     " DEBUG_VM, STRICT_KERNEL_RWX, SMP on, 64K pages")
    run.add_argument("--cpus", type=_positive_int, default=None, metavar="N",
                     help="CPUs in the machine (default 4; 1 with CONFIG_SMP=n)")
    run.add_argument("--max-examples", type=_positive_int, default=DEFAULT_MAX_EXAMPLES,
                     metavar="N", help="stop after N examples (with --engine hypothesis: once"
                     " Hypothesis has generated N; it may run a few more distinct ones on the way);"
                     f" 0 = no limit (default {DEFAULT_MAX_EXAMPLES:,})")
    run.add_argument("--time-budget", type=_seconds, default=DEFAULT_TIME_BUDGET,
                     metavar="SECONDS", help=f"stop after this long; 0 = no limit"
                     f" (default {DEFAULT_TIME_BUDGET:g})")
    run.add_argument("--seed", type=_positive_int, default=None, metavar="N",
                     help="seed of the search; the same seed gives the same result"
                     " (default: a fresh one, printed)")
    run.add_argument("--report-json", metavar="PATH", default=None,
                     help="also write the failure report as JSON to PATH")
    run.add_argument("--corpus", metavar="DIR", default=DEFAULT_CORPUS,
                     help="save a failure's minimal reproduction in DIR, unless an entry there"
                     f" shows the same bug; 'none' to not save (default: {DEFAULT_CORPUS})")
    run.add_argument("--db", metavar="PATH", default=None,
                     help="example database: failures saved there are tried first;"
                     " a directory, redis://HOST:PORT[/DB] to share one between machines (the redis"
                     f" extra), or 'none' (default: {DEFAULT_DB} without --seed; none with"
                     " --seed, so a seed always gives the same result)")
    run.add_argument("--workers", type=_positive_int, default=1, metavar="N",
                     help="run N worker processes sharing the corpus and the example database;"
                     " each gets its own seed (derived from --seed) and a share of --max-examples"
                     " (default 1)")
    run.add_argument("--coverage", action="store_true",
                     help="measure the modelled kernel and plugins with coverage.py (branches; about"
                     " 4x slower): write its data and an HTML report to --coverage-dir and name"
                     " the modelled routines never reached")
    run.add_argument("--coverage-dir", metavar="DIR", default=DEFAULT_COVERAGE_DIR,
                     help=f"where --coverage writes .coverage and html/ (default: {DEFAULT_COVERAGE_DIR})")
    run.add_argument("--stats", metavar="PATH", default=None,
                     help="write campaign statistics over time to PATH as JSON lines: time, examples,"
                     " steps, steps/s, distinct failures, modelled routines reached")
    run.add_argument("--stats-plot", metavar="PATH", default=None,
                     help="plot routines reached and distinct failures over time to PATH (.png or"
                     " .svg; needs matplotlib, the plot extra)")
    run.add_argument("--engine", choices=ENGINES, default=ENGINES[0],
                     help="how examples are generated: walk (random walks at emulator speed, a"
                     " step-level shrinker) or hypothesis (a Hypothesis RuleBasedStateMachine,"
                     " shrunk by Hypothesis; about 8x slower per step, see the README)"
                     f" (default: {ENGINES[0]})")
    run.add_argument("--guide", action="store_true",
                     help="coverage guidance: walk: start examples from prefixes of those that"
                     " entered new modelled routines; hypothesis: feed each example's count of"
                     " routines to hypothesis.target (see the README for whether it helps)")
    run.add_argument("-p", dest="plugins", action="append", default=[], metavar="NAME",
                     help=plugin_help)
    _add_plugin_options(pm, run)
    rep = sub.add_parser("replay", help="replay corpus entries; report those whose outcome differs"
                         " from their expectation")
    rep.add_argument("paths", nargs="*", metavar="PATH", default=[DEFAULT_CORPUS],
                     help=f"corpus files or directories (default: {DEFAULT_CORPUS})")
    rep.add_argument("--kernel", metavar="VERSION", default=None,
                     help=f"replay on this kernel version instead of each entry's own: {', '.join(versions)}")
    rep.add_argument("--expect-clean", action="store_true",
                     help="expect every entry to run clean (does a fix make a crash pass?)")
    rep.add_argument("-p", dest="plugins", action="append", default=[], metavar="NAME",
                     help=plugin_help + "; loaded for every entry, besides the entry's own")
    plugins = sub.add_parser("plugins", help="list loaded plugins, their origin and hooks")
    plugins.add_argument("-p", dest="plugins", action="append", default=[], metavar="NAME",
                         help=plugin_help)
    exp = sub.add_parser("export", help="turn a reproduction into a program for a real kernel")
    exp.add_argument("repro", metavar="REPRO", help="a corpus entry or a --report-json report")
    exp.add_argument("--format", dest="fmt", choices=FORMATS, default=FORMATS[0],
                     help="init-c: a static init against the kernel's nolibc; shell: a script for a"
                     f" machine with a userland (default: {FORMATS[0]})")
    exp.add_argument("--out", metavar="DIR", default=".", help="directory to write it to (default: .)")
    exp.add_argument("-p", dest="plugins", action="append", default=[], metavar="NAME", help=plugin_help)
    boot = sub.add_parser("boot", help="build a real kernel, boot it in QEMU with a reproduction,"
                          " print the verdict")
    boot.add_argument("repro", metavar="REPRO", help="a corpus entry or a --report-json report")
    boot.add_argument("--source", metavar="DIR", required=True,
                      help="an unpacked kernel source tree (Debian: /usr/src/linux-source-6.12.tar.xz)")
    boot.add_argument("--patch", metavar="FILE", default=None,
                      help="also build the tree with this patch applied (a candidate fix) and boot both")
    boot.add_argument("--work", metavar="DIR", default="fuzzer-boot",
                      help="build trees, logs and consoles (kept and reused; default: fuzzer-boot)")
    boot.add_argument("--timeout", type=_seconds, default=600.0, metavar="SECONDS",
                      help="give up on a boot after this long (default 600)")
    return parser


def _archs(pm: FuzzerPluginManager) -> list[str]:
    """Architectures with a version or an MMU, powerpc (the built-in model's) first."""
    found = {v.arch for v in pm.kernel_versions()} | {m.arch for m in pm.mmus().values()}
    return sorted(found, key=lambda a: (a != "powerpc", a))


def _versions_by_arch(pm: FuzzerPluginManager) -> str:
    """``powerpc: v6.1, ..., v6.12; x86: ...`` -- the choices of ``--kernel`` by architecture."""
    return "; ".join(f"{arch}: {', '.join(v.name for v in pm.kernel_versions(arch)) or 'none'}"
                     for arch in _archs(pm))


def _mmu_names(pm: FuzzerPluginManager) -> list[str]:
    return [f"{name} ({spec.arch})" for name, spec in sorted(pm.mmus().items())]


def _add_plugin_options(pm: FuzzerPluginManager, run: argparse.ArgumentParser) -> None:
    for impl in pm.impls("fuzzer_addoption"):
        name = pm.plugin_name(impl.plugin)
        group = run.add_argument_group(f"plugin {name}")
        kwargs = {"parser": group, "pluginmanager": pm}
        try:
            impl.function(*[kwargs[a] for a in impl.argnames])
        except Exception as exc:
            raise PluginError(name, "hook fuzzer_addoption", exc) from exc


def make_run_config(pm: FuzzerPluginManager, args: argparse.Namespace) -> RunConfig:
    if args.kernel is not None and args.kernel not in {v.name for v in pm.kernel_versions()}:
        raise UsageError(
            f"unknown kernel version {args.kernel!r}; choose from: {_versions_by_arch(pm)}"
        )
    arch = pm.arch_of(args.mmu)
    args.kernel = pm.resolve_kernel(args.kernel, args.mmu)
    chain = VersionChain.of(args.kernel, {v.name: v.based_on for v in pm.kernel_versions()})
    config = KernelConfig.build(pm.config_options(arch), args.config, chain)
    cpus = args.cpus
    if cpus is None:
        cpus = 4 if config.enabled("CONFIG_SMP") else 1
    if not 1 <= cpus <= 64:
        raise UsageError(f"--cpus must be between 1 and 64, not {cpus}")
    if cpus > 1 and not config.enabled("CONFIG_SMP"):
        raise UsageError(f"CONFIG_SMP=n models a uniprocessor kernel: use --cpus 1, not {cpus}")
    options = {k: v for k, v in vars(args).items() if k not in HOST_DESTS}
    run = RunConfig(kernel=args.kernel, mmu=args.mmu, config=config, cpus=cpus,
                    options=options, arch=arch)
    pm.call_each("fuzzer_configure", config=run)
    return run


class Progress:
    """One status line on stderr: examples, steps, speed; rewritten in place on a terminal."""

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream
        self.tty = stream.isatty()
        self.last = 0.0

    def __call__(self, stats: Stats, elapsed: float) -> None:
        now = time.monotonic()
        if now - self.last < (0.5 if self.tty else 5.0):
            return
        self.last = now
        rate = stats.emulated_steps / elapsed if elapsed else 0.0
        line = (f"[{elapsed:6.1f}s] {stats.examples:,} examples, {stats.emulated_steps:,} steps"
                f" ({rate:,.0f} steps/s), {stats.failures_seen} failing")
        if self.tty:
            self.stream.write("\r" + line + "\x1b[K")
        else:
            self.stream.write(line + "\n")
        self.stream.flush()

    def found(self, exc: BaseException) -> None:
        self.end()
        what = exc.message if isinstance(exc, KernelFailure) else str(exc)
        self.stream.write(f"found: {what} -- shrinking to a minimal reproduction...\n")
        self.stream.flush()

    def end(self) -> None:
        if self.tty and self.last:
            self.stream.write("\n")
            self.stream.flush()
            self.last = 0.0


def _rule(text: str, out: TextIO) -> None:
    width = 78
    pad = max(width - len(text) - 2, 4)
    out.write(f"{'=' * (pad // 2)} {text} {'=' * (pad - pad // 2)}\n")


def cmd_plugins(pm: FuzzerPluginManager, out: TextIO) -> int:
    for name, origin, where, hooks in pm.listing():
        out.write(f"{name}  [{origin}]  {where}\n")
        out.write(f"    hooks: {', '.join(hooks) or '(none)'}\n")
    out.write(f"kernel versions: {', '.join(v.name for v in pm.kernel_versions())}\n")
    for v in pm.kernel_versions():
        out.write(f"    {v.name:<16} [{v.arch}] {v.description}\n")
    out.write(f"MMUs: {', '.join(sorted(pm.mmus()))}\n")
    for name, spec in sorted(pm.mmus().items()):
        out.write(f"    {name:<16} [{spec.arch}] {spec.description}\n")
    return EXIT_OK


def cmd_run(pm: FuzzerPluginManager, args: argparse.Namespace, out: TextIO, err: TextIO,
            plugins: Sequence[str] = ()) -> int:
    """``run``; ``plugins`` are the ``-p`` values, recorded in a saved corpus entry."""
    run = make_run_config(pm, args)
    model = Model.build(pm, run)
    seed = args.seed if args.seed is not None else int.from_bytes(os.urandom(4), "little")
    # A seed the user chose must mean one outcome, whatever a database holds; a fresh
    # seed is a fresh search anyway, so it may as well try the recent failures first.
    db = args.db if args.db is not None else (None if args.seed is not None else DEFAULT_DB)
    if db is not None and db.lower() == "none":
        db = None
    corpus = None if args.corpus.lower() == "none" else args.corpus
    if args.workers < 1:
        raise UsageError(f"--workers must be 1 or more, not {args.workers}")
    if args.stats_plot is not None:
        check_plot_path(args.stats_plot)
    database = None
    if db is not None:
        check_spec(db)
        if is_redis(db):
            database = open_database(db)  # an unreachable server is a usage error, now
    _rule("fuzzer session starts", out)
    out.write(f"kernel: {run.kernel} ({model.version.description})\n")
    out.write(f"mmu: {run.mmu}, cpus: {run.cpus}, seed: {seed}"
              f" (rerun with --seed {seed})\n")
    out.write(f"config: {run.config.describe()}\n")
    names = [n for n, p in pm.list_name_plugin() if p is not None]
    out.write(f"plugins: {', '.join(names)}\n")
    out.write(f"operations: {', '.join(o.name for o in model.operations) or 'none'};"
              f" interrupts: {', '.join(s.name for s in model.interrupts) or 'none'}\n")
    budget = []
    budget.append(f"{args.max_examples} examples" if args.max_examples else "no example limit")
    budget.append(f"{args.time_budget:g} s" if args.time_budget else "no time limit")
    out.write(f"budget: {' or '.join(budget)}\n")
    out.write(f"corpus: {corpus or 'not saved'}; example database: {db or 'none'}\n")
    if args.workers > 1:
        out.write(f"workers: {args.workers} processes, seeds"
                  f" {', '.join(str(worker_seed(seed, i)) for i in range(args.workers))}\n")
    if args.coverage:
        out.write(f"coverage: coverage.py (branches) of the modelled kernel -> {args.coverage_dir}\n")
    out.write(f"engine: {ENGINE_TEXT[args.engine]}\n")
    if args.guide:
        out.write(f"guidance: {GUIDE_TEXT[args.engine]}\n")
    overrides = [f"{name} ({info.plugin})" for name, info in model.routine_infos.items()
                 if info.override]
    if overrides:
        out.write(f"routines replaced by plugins: {', '.join(sorted(overrides))}\n")
    for _, lines in pm.call_each("fuzzer_report_header", config=run):
        for line in lines:
            out.write(f"{line}\n")
    out.flush()
    progress = Progress(err)
    log = StatsLog(args.stats, len(model.routine_infos))

    def report_progress(stats: Stats, elapsed: float) -> None:
        progress(stats, elapsed)
        log.sample(stats, elapsed)

    include = measured_files(model.routine_infos.values(), model.plugin_modules)
    try:
        if args.workers == 1:
            session = CoverageSession(args.coverage_dir, include) if args.coverage else None
            if session is not None:
                session.start()
            try:
                outcome = run_campaign(
                    model,
                    seed=seed,
                    max_examples=args.max_examples,
                    time_budget=args.time_budget,
                    progress=report_progress,
                    on_first_failure=progress.found,
                    database=database if database is not None else db,
                    guide=args.guide,
                    engine=args.engine,
                )
            finally:
                if session is not None:
                    session.stop()
        else:
            session = CoverageSession(args.coverage_dir, include) if args.coverage else None
            shares = split_examples(args.max_examples, args.workers)
            specs = [WorkerSpec(index=i, plugins=tuple(plugins), args=args, seed=worker_seed(seed, i),
                                max_examples=shares[i], time_budget=args.time_budget, database=db,
                                guide=args.guide, engine=args.engine,
                                coverage_dir=args.coverage_dir if args.coverage else None,
                                coverage_include=tuple(include))
                     for i in range(args.workers)]
            outcome = run_workers(model, specs, progress=report_progress, on_first_failure=progress.found)
            if session is not None:
                session.combine()
        progress.end()
        log.end(outcome.duration, outcome.examples, outcome.emulated_steps, outcome.distinct_failures,
                len(outcome.routines))
    finally:
        log.close()
    notes = []
    if session is not None:
        notes += _coverage_notes(session.report(model.routine_infos))
    if args.stats:
        notes.append(f"statistics written to {args.stats} ({len(log.samples)} samples)")
    if args.stats_plot:
        log.plot(args.stats_plot, f"{run.kernel}, {run.mmu}, seed {seed}"
                 + (f", {args.workers} workers" if args.workers > 1 else ""))
        notes.append(f"plot of coverage and failures over time written to {args.stats_plot}")
    return _report(outcome, model, args, out, err, corpus=corpus, plugins=plugins, notes=notes)


def _coverage_notes(summary: CoverageSummary) -> list[str]:
    reached = summary.routines - len(summary.unreached)
    lines = [f"coverage: {summary.percent:.1f}% of the modelled kernel's statements and branches;"
             f" {reached} of {summary.routines} modelled routines reached",
             f"coverage report: {summary.html} (data: {summary.directory / '.coverage'})"]
    if summary.unreached:
        lines.append(f"never reached ({len(summary.unreached)}): {', '.join(summary.unreached)}")
    else:
        lines.append("never reached: none")
    return lines


def _report(outcome: Outcome, model: Model, args: argparse.Namespace, out: TextIO, err: TextIO,
            *, corpus: str | None = None, plugins: Sequence[str] = (),
            notes: Sequence[str] = ()) -> int:
    """Print the outcome, then ``notes`` (coverage, statistics), then the summary line."""
    def summary(text: str) -> None:
        for note in notes:
            out.write(f"{note}\n")
        _rule(text, out)

    speed = outcome.emulated_steps / outcome.duration if outcome.duration else 0.0
    stats = (f"{outcome.examples:,} examples, {outcome.emulated_steps:,} steps"
             f" ({speed:,.0f} steps/s) in {outcome.duration:.2f}s")
    if outcome.status == "failed":
        failure = outcome.failure
        assert failure is not None
        out.write("\n" + format_failure(failure, model, outcome.steps) + "\n\n")
        if args.report_json:
            write_json(args.report_json, failure_json(failure, model, outcome.steps))
            out.write(f"report written to {args.report_json}\n")
        if corpus is not None:
            _save_reproduction(corpus, failure, model, outcome.steps, plugins, out, err)
        first = (f", first found after {outcome.time_to_first_failure:.2f}s"
                 f" (example {outcome.examples_to_first_failure})"
                 if outcome.time_to_first_failure is not None else "")
        summary(f"1 failed: {failure.message} -- {stats}{first}")
        return EXIT_FAILURE
    if outcome.status == "interrupted":
        if outcome.failure is not None:
            out.write("\n" + format_failure(outcome.failure, model, outcome.steps) + "\n\n")
            out.write("(interrupted while shrinking: this reproduction is not minimal)\n")
            if args.report_json:
                write_json(args.report_json, failure_json(outcome.failure, model, outcome.steps))
            summary(f"interrupted, 1 failure found (not shrunk): {stats}")
        else:
            summary(f"interrupted: {stats}")
        return EXIT_INTERRUPTED
    if outcome.status == "error":
        error = outcome.error
        assert error is not None
        raise error
    summary(f"{outcome.examples:,} passed, 0 failed: {stats}")
    return EXIT_OK


def _save_reproduction(corpus: str, failure: KernelFailure, model: Model, steps: Sequence[Step],
                       plugins: Sequence[str], out: TextIO, err: TextIO) -> None:
    run = model.run
    entry = Entry.from_failure(kernel=run.kernel, mmu=run.mmu, cpus=run.cpus, plugins=plugins,
                               config=run.config.values, options=run.options, failure=failure,
                               steps=steps)
    try:
        saved = save(entry, corpus)
    except OSError as exc:
        err.write(f"WARNING: reproduction not saved to the corpus: {exc}\n")
        return
    for skipped in saved.skipped:
        err.write(f"WARNING: not a usable corpus entry (ignored): {skipped}\n")
    if saved.new:
        out.write(f"reproduction saved to {saved.path} (replay: python -m fuzzer replay {saved.path})\n")
    else:
        out.write(f"already in the corpus: {saved.path} shows the same failure\n")


# ---------------------------------------------------------------------------
# replay
# ---------------------------------------------------------------------------


@attrs.frozen
class Replayed:
    """What replaying one corpus entry gave, against what it should give."""

    entry: Entry
    model: Model
    """The model it ran on (the entry's configuration, or another ``--kernel``)."""
    expected: Signature | None
    """The entry's expectation, or None ("clean") with ``--expect-clean``."""
    failure: KernelFailure | None
    """The kernel failure the steps gave, or None."""

    @property
    def actual(self) -> Signature | None:
        return self.failure.signature if self.failure is not None else None

    @property
    def ok(self) -> bool:
        return self.actual == self.expected

    def outcome(self) -> str:
        return str(self.actual) if self.actual is not None else "clean"

    def describe_mismatch(self) -> str:
        """The failure section: expected and actual, and the report or the steps."""
        entry = self.entry
        kernel = self.model.run.kernel
        lines = [f"title:    {entry.title}", f"file:     {entry.path}"]
        own = f" (the entry's: {entry.kernel})" if kernel != entry.kernel else ""
        lines.append(f"kernel:   {kernel}{own}")
        if entry.plugins:
            lines.append(f"plugins:  -p {' -p '.join(entry.plugins)}")
        if entry.fixed_by:
            lines.append(f"fixed by: {entry.fixed_by}")
        expected = str(self.expected) if self.expected is not None else "clean"
        lines += [f"expected: {expected}", f"actual:   {self.outcome()}", ""]
        if self.failure is not None:
            lines.append(format_failure(self.failure, self.model, self.failure.steps or entry.steps))
        else:
            lines.append(f"The reproduction ran clean ({len(entry.steps)} step"
                         f"{'s' if len(entry.steps) != 1 else ''}):")
            lines += [f"  {i}. {step.describe()}" for i, step in enumerate(entry.steps, 1)]
        return "\n".join(lines)


def replay_entry(entry: Entry, *, kernel: str | None = None, expect_clean: bool = False,
                 plugins: Sequence[str] = ()) -> Replayed:
    """Replay one corpus entry on the model its configuration (or ``kernel``) gives.

    Its plugins (and ``plugins``) load through a fresh plugin manager, as ``-p``
    would; a field that does not fit the loaded plugins raises
    :class:`CorpusError` naming it. Plugin errors propagate as in ``run``.
    """
    file = entry.path or entry.title
    pm = FuzzerPluginManager()
    try:
        pm.load([*entry.plugins, *plugins])
    except UsageError as exc:
        raise CorpusError(file, "plugins", str(exc)) from None
    versions = [v.name for v in pm.kernel_versions()]
    kernel = kernel or entry.kernel
    if kernel not in versions:
        field = "kernel" if kernel == entry.kernel else "--kernel"
        raise CorpusError(file, field,
                          f"unknown kernel version {kernel!r}; choose from: {', '.join(versions)}")
    mmus = pm.mmus()
    if entry.mmu not in mmus:
        raise CorpusError(file, "mmu", f"unknown MMU {entry.mmu!r}; loaded MMU plugins:"
                          f" {', '.join(sorted(mmus)) or 'none'}")
    known = {o.name: o for o in pm.config_options()}
    assignments = []
    for name, value in entry.config.items():
        opt = known.get(name)
        if opt is None:
            raise CorpusError(file, f"config.{name}",
                              f"unknown config option; known: {', '.join(sorted(known))}")
        if type(value) is not type(opt.default):
            raise CorpusError(file, f"config.{name}", f"expected a value like {opt.default!r}, not {value!r}")
        text = ("y" if value else "n") if isinstance(value, bool) else str(value)
        assignments.append(f"{name}={text}")
    args = build_parser(pm).parse_args(["run"])
    plugin_dests = sorted(k for k in vars(args) if k not in HOST_DESTS)
    for key, value in entry.options.items():
        if key not in plugin_dests:
            raise CorpusError(file, f"options.{key}", f"unknown plugin option; the loaded plugins'"
                              f" options: {', '.join(plugin_dests) or 'none'}")
        setattr(args, key, value)
    args.kernel, args.mmu, args.config, args.cpus = kernel, entry.mmu, assignments, entry.cpus
    try:
        run = make_run_config(pm, args)
    except UsageError as exc:
        raise CorpusError(file, "config", str(exc)) from None
    model = Model.build(pm, run)
    try:
        _, failure = replay(model, entry.steps)
    except (ValueError, UsageError) as exc:  # a step this model cannot take
        raise CorpusError(file, "steps", str(exc)) from None
    return Replayed(entry, model, None if expect_clean else entry.expect, failure)


def cmd_replay(pm: FuzzerPluginManager, args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    started = time.monotonic()
    if args.kernel is not None:
        versions = [v.name for v in pm.kernel_versions()]
        if args.kernel not in versions:
            raise UsageError(f"unknown kernel version {args.kernel!r}; choose from: {', '.join(versions)}")
    paths = find(args.paths)
    if not paths:
        raise UsageError(f"no corpus entries (*.json) in {', '.join(args.paths)}")
    _rule("corpus replay starts", out)
    out.write(f"kernel: {args.kernel or 'each entry its own'};"
              f" expectation: {'clean (--expect-clean)' if args.expect_clean else 'each entry its own'}\n")
    out.write(f"collected {len(paths)} entr{'y' if len(paths) == 1 else 'ies'}\n\n")
    failed: list[Replayed] = []
    errors: list[tuple[Path, str]] = []
    code = EXIT_OK
    for path in paths:
        try:
            result = replay_entry(load(path), kernel=args.kernel, expect_clean=args.expect_clean,
                                  plugins=args.plugins)
        except UsageError as exc:
            err.write(f"ERROR: {exc}\n")
            out.write(f"{path} ERROR\n")
            errors.append((path, str(exc)))
            code = max(code, EXIT_USAGE) if code != EXIT_INTERNAL else code
            continue
        except PluginError as exc:
            err.write(f"ERROR: {path}: {exc}\n")
            err.write("This is the plugin's fault, not a kernel finding. Its traceback:\n")
            err.write("".join(traceback.format_exception(exc.cause)))
            out.write(f"{path} ERROR\n")
            errors.append((path, str(exc)))
            code = EXIT_INTERNAL
            continue
        status = "PASSED" if result.ok else "FAILED"
        out.write(f"{path} {status}  ({result.outcome()})\n")
        if not result.ok:
            failed.append(result)
            code = code or EXIT_FAILURE
    out.write("\n")
    if failed:
        _rule("FAILURES", out)
        for result in failed:
            out.write(_underline(str(result.entry.path)) + "\n")
            out.write(result.describe_mismatch() + "\n\n")
    if failed or errors:
        _rule("short test summary info", out)
        for result in failed:
            expected = str(result.expected) if result.expected is not None else "clean"
            out.write(f"FAILED {result.entry.path} - expected {expected}, got {result.outcome()}\n")
        for path, message in errors:
            out.write(f"ERROR {path} - {message}\n")
    passed = len(paths) - len(failed) - len(errors)
    parts = [f"{len(failed)} failed"] if failed else []
    parts.append(f"{passed} passed")
    if errors:
        parts.append(f"{len(errors)} error{'s' if len(errors) != 1 else ''}")
    _rule(f"{', '.join(parts)} in {time.monotonic() - started:.2f}s", out)
    return code


def cmd_export(pm: FuzzerPluginManager, repro: str, fmt: str, directory: str, out: TextIO) -> int:
    """``export``: write the program, say where, and what it checks."""
    path = write_export(repro, fmt, directory,
                        lambda name, args: pm.hook.fuzzer_export_operation(name=name, args=args))
    out.write(f"wrote {path} ({fmt})\n")
    for line in path.read_text(encoding="utf-8").splitlines():
        text = line.lstrip("#/* ").rstrip()
        if text.startswith(("expect:", "verdict:")):
            out.write(f"  {text}\n")
    return EXIT_OK


def cmd_boot(repro: str, source: str, patch: str | None, work: str, timeout: float, out: TextIO,
             err: TextIO) -> int:
    """``boot``: build, boot, and print each boot's verdict (side by side with ``--patch``)."""
    def echo(text: str) -> None:
        err.write(text + "\n")
        err.flush()

    results = boot_real(repro, source, patch=patch, work=work, timeout=timeout, echo=echo)
    for result in results:
        out.write(f"{result.label:>8}: {result.verdict}\n")
        for number in result.numbers:
            out.write(f"{'':>10}{number}\n")
        out.write(f"{'':>10}console: {result.log}\n")
    return EXIT_OK


def _underline(text: str) -> str:
    width = 78
    pad = max(width - len(text) - 2, 4)
    return f"{'_' * (pad // 2)} {text} {'_' * (pad - pad // 2)}"


def main(argv: Sequence[str] | None = None, out: TextIO | None = None,
         err: TextIO | None = None) -> int:
    """Run the command line; return the exit code (see the module docstring)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    out = out or sys.stdout
    err = err or sys.stderr
    try:
        pm = FuzzerPluginManager()
        requested = preparse_plugins(argv)
        pm.load(requested)
        parser = build_parser(pm)
        args = parser.parse_args(argv)
        if args.command is None:
            raise UsageError("a command is required: run, replay, export, boot or plugins (see --help)")
        if args.command == "plugins":
            return cmd_plugins(pm, out)
        if args.command == "replay":
            args.plugins = requested  # global and subcommand -p alike
            return cmd_replay(pm, args, out, err)
        if args.command == "export":
            return cmd_export(pm, args.repro, args.fmt, args.out, out)
        if args.command == "boot":
            return cmd_boot(args.repro, args.source, args.patch, args.work, args.timeout, out, err)
        return cmd_run(pm, args, out, err, plugins=requested)
    except UsageError as exc:
        err.write(f"ERROR: {exc}\n")
        return EXIT_USAGE
    except PluginError as exc:
        err.write(f"ERROR: {exc}\n")
        err.write("This is the plugin's fault, not a kernel finding. Its traceback:\n")
        err.write("".join(traceback.format_exception(exc.cause)))
        steps = exc.steps or ()
        if steps:
            err.write("Steps that reach it:\n")
            for i, step in enumerate(steps, 1):
                err.write(f"  {i}. {step.describe()}\n")
        return EXIT_INTERNAL
    except ModelLimitation as exc:
        err.write(f"INTERNAL ERROR: the model does not cover this: {exc}\n")
        return EXIT_INTERNAL
    except KeyboardInterrupt:
        err.write("interrupted\n")
        return EXIT_INTERRUPTED
    except SystemExit as exc:  # --help
        return exc.code if isinstance(exc.code, int) else EXIT_OK
    except Exception:
        err.write("INTERNAL ERROR: the fuzzer itself failed (not a kernel finding):\n")
        err.write(traceback.format_exc())
        return EXIT_INTERNAL


def console_main() -> int:
    return main()
