"""The built-in session plugins: the terminal, ``--stats``, ``--coverage``, ``--report-json``
and the corpus, each on the campaign-lifecycle hooks a third-party plugin can use too.

``run`` registers them (:data:`SESSION_PLUGINS`, in this order) for its
session only; they are not listed among the model's plugins.
"""

from __future__ import annotations

import time
from collections.abc import Generator
from typing import Any, TextIO

from fuzzer._corpus import Entry, save
from fuzzer._coverage import CoverageSession, CoverageSummary, measured_files
from fuzzer._engine.records import ExitCode, Finding, Outcome, StatsSnapshot, Status
from fuzzer._errors import PluginError
from fuzzer._plugins import hookimpl
from fuzzer._report import failure_json, format_failure, write_json
from fuzzer._session import Session
from fuzzer._stats import StatsLog
from fuzzer._steps import Step


def rule(text: str, out: TextIO) -> None:
    """``===== text =====``, 78 wide, as pytest's section lines."""
    width = 78
    pad = max(width - len(text) - 2, 4)
    out.write(f"{'=' * (pad // 2)} {text} {'=' * (pad - pad // 2)}\n")


class Terminal:
    """The run header, the progress line on stderr, the failure report and the summary."""

    def __init__(self) -> None:
        self.stream: TextIO | None = None
        self.tty = False
        self.last = 0.0

    @hookimpl
    def fuzzer_session_start(self, session: Session) -> None:
        self.stream = session.err
        self.tty = session.err.isatty()
        out = session.out
        rule("fuzzer session starts", out)
        for line in header(session):
            out.write(f"{line}\n")
        out.flush()

    @hookimpl
    def fuzzer_campaign_progress(self, stats: StatsSnapshot, elapsed: float) -> None:
        now = time.monotonic()
        if self.stream is None or now - self.last < (0.5 if self.tty else 5.0):
            return
        self.last = now
        rate = stats.emulated_steps / elapsed if elapsed else 0.0
        known = sum(stats.known_seen.values())
        met = known + sum(stats.warned_seen.values())  # a known WARNING the example went past
        line = (f"[{elapsed:6.1f}s] {stats.examples:,} examples, {stats.emulated_steps:,} steps"
                f" ({rate:,.0f} steps/s), {stats.failures_seen - known} failing"
                + (f", {met} known" if met else "")
                + (f", {stats.pairs} interleavings" if stats.pairs else ""))
        self.stream.write("\r" + line + "\x1b[K" if self.tty else line + "\n")
        self.stream.flush()

    @hookimpl
    def fuzzer_failure_found(self, failure: Finding | PluginError, worker: str | None) -> None:
        self.end()
        what = failure.message if isinstance(failure, Finding) else str(failure)
        who = f"{worker}: " if worker else ""
        assert self.stream is not None
        self.stream.write(f"found: {who}{what} -- shrinking to a minimal reproduction...\n")
        self.stream.flush()

    def end(self) -> None:
        if self.stream is not None and self.tty and self.last:
            self.stream.write("\n")
            self.stream.flush()
            self.last = 0.0

    @hookimpl(wrapper=True)
    def fuzzer_session_finish(self, session: Session, outcome: Outcome) -> Generator[None, Any, Any]:
        """The report first, then every other plugin's outputs and notes, then the summary."""
        self.end()
        if outcome.failure is not None and outcome.status in (Status.FAILED, Status.INTERRUPTED):
            session.out.write("\n" + format_failure(outcome.failure, session.model, outcome.steps) + "\n\n")
            for other in outcome.more_failures:
                session.out.write(format_failure(other, session.model, other.steps) + "\n\n")
            if outcome.status is Status.INTERRUPTED:
                session.out.write("(interrupted while shrinking: this reproduction is not minimal)\n")
        result = yield
        if outcome.status is not Status.ERROR:
            summarize(session, outcome)
        return result


def header(session: Session) -> list[str]:
    """The run's header lines: what runs, with what, within what budget."""
    settings, model, pm = session.settings, session.model, session.pluginmanager
    run = model.run
    db = settings.database
    lines = [f"kernel: {run.kernel} ({model.version.description})",
             f"mmu: {run.mmu}, cpus: {run.cpus}, seed: {settings.seed} (rerun with --seed {settings.seed})",
             f"config: {run.config.describe()}",
             f"plugins: {', '.join(pm.model_plugins())}",
             f"operations: {', '.join(o.name for o in model.operations) or 'none'};"
             f" interrupts: {', '.join(s.name for s in model.interrupts) or 'none'}"]
    budget = [f"{settings.max_examples} examples" if settings.max_examples else "no example limit",
              f"{settings.time_budget:g} s" if settings.time_budget else "no time limit"]
    lines.append(f"budget: {' or '.join(budget)}")
    lines.append(f"corpus: {settings.corpus or 'not saved'}; example database: {db or 'none'}")
    if session.cluster is not None:
        lines.append(f"cluster: {session.cluster.describe()}")
        dashboard = session.cluster.dashboard or "none (a Dask scheduler serves one when bokeh is installed)"
        lines.append(f"dashboard: {dashboard}")
    if settings.coverage:
        lines.append(f"coverage: coverage.py (branches) of the modelled kernel -> {settings.coverage_dir}")
    from fuzzer._engine import ENGINES

    engine = ENGINES[settings.engine]
    lines.append(f"engine: {engine.description}")
    if settings.guide:
        lines.append(f"guidance: {engine.guidance}")
    overrides = sorted(f"{name} ({info.plugin})" for name, info in model.routine_infos.items()
                       if info.override)
    if overrides:
        lines.append(f"routines replaced by plugins: {', '.join(overrides)}")
    for known in session.known:
        how = "reported (--report-known)" if settings.reports(known) else "counted, the search goes on"
        lines.append(f"known finding: {known.title} [{known.signature}] -- {how}")
    lines += [line for result in pm.call("fuzzer_report_header", config=run) for line in result]
    return lines


def summarize(session: Session, outcome: Outcome) -> None:
    """The notes, then the known findings seen, then the summary line; sets the exit code."""
    out = session.out
    for note in session.notes:
        out.write(f"{note}\n")
    titles = {k.signature: k.title for k in session.known}
    seen = outcome.stats.known_met
    if seen:
        what = "; ".join(f"{titles.get(sig, str(sig))} ({n} example{'s' if n != 1 else ''})"
                         for sig, n in seen.items())
        out.write(f"{len(seen)} known finding{'s' if len(seen) != 1 else ''} seen: {what}\n")
    speed = outcome.emulated_steps / outcome.duration if outcome.duration else 0.0
    stats = (f"{outcome.examples:,} examples, {outcome.emulated_steps:,} steps"
             f" ({speed:,.0f} steps/s) in {outcome.duration:.2f}s")
    if outcome.status is Status.FAILED:
        assert outcome.failure is not None
        example = (f" (example {outcome.examples_to_first_failure})"
                   if outcome.examples_to_first_failure is not None else "")
        first = (f", first found after {outcome.time_to_first_failure:.2f}s{example}"
                 if outcome.time_to_first_failure is not None else "")
        failures = [outcome.failure, *outcome.more_failures]
        rule(f"{len(failures)} failed: {'; '.join(f.message for f in failures)} -- {stats}{first}", out)
        session.exitcode = ExitCode.FAILED
    elif outcome.status is Status.INTERRUPTED:
        found = ", 1 failure found (not shrunk)" if outcome.failure is not None else ""
        rule(f"interrupted{found}: {stats}", out)
        session.exitcode = ExitCode.INTERRUPTED
    else:
        rule(f"{outcome.examples:,} passed, 0 failed: {stats}", out)
        session.exitcode = ExitCode.OK


class StatsReporter:
    """``--stats PATH`` (JSON lines over time) and ``--stats-plot PATH``."""

    def __init__(self) -> None:
        self.log: StatsLog | None = None

    @hookimpl
    def fuzzer_session_start(self, session: Session) -> None:
        self.log = StatsLog(session.settings.stats, len(session.model.routine_infos))

    @hookimpl
    def fuzzer_campaign_progress(self, stats: StatsSnapshot, elapsed: float) -> None:
        if self.log is not None:
            self.log.sample(stats, elapsed)

    @hookimpl
    def fuzzer_session_finish(self, session: Session, outcome: Outcome) -> None:
        log, settings = self.log, session.settings
        if log is None:
            return
        try:
            log.end(outcome.duration, outcome.examples, outcome.emulated_steps,
                    outcome.distinct_failures, len(outcome.routines), pairs=outcome.stats.pairs)
        finally:
            log.close()
        if outcome.status is Status.ERROR:
            return
        if settings.stats:
            session.notes.append(f"statistics written to {settings.stats} ({len(log.samples)} samples)")
        if settings.stats_plot:
            run = session.model.run
            workers = session.cluster.workers if session.cluster is not None else 1
            log.plot(settings.stats_plot, f"{run.kernel}, {run.mmu}, seed {settings.seed}"
                     + (f", {workers} workers" if workers > 1 else ""))
            session.notes.append(f"plot of coverage and failures over time written to {settings.stats_plot}")


class CoverageReporter:
    """``--coverage``: coverage.py over the modelled kernel while the campaign runs (a
    cluster's shards measure their own; their data is merged here), then its report."""

    def __init__(self) -> None:
        self.cov: CoverageSession | None = None

    @hookimpl
    def fuzzer_session_start(self, session: Session) -> None:
        settings = session.settings
        if not settings.coverage:
            return
        self.cov = CoverageSession(settings.coverage_dir, coverage_include(session))
        if session.cluster is None:
            self.cov.start()

    @hookimpl
    def fuzzer_session_finish(self, session: Session, outcome: Outcome) -> None:
        if self.cov is None:
            return
        if session.cluster is None:
            self.cov.stop()
        else:
            self.cov.add(session.measured)
        if outcome.status is not Status.ERROR:
            session.notes[:0] = coverage_notes(self.cov.report(session.model.routine_infos))


def coverage_include(session: Session) -> list[str]:
    model = session.model
    return measured_files(model.routine_infos.values(), model.plugin_modules)


def coverage_notes(summary: CoverageSummary) -> list[str]:
    reached = summary.routines - len(summary.unreached)
    lines = [f"coverage: {summary.percent:.1f}% of the modelled kernel's statements and branches;"
             f" {reached} of {summary.routines} modelled routines reached",
             f"coverage report: {summary.html} (data: {summary.directory / '.coverage'})"]
    if summary.unreached:
        lines.append(f"never reached ({len(summary.unreached)}): {', '.join(summary.unreached)}")
    else:
        lines.append("never reached: none")
    return lines


class JsonReporter:
    """``--report-json PATH``: the failure report as JSON."""

    @hookimpl
    def fuzzer_session_finish(self, session: Session, outcome: Outcome) -> None:
        path = session.settings.report_json
        if path is None or outcome.failure is None or outcome.status is Status.ERROR:
            return
        write_json(path, failure_json(outcome.failure, session.model, outcome.steps))
        if outcome.status is Status.FAILED:
            session.out.write(f"report written to {path}\n")


class CorpusReporter:
    """Saves a failure's minimal reproduction to ``--corpus DIR`` (unless one shows its bug)."""

    @hookimpl
    def fuzzer_session_finish(self, session: Session, outcome: Outcome) -> None:
        if session.settings.corpus is None or outcome.status is not Status.FAILED or outcome.failure is None:
            return
        self.save(session, outcome.failure, outcome.steps)
        for other in outcome.more_failures:
            self.save(session, other, other.steps)

    @staticmethod
    def save(session: Session, failure: Finding, steps: tuple[Step, ...]) -> None:
        corpus = session.settings.corpus
        assert corpus is not None
        run = session.model.run
        entry = Entry.from_failure(kernel=run.kernel, mmu=run.mmu, cpus=run.cpus,
                                   plugins=session.settings.plugins, config=run.config.values,
                                   options=run.options, failure=failure, steps=steps)
        try:
            saved = save(entry, corpus)
        except OSError as exc:
            session.err.write(f"WARNING: reproduction not saved to the corpus: {exc}\n")
            return
        for skipped in saved.skipped:
            session.err.write(f"WARNING: not a usable corpus entry (ignored): {skipped}\n")
        if saved.new:
            session.out.write(f"reproduction saved to {saved.path}"
                              f" (replay: python -m fuzzer replay {saved.path})\n")
        else:
            session.out.write(f"already in the corpus: {saved.path} shows the same failure\n")


#: The session plugins ``run`` registers, by name; pluggy calls the last registered first,
#: so at the end the terminal wraps the JSON report, the corpus, coverage and statistics.
SESSION_PLUGINS = (("stats", StatsReporter), ("coverage", CoverageReporter), ("corpus", CorpusReporter),
                   ("report_json", JsonReporter), ("terminal", Terminal))
