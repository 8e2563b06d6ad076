"""The command line: ``python -m fuzzer run``, ``replay`` and ``plugins``.

The only module that sees argparse: it turns the host's options and the
plugins' option registry into a parser, and the parsed values into
:class:`~fuzzer._settings.Settings` through the one builder. Exit codes are
:class:`~fuzzer._engine.ExitCode` (pytest's numbering where it applies):

* 0 -- the campaign found nothing; every replayed corpus entry gave its expected outcome;
* 1 -- a kernel failure was found (reported, with a minimal reproduction);
  a replayed entry's outcome differed from its expectation;
* 2 -- interrupted (Ctrl-C);
* 3 -- internal error, or a plugin raised (reported as that plugin's fault);
* 4 -- usage error: a bad option, an unknown plugin, a broken plugin, an output path
  that cannot be written.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import time
import traceback
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NoReturn, TextIO

from fuzzer._boot import boot as boot_real
from fuzzer._corpus import find, load
from fuzzer._database import is_redis, open_database
from fuzzer._engine import ENGINES, ExitCode, Outcome, Status, run_campaign
from fuzzer._errors import ModelLimitation, PluginError, Signature, UsageError
from fuzzer._export import FORMATS, write_export
from fuzzer._model import Model
from fuzzer._plugins import AUTOLOAD_ENV, FuzzerPluginManager
from fuzzer._regression import Replayed, replay_entry
from fuzzer._reporters import SESSION_PLUGINS, rule
from fuzzer._schedulers import SCHEDULERS
from fuzzer._session import Session
from fuzzer._settings import (
    DEFAULT_CORPUS,
    DEFAULT_COVERAGE_DIR,
    DEFAULT_DB,
    DEFAULT_MAX_EXAMPLES,
    DEFAULT_TIME_BUDGET,
    Settings,
    build_settings,
)
from fuzzer._steps import Step

#: ``run``'s own options (dest -> option); every other dest is a plugin's.
HOST_OPTIONS = {
    "kernel": "--kernel", "mmu": "--mmu", "config": "--config", "cpus": "--cpus",
    "max_examples": "--max-examples", "time_budget": "--time-budget", "seed": "--seed",
    "report_json": "--report-json", "corpus": "--corpus", "db": "--db", "workers": "--workers",
    "coverage": "--coverage", "coverage_dir": "--coverage-dir", "stats": "--stats",
    "stats_plot": "--stats-plot", "guide": "--guide", "engine": "--engine",
    "report_known": "--report-known", "scheduler": "--scheduler", "cpu_scheduler": "--cpu-scheduler",
    "interleave": "--no-interleave", "plugins": "-p", "command": "COMMAND",
}


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


def _count(text: str) -> int:
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


def _plugin_help() -> str:
    return ("load plugin NAME (a built-in short name or a module); -p no:NAME blocks one"
            f" (set {AUTOLOAD_ENV}=1 to skip entry-point plugins)")


def _add_p(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-p", dest="plugins", action="append", default=[], metavar="NAME",
                        help=_plugin_help())


def build_parser(pm: FuzzerPluginManager) -> _Parser:
    """The whole command line: the host's options, then each plugin's, from its registry."""
    parser = _Parser(
        prog="python -m fuzzer",
        description="Fuzz modelled powerpc kernel logic (code patching, page-table locking,"
        " TLB flushing, CPU hotplug) with Hypothesis.",
        epilog="Exit codes: 0 nothing found, 1 kernel failure found, 2 interrupted,"
        " 3 internal or plugin error, 4 usage error.",
    )
    _add_p(parser)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    run = sub.add_parser("run", help="fuzz the modelled kernel")
    _add_model_options(run, pm)
    _add_campaign_options(run)
    _add_output_options(run)
    _add_p(run)
    _add_plugin_options(run, pm)
    rep = sub.add_parser("replay", help="replay corpus entries; report those whose outcome differs"
                         " from their expectation")
    rep.add_argument("paths", nargs="*", metavar="PATH", default=[DEFAULT_CORPUS],
                     help=f"corpus files or directories (default: {DEFAULT_CORPUS})")
    rep.add_argument("--kernel", metavar="VERSION", default=None, help="replay on this kernel version"
                     f" instead of each entry's own: {', '.join(v.name for v in pm.kernel_versions())}")
    rep.add_argument("--expect-clean", action="store_true",
                     help="expect every entry to run clean (does a fix make a crash pass?)")
    rep.add_argument("-p", dest="plugins", action="append", default=[], metavar="NAME",
                     help=_plugin_help() + "; loaded for every entry, besides the entry's own")
    plugins = sub.add_parser("plugins", help="list loaded plugins, their origin and hooks")
    _add_p(plugins)
    _add_real_kernel_commands(sub)
    _add_check(sub, pm)
    return parser


def _add_check(sub: Any, pm: FuzzerPluginManager) -> None:
    chk = sub.add_parser("check", help="explore every schedule of a small scenario with at most K"
                         " preemptions (bounded exhaustive checking)")
    chk.add_argument("calls", nargs="*", metavar="CPU:OP(ARG=VALUE,...)",
                     help="operations run concurrently, each on its CPU (in order per CPU)")
    chk.add_argument("--setup", action="append", default=[], metavar="CPU:OP(ARG=VALUE,...)",
                     help="an operation run to completion before the concurrent part (repeatable)")
    chk.add_argument("--scenario", metavar="FILE", default=None,
                     help="read the scenario from FILE: 'setup CPU OP ARG=VALUE' and"
                     " 'cpu CPU OP ARG=VALUE' lines")
    chk.add_argument("--preemptions", "-k", type=_count, default=2, metavar="K",
                     help="explore every schedule with at most K preemptions (default 2)")
    chk.add_argument("--prune", choices=("none", "state", "por"), default="por",
                     help="por (default): cut a schedule at any state already explored with a"
                     " budget that covers its own, whichever CPU ran last (two orders of"
                     " commuting steps meet there); state: only at choice points, with the same"
                     " CPU last; none: explore every schedule (for comparison)")
    chk.add_argument("--no-prune", dest="prune", action="store_const", const="none",
                     help="the same as --prune none")
    chk.add_argument("--max-schedules", type=_count, default=0, metavar="N",
                     help="stop after N schedules; 0 = no limit (default)")
    _add_model_options(chk, pm)
    _add_p(chk)


def _add_real_kernel_commands(sub: Any) -> None:
    """``export`` and ``boot``: from a reproduction to a program, and to a real kernel's verdict."""
    exp = sub.add_parser("export", help="turn a reproduction into a program for a real kernel")
    exp.add_argument("repro", metavar="REPRO", help="a corpus entry or a --report-json report")
    exp.add_argument("--format", dest="fmt", choices=FORMATS, default=FORMATS[0],
                     help="init-c: a static init against the kernel's nolibc; shell: a script for a"
                     f" machine with a userland (default: {FORMATS[0]})")
    exp.add_argument("--out", metavar="DIR", default=".", help="directory to write it to (default: .)")
    _add_p(exp)
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


def _add_model_options(run: argparse.ArgumentParser, pm: FuzzerPluginManager) -> None:
    run.add_argument("--kernel", metavar="VERSION", default=None,
                     help=f"kernel version to model, one of --mmu's architecture: {_versions_by_arch(pm)}"
                     " (default: the newest the MMU runs)")
    run.add_argument("--mmu", metavar="NAME", default="radix",
                     help=f"MMU plugin: {', '.join(_mmu_names(pm))} (default: radix)")
    run.add_argument("--config", dest="config", action="append", default=[], metavar="CONFIG_X=VALUE",
                     help="set a kernel config option (repeatable); the default is a debug config:"
                     " DEBUG_VM, STRICT_KERNEL_RWX, PROVE_LOCKING, FAULT_INJECTION, SMP on, 64K pages")
    run.add_argument("--cpus", type=_count, default=None, metavar="N",
                     help="CPUs in the machine (default 4; 1 with CONFIG_SMP=n)")


def _add_campaign_options(run: argparse.ArgumentParser) -> None:
    run.add_argument("--max-examples", type=_count, default=DEFAULT_MAX_EXAMPLES, metavar="N",
                     help="stop after N examples (with --engine hypothesis: once Hypothesis has"
                     " generated N; it may run a few more distinct ones on the way);"
                     f" 0 = no limit (default {DEFAULT_MAX_EXAMPLES:,})")
    run.add_argument("--time-budget", type=_seconds, default=DEFAULT_TIME_BUDGET, metavar="SECONDS",
                     help=f"stop after this long; 0 = no limit (default {DEFAULT_TIME_BUDGET:g})")
    run.add_argument("--seed", type=_count, default=None, metavar="N",
                     help="seed of the search; the same seed gives the same result"
                     " (default: a fresh one, printed)")
    run.add_argument("--db", metavar="PATH", default=None,
                     help="example database: failures saved there are tried first;"
                     " a directory, redis://HOST:PORT[/DB] to share one between machines (the redis"
                     f" extra), or 'none' (default: {DEFAULT_DB} without --seed; none with"
                     " --seed, so a seed always gives the same result)")
    run.add_argument("--workers", type=_count, default=1, metavar="N",
                     help="run the campaign on N worker processes of a Dask LocalCluster (the"
                     " cluster extra): shards of the search, each from its own seed derived from"
                     " --seed, taken by workers as they free up (default 1: this process, no"
                     " cluster); with --scheduler, wait for N workers")
    run.add_argument("--scheduler", metavar="ADDRESS", default=None,
                     help="run the campaign on an existing Dask cluster: its scheduler's"
                     " tcp://HOST:PORT, or the file `dask scheduler --scheduler-file` wrote (the"
                     " cluster extra; see the README's 'Running across machines')")
    run.add_argument("--engine", choices=tuple(ENGINES), default=next(iter(ENGINES)),
                     help="how examples are generated: walk (random walks at emulator speed, a"
                     " step-level shrinker) or hypothesis (a Hypothesis RuleBasedStateMachine,"
                     " shrunk by Hypothesis; about 8x slower per step, see the README)"
                     f" (default: {next(iter(ENGINES))})")
    run.add_argument("--guide", action="store_true",
                     help="coverage guidance: walk: start examples from prefixes of those that"
                     " entered new modelled routines; hypothesis: feed each example's count of"
                     " routines to hypothesis.target (see the README for whether it helps)")
    run.add_argument("--cpu-scheduler", dest="cpu_scheduler", choices=SCHEDULERS, default="mixed",
                     help="how the walk picks the CPU of each emulated step: uniform (any runnable"
                     " CPU), pct (random priorities and change points, Burckhardt et al. 2010),"
                     " bounded (few preemptions, CHESS) or mixed (one of them per example;"
                     " default)")
    run.add_argument("--no-interleave", dest="interleave", action="store_false",
                     help="no interleaving feedback: do not keep examples in which two CPUs'"
                     " routines first met in a new order, nor replay them rescheduled")
    run.add_argument("--report-known", nargs="?", const="", default=None, metavar="MATCH",
                     help="report known findings (failures of unmodified kernels that plugins"
                     " declare) as ordinary findings: stop, shrink, report, save; by default they"
                     " are counted and the search goes on. With MATCH, only those whose signature"
                     " contains it (e.g. smp.c:1634): the others are still counted and gone past,"
                     " so a failure behind them is reported")


def _add_output_options(run: argparse.ArgumentParser) -> None:
    run.add_argument("--report-json", metavar="PATH", default=None,
                     help="also write the failure report as JSON to PATH")
    run.add_argument("--corpus", metavar="DIR", default=DEFAULT_CORPUS,
                     help="save a failure's minimal reproduction in DIR, unless an entry there"
                     f" shows the same bug; 'none' to not save (default: {DEFAULT_CORPUS})")
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


def _add_plugin_options(run: argparse.ArgumentParser, pm: FuzzerPluginManager) -> None:
    """Each plugin's registered options, as an argparse group titled after the plugin."""
    registry = pm.options()
    for group in registry.groups:
        specs = registry.of(group)
        if not specs:
            continue
        argp = run.add_argument_group(group.title)
        for spec in specs:
            kwargs: dict[str, Any] = {"dest": spec.dest, "default": spec.default, "help": spec.help,
                                      "action": spec.action}
            if spec.action == "store":
                kwargs.update(type=spec.type, metavar=spec.metavar, choices=spec.choices)
            argp.add_argument(*spec.names, **kwargs)


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


def settings_from_args(pm: FuzzerPluginManager, args: argparse.Namespace,
                       plugins: Sequence[str]) -> Settings:
    """The parsed ``run`` command line as settings: the only place a Namespace is read."""
    values = vars(args)
    options = {dest: value for dest, value in values.items() if dest not in HOST_OPTIONS}
    return build_settings(
        pm, kernel=args.kernel, mmu=args.mmu, config=args.config, cpus=args.cpus, options=options,
        seed=args.seed, db=args.db, corpus=args.corpus, plugins=tuple(plugins),
        max_examples=args.max_examples, time_budget=args.time_budget, engine=args.engine,
        guide=args.guide, cpu_scheduler=args.cpu_scheduler, interleave=args.interleave,
        workers=args.workers, report_json=args.report_json, stats=args.stats,
        stats_plot=args.stats_plot, coverage=args.coverage, coverage_dir=args.coverage_dir,
        report_known=args.report_known is not None, report_known_match=args.report_known or "",
        scheduler=args.scheduler,
    )


def cmd_check(pm: FuzzerPluginManager, args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    """``check``: every schedule of a scenario with at most K preemptions, or the first failure."""
    from fuzzer._check import Scenario, check, parse_call, parse_scenario
    from fuzzer._engine.records import Finding
    from fuzzer._report import format_failure
    from fuzzer._settings import run_config

    if args.scenario is not None:
        try:
            scenario = parse_scenario(Path(args.scenario).read_text(encoding="utf-8"))
        except OSError as exc:
            raise UsageError(f"--scenario {args.scenario}: {exc.strerror}") from None
    elif args.calls:
        scenario = Scenario(tuple(parse_call(c) for c in args.setup),
                            tuple(parse_call(c) for c in args.calls))
    else:
        raise UsageError("check: give the operations (CPU:OP(ARG=VALUE,...)) or --scenario FILE")
    run = run_config(pm, kernel=args.kernel, mmu=args.mmu, config=args.config, cpus=args.cpus)
    model = Model.build(pm, run).searching(())  # check knows no known findings: every WARN ends a schedule
    rule("bounded exhaustive check starts", out)
    out.write(f"kernel: {run.kernel}, mmu: {run.mmu}, cpus: {run.cpus};"
              f" at most {args.preemptions} preemption(s); pruning: {args.prune}\n")
    result = check(model, scenario, preemptions=args.preemptions, prune=args.prune,
                   max_schedules=args.max_schedules or None)
    if result.failure is not None and result.steps is not None:
        out.write(f"failure after {result.schedules} schedule(s) ({result.seconds:.1f} s)\n")
        finding = Finding.from_failure(result.failure, result.steps)
        out.write(format_failure(finding, model, result.steps) + "\n")
        return ExitCode.FAILED
    what = "no failure" if result.complete else "no failure yet (stopped at --max-schedules)"
    out.write(f"{what} in {result.schedules} schedules with <= {args.preemptions} preemptions"
              f" ({result.pruned} cut at a state already explored, {result.emulated} steps,"
              f" {result.seconds:.1f} s)\n")
    return ExitCode.OK


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
    return ExitCode.OK


class _RunError(Exception):
    """The campaign ended on a plugin or internal error (reported by :func:`main`)."""

    def __init__(self, error: BaseException, steps: Sequence[Step]) -> None:
        super().__init__(str(error))
        self.error = error
        self.steps = tuple(steps)


def cmd_run(pm: FuzzerPluginManager, settings: Settings, out: TextIO, err: TextIO) -> int:
    """``run``: a session whose outputs are the lifecycle hooks' built-in plugins."""
    cluster_module = _cluster_module(settings) if settings.on_cluster else None
    known = pm.known_findings(settings.run)
    # The machines go on after exactly the WARNINGs the search counts (none: --report-known).
    model = Model.build(pm, settings.run).searching(
        k.signature for k in known if not settings.reports(k))
    database: Any = settings.database
    if database is not None and is_redis(database):
        database = open_database(database)  # an unreachable server is a usage error, now
    session = Session(settings, model, pm, out, err, known=known)
    with contextlib.ExitStack() as stack:
        spec = None
        if cluster_module is not None:  # reached (or started) before the header names it
            spec = _cluster_spec(cluster_module, session)
            session.cluster = stack.enter_context(cluster_module.connect(
                spec, model, workers=settings.workers, scheduler=settings.scheduler))
        registered = [pm.register(cls(), f"fuzzer-{name}") for name, cls in SESSION_PLUGINS]
        pm.session_plugins.update(name for name in registered if name is not None)
        try:
            session.hook("fuzzer_session_start")
            outcome = _campaign(session, database, cluster_module, spec)
            session.hook("fuzzer_session_finish", outcome=outcome)
        finally:
            for name in registered:
                if name is not None:
                    pm.unregister(name=name)
    if outcome.status is Status.ERROR:
        assert outcome.error is not None
        raise _RunError(outcome.error, outcome.steps)
    return session.exitcode if session.exitcode is not None else ExitCode.OK


def _known(session: Session) -> tuple[Signature, ...]:
    """The known findings' signatures the search counts and goes past (none: --report-known)."""
    return tuple(k.signature for k in session.known if not session.settings.reports(k))


def _cluster_module(settings: Settings) -> Any:
    """``fuzzer._cluster``, or a usage error naming the extra that brings Dask's ``distributed``."""
    try:
        import distributed  # noqa: F401  (an optional extra)
    except ImportError:
        option = (f"--scheduler {settings.scheduler}" if settings.scheduler
                  else f"--workers {settings.workers}")
        raise UsageError(f"{option} needs Dask's distributed: pip install 'ppc-kernel-fuzzer[cluster]'"
                         ) from None
    from fuzzer import _cluster

    return _cluster


def _cluster_spec(cluster_module: Any, session: Session) -> Any:
    from fuzzer._reporters import coverage_include

    include = tuple(coverage_include(session)) if session.settings.coverage else None
    return cluster_module.CampaignSpec(session.settings, coverage=include, known=frozenset(_known(session)))


def _campaign(session: Session, database: Any, cluster_module: Any, spec: Any) -> Outcome:
    settings, model = session.settings, session.model
    if cluster_module is None:
        return run_campaign(model, seed=settings.seed, max_examples=settings.max_examples,
                            time_budget=settings.time_budget, events=session.events(),
                            database=database, guide=settings.guide, engine=settings.engine,
                            scheduler=settings.cpu_scheduler, interleave=settings.interleave,
                            known=_known(session))
    done = cluster_module.run_cluster(session.cluster, model, spec, events=session.events(examples=False),
                                      database=database)
    session.notes += done.notes()
    session.measured += done.coverage
    outcome: Outcome = done.outcome
    return outcome


# ---------------------------------------------------------------------------
# replay
# ---------------------------------------------------------------------------


def cmd_replay(pm: FuzzerPluginManager, paths_given: Sequence[str], *, kernel: str | None,
               expect_clean: bool, plugins: Sequence[str], out: TextIO, err: TextIO) -> int:
    started = time.monotonic()
    if kernel is not None:
        pm.check_kernel(kernel)
    paths = find(paths_given)
    if not paths:
        raise UsageError(f"no corpus entries (*.json) in {', '.join(paths_given)}")
    rule("corpus replay starts", out)
    out.write(f"kernel: {kernel or 'each entry its own'};"
              f" expectation: {'clean (--expect-clean)' if expect_clean else 'each entry its own'}\n")
    out.write(f"collected {len(paths)} entr{'y' if len(paths) == 1 else 'ies'}\n\n")
    failed: list[Replayed] = []
    errors: list[tuple[Path, str]] = []
    code = ExitCode.OK
    for path in paths:
        message: str | None = None
        try:
            result = replay_entry(load(path), kernel=kernel, expect_clean=expect_clean, plugins=plugins)
        except UsageError as exc:
            err.write(f"ERROR: {exc}\n")
            message = str(exc)
            code = max(code, ExitCode.USAGE_ERROR) if code != ExitCode.INTERNAL_ERROR else code
        except PluginError as exc:
            _plugin_error(exc, (), err, prefix=f"{path}: ")
            message = str(exc)
            code = ExitCode.INTERNAL_ERROR
        if message is not None:
            out.write(f"{path} ERROR\n")
            errors.append((path, message))
            continue
        out.write(f"{path} {'PASSED' if result.ok else 'FAILED'}  ({result.outcome()})\n")
        if not result.ok:
            failed.append(result)
            code = code or ExitCode.FAILED
    out.write("\n")
    _replay_summary(failed, errors, len(paths), time.monotonic() - started, out)
    return code


def _replay_summary(failed: list[Replayed], errors: list[tuple[Path, str]], total: int,
                    duration: float, out: TextIO) -> None:
    if failed:
        rule("FAILURES", out)
        for result in failed:
            out.write(_underline(str(result.entry.path)) + "\n")
            out.write(result.describe_mismatch() + "\n\n")
    if failed or errors:
        rule("short test summary info", out)
        for result in failed:
            expected = str(result.expected) if result.expected is not None else "clean"
            out.write(f"FAILED {result.entry.path} - expected {expected}, got {result.outcome()}\n")
        for path, message in errors:
            out.write(f"ERROR {path} - {message}\n")
    passed = total - len(failed) - len(errors)
    parts = [f"{len(failed)} failed"] if failed else []
    parts.append(f"{passed} passed")
    if errors:
        parts.append(f"{len(errors)} error{'s' if len(errors) != 1 else ''}")
    rule(f"{', '.join(parts)} in {duration:.2f}s", out)


def cmd_export(pm: FuzzerPluginManager, repro: str, fmt: str, directory: str, out: TextIO) -> int:
    """``export``: write the program, say where, and what it checks."""
    path = write_export(repro, fmt, directory,
                        lambda name, args: pm.hook.fuzzer_export_operation(name=name, args=args))
    out.write(f"wrote {path} ({fmt})\n")
    for line in path.read_text(encoding="utf-8").splitlines():
        text = line.lstrip("#/* ").rstrip()
        if text.startswith(("expect:", "verdict:")):
            out.write(f"  {text}\n")
    return ExitCode.OK


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
    return ExitCode.OK


def _underline(text: str) -> str:
    width = 78
    pad = max(width - len(text) - 2, 4)
    return f"{'_' * (pad // 2)} {text} {'_' * (pad - pad // 2)}"


def _plugin_error(exc: PluginError, steps: Sequence[Step], err: TextIO, *, prefix: str = "") -> None:
    err.write(f"ERROR: {prefix}{exc}\n")
    err.write("This is the plugin's fault, not a kernel finding. Its traceback:\n")
    err.write("".join(traceback.format_exception(exc.cause)))
    if steps:
        err.write("Steps that reach it:\n")
        for i, step in enumerate(steps, 1):
            err.write(f"  {i}. {step.describe()}\n")


def _dispatch(argv: list[str], out: TextIO, err: TextIO) -> int:
    pm = FuzzerPluginManager()
    requested = preparse_plugins(argv)
    pm.load(requested)
    pm.reserved_options.update(HOST_OPTIONS)
    args = build_parser(pm).parse_args(argv)
    if args.command is None:
        raise UsageError("a command is required: run, replay, check, export, boot or plugins"
                         " (see --help)")
    if args.command == "plugins":
        return cmd_plugins(pm, out)
    if args.command == "check":
        return cmd_check(pm, args, out, err)
    if args.command == "export":
        return cmd_export(pm, args.repro, args.fmt, args.out, out)
    if args.command == "boot":
        return cmd_boot(args.repro, args.source, args.patch, args.work, args.timeout, out, err)
    if args.command == "replay":  # global and subcommand -p alike
        return cmd_replay(pm, args.paths, kernel=args.kernel, expect_clean=args.expect_clean,
                          plugins=requested, out=out, err=err)
    return cmd_run(pm, settings_from_args(pm, args, requested), out, err)


def main(argv: Sequence[str] | None = None, out: TextIO | None = None,
         err: TextIO | None = None) -> int:
    """Run the command line; return the exit code (see the module docstring)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    out = out or sys.stdout
    err = err or sys.stderr
    try:
        try:
            return int(_dispatch(argv, out, err))
        except _RunError as failed:
            if isinstance(failed.error, PluginError):
                _plugin_error(failed.error, failed.steps, err)
                return ExitCode.INTERNAL_ERROR
            raise failed.error from None
    except UsageError as exc:
        err.write(f"ERROR: {exc}\n")
        return ExitCode.USAGE_ERROR
    except PluginError as exc:
        _plugin_error(exc, (), err)
        return ExitCode.INTERNAL_ERROR
    except ModelLimitation as exc:
        err.write(f"INTERNAL ERROR: the model does not cover this: {exc}\n")
        return ExitCode.INTERNAL_ERROR
    except KeyboardInterrupt:
        err.write("interrupted\n")
        return ExitCode.INTERRUPTED
    except SystemExit as exc:  # --help
        return exc.code if isinstance(exc.code, int) else ExitCode.OK
    except Exception:
        err.write("INTERNAL ERROR: the fuzzer itself failed (not a kernel finding):\n")
        err.write(traceback.format_exc())
        return ExitCode.INTERNAL_ERROR


def console_main() -> int:
    return main()
