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
    import argparse

    from fuzzer._config import ConfigOption, KernelVersion, RunConfig
    from fuzzer._export import Action as ExportAction
    from fuzzer._machine import Machine
    from fuzzer._routines import RoutineFn
    from fuzzer._specs import Initcall, InterruptSource, Invariant, MmuSpec, Operation

hookspec = pluggy.HookspecMarker("fuzzer")

# ---------------------------------------------------------------------------
# Command line and configuration: called once, before the first machine.
# ---------------------------------------------------------------------------


@hookspec(historic=True)
def fuzzer_addoption(parser: argparse._ArgumentGroup, pluginmanager: Any) -> None:
    """Add command-line options to ``python -m fuzzer run``.

    Called once per plugin while the ``run`` command line is built; ``parser``
    is an argparse group titled after the plugin. Historic: a plugin
    registered late still gets the call. Returns nothing. Option values reach
    the model as ``RunConfig.options[dest]``.
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
