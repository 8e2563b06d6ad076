"""Hook specifications: everything a plugin can do to the fuzzer, in one place.

Every hook is named ``fuzzer_<area>_<event>`` or ``fuzzer_<thing>``. A plugin
implements a hook by defining a function of the same name (optionally marked
with :data:`fuzzer.hookimpl`); a ``fuzzer_`` function that matches no hook
here is an error naming the plugin, never silently ignored.

A plugin module that models one architecture sets ``FUZZER_ARCH = "x86"``
(say): its hooks that take ``config`` or ``machine`` are then not called for a
run of another architecture, so they need no check of their own. The
listing hooks (versions, MMUs, config options, command-line options) are
always called.

Hooks that the emulator needs on every step are *not* called per step: their
results are collected once per run (lists of invariants, operations,
interrupt sources, resolved routines) so the hot path pays nothing for them.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

import pluggy

if TYPE_CHECKING:
    from fuzzer._config import ConfigOption, KernelVersion, RunConfig
    from fuzzer._engine.records import Finding, Outcome, StatsSnapshot
    from fuzzer._errors import PluginError
    from fuzzer._export import Action as ExportAction
    from fuzzer._known import KnownFinding
    from fuzzer._machine import Machine
    from fuzzer._options import OptionGroup
    from fuzzer._routines import RoutineFn
    from fuzzer._session import Session
    from fuzzer._specs import Initcall, InterruptSource, Invariant, MmuSpec, Operation

hookspec = pluggy.HookspecMarker("fuzzer")

# ---------------------------------------------------------------------------
# Command line and configuration: called once, before the first machine.
# ---------------------------------------------------------------------------


@hookspec
def fuzzer_addoption(parser: OptionGroup, pluginmanager: Any) -> None:
    """Declare command-line options of ``python -m fuzzer run``.

    Called once per plugin, before the command line is parsed, with only that
    plugin's implementations; ``parser`` is the plugin's own option group
    (titled after it in ``run --help``): call
    ``parser.addoption("--my-option", type=int, default=3, metavar="N", help=...)``
    as with pytest's ``Parser.addoption``. Returns nothing. The values reach the
    model as ``config.option(dest)``, whether they came from the command line, a
    corpus entry or :func:`fuzzer.testing.make_model`'s ``options``.
    """


@hookspec
def fuzzer_addconfig() -> Iterable[ConfigOption] | None:
    """Return the kernel config options (``CONFIG_*``) this plugin models.

    Results from all plugins are concatenated; defining the same name twice
    is a usage error. ``--config CONFIG_X=VALUE`` accepts exactly these.
    """


@hookspec
def fuzzer_kernel_versions() -> Iterable[KernelVersion] | None:
    """Return the kernel versions this plugin models.

    Results are concatenated; the newest (highest ``order``) is the default
    of ``--kernel``. A version may name ``based_on``: routines, version predicates
    (``machine.version.is_``) and cited lines (``machine.version.lookup``) it does not
    define itself are taken from that version.
    """


@hookspec
def fuzzer_mmus() -> Iterable[MmuSpec] | None:
    """Return the MMU models this plugin provides (``--mmu NAME``).

    Results are concatenated; two plugins defining one MMU name is an error.
    """


@hookspec
def fuzzer_configure(config: RunConfig) -> None:
    """Validate the run's configuration once options are parsed.

    Raise :class:`fuzzer.UsageError` to reject a combination (printed as one
    line, exit code 4). Called for every plugin; return value ignored.
    """


@hookspec
def fuzzer_report_header(config: RunConfig) -> Iterable[str] | None:
    """Return lines to print under the run's header. Results are concatenated."""


@hookspec
def fuzzer_known_findings(config: RunConfig) -> Iterable[KnownFinding] | None:
    """Return failures known on unmodified kernels (:class:`fuzzer.KnownFinding`).

    Results are concatenated; those whose ``kernels`` (or an ancestor of the
    run's kernel along ``based_on``) include the run's kernel apply. The run
    header names them; an example failing with one's signature is counted and
    the search goes on (the exit code does not change), unless ``run
    --report-known`` asks to report them as ordinary findings.
    """


# ---------------------------------------------------------------------------
# The model: collected once per run, then used by every machine.
# ---------------------------------------------------------------------------


@hookspec
def fuzzer_routines(config: RunConfig) -> Iterable[RoutineFn] | None:
    """Return modelled kernel routines (functions declared with ``@fuzzer.routine``).

    Return only routines that apply to ``config`` (an MMU plugin returns
    nothing when another MMU is selected). All results are merged into one
    table by kernel function name: a version-specific definition beats an
    every-version one, and ``override=True`` beats the default, which is how
    a plugin models another kernel version or injects a suspected bug. Two
    definitions at the same rank are an error naming both plugins.
    """


@hookspec
def fuzzer_operations(config: RunConfig) -> Iterable[Operation] | None:
    """Return the operations a CPU can start (each a rule of the state machine).

    Results are concatenated; names must be unique.
    """


@hookspec
def fuzzer_interrupt_sources(config: RunConfig) -> Iterable[InterruptSource] | None:
    """Return interrupt sources that can arrive on a CPU between steps.

    Results are concatenated; names must be unique.
    """


@hookspec
def fuzzer_invariants(config: RunConfig) -> Iterable[Invariant] | None:
    """Return properties a correct kernel keeps, checked after every step or at the end.

    Results are concatenated. A broken invariant is a kernel failure.
    """


@hookspec
def fuzzer_initcalls(config: RunConfig) -> Iterable[Initcall] | None:
    """Return boot-time initcalls, run by the modelled ``kernel_init`` on CPU 0.

    Results are concatenated and run by level (``early`` first), then in
    plugin registration order.
    """


# ---------------------------------------------------------------------------
# Each machine: called once per machine (once per example), never per step.
# ---------------------------------------------------------------------------


@hookspec
def fuzzer_machine_setup(machine: Machine) -> None:
    """Attach this plugin's own state to a new machine (``machine.attach(name, obj)``).

    Called after the CPUs, memory and the MMU exist and before boot. Return
    value ignored.
    """


# ---------------------------------------------------------------------------
# The campaign's lifecycle: a ``run`` session. The progress line, --stats,
# --coverage, --report-json and the corpus are built-in plugins on these hooks
# (fuzzer._reporters); a third-party plugin adds its own output the same way.
# Resolved once per session: an engine does not call a hook nobody implements.
# ---------------------------------------------------------------------------


@hookspec
def fuzzer_session_start(session: Session) -> None:
    """The run's settings are checked and its model built; the search is about to start.

    ``session`` holds ``settings``, ``model``, ``pluginmanager``, the output
    streams ``out``/``err``, the ``known`` findings, and ``notes``: lines
    printed before the final summary. Return value ignored.
    """


@hookspec
def fuzzer_session_finish(session: Session, outcome: Outcome) -> None:
    """The campaign ended with ``outcome`` (status, the shrunk finding and its steps,
    statistics). Called for every status; on ``error`` the error is reported after it.

    Write outputs here, and append one-line messages to ``session.notes``; the
    built-in terminal reporter is a wrapper that prints the failure report
    before and the notes and summary after the other implementations.
    """


@hookspec
def fuzzer_campaign_progress(session: Session, stats: StatsSnapshot, elapsed: float) -> None:
    """Statistics so far (frozen), about five times a second, and ``elapsed`` seconds.

    With ``--workers``, called in the main process with every worker's merged statistics.
    """


@hookspec
def fuzzer_example_start(session: Session) -> None:
    """An example is about to run (in the process that runs it; not with ``--workers``)."""


@hookspec
def fuzzer_example_finish(session: Session, machine: Machine | None,
                          failure: Finding | PluginError | None) -> None:
    """An example ended: the machine it ran (None if it could not be built) and its
    failure, if any (a known finding included). Not called with ``--workers``."""


@hookspec
def fuzzer_failure_found(session: Session, failure: Finding | PluginError, worker: int | None) -> None:
    """The first failing example that is not a known finding, before shrinking.

    ``worker`` is the worker process that found it (``--workers``), else None.
    """


@hookspec
def fuzzer_failure_shrunk(session: Session, failure: Finding) -> None:
    """The failure, shrunk and replay-verified: ``failure.steps`` is the minimal reproduction."""


# ---------------------------------------------------------------------------
# Export to a real kernel: ``python -m fuzzer export``.
# ---------------------------------------------------------------------------


@hookspec(firstresult=True)
def fuzzer_export_operation(name: str, args: Mapping[str, Any]) -> ExportAction | None:
    """Say what a real kernel runs for one of this plugin's operations.

    ``name`` is the operation (``kprobes.register``), ``args`` its recorded
    arguments. Return a :class:`fuzzer.ExportAction` (shell commands, C
    statements against the exported init's helpers, and a note where the
    equivalent is approximate), or None for an operation that is not yours.
    First non-None wins; operations nobody answers fall back to the built-in
    table, and are listed in the program's header as having no real
    equivalent when that does not know them either.
    """
