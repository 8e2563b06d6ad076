"""The model of one run: every plugin's contribution, collected and resolved once."""

from __future__ import annotations

import traceback
from collections.abc import Callable, Iterable
from types import TracebackType
from typing import TYPE_CHECKING, Any

import attrs

from fuzzer._config import KernelVersion, RunConfig, VersionChain
from fuzzer._errors import KernelWarning, Signature, UsageError
from fuzzer._routines import RoutineInfo, RoutineTable, resolve
from fuzzer._specs import Initcall, InterruptSource, Invariant, MmuSpec, Operation

if TYPE_CHECKING:
    from fuzzer._known import KnownFinding
    from fuzzer._plugins import FuzzerPluginManager


@attrs.define(eq=False)
class Model:
    """What every machine of a run is built from. Resolved once; read on every step."""

    run: RunConfig
    version: KernelVersion
    chain: VersionChain
    """The version and those it is based on, nearest first: what every version-dependent
    part of the model (routines, predicates, cited lines) resolves along."""
    mmu: MmuSpec
    routines: RoutineTable
    routine_infos: dict[str, RoutineInfo]
    operations: tuple[Operation, ...]
    interrupts: tuple[InterruptSource, ...]
    step_invariants: tuple[Invariant, ...]
    end_invariants: tuple[Invariant, ...]
    initcalls: tuple[Initcall, ...]
    machine_setup: Callable[..., Any] | None
    """``fuzzer_machine_setup`` through pluggy (plugins of this architecture), blaming a
    plugin that raises; None when no plugin implements it (resolved once per run)."""
    machine_setup_plugins: tuple[str, ...]
    """The plugins whose ``fuzzer_machine_setup`` a machine runs."""
    plugin_modules: dict[str, str] = attrs.Factory(dict)
    """Module name -> plugin name, to attribute a Python exception to a plugin."""
    known: tuple[KnownFinding, ...] = ()
    """The known findings plugins declare for this kernel (``fuzzer_known_findings``):
    ``run`` and :func:`fuzzer.testing.search` count them and search past them by default."""
    warn_past: frozenset[Signature] = frozenset()
    """The WARNINGs a machine prints and goes on from under ``--panic-on-warn=known``
    (:meth:`fuzzer.Machine.warn`): by default the known findings' WARNINGs; a campaign's
    own known set (:meth:`searching`), or a corpus entry's recorded ones, when given."""

    def searching(self, known: Iterable[Signature]) -> Model:
        """This model for a search that counts ``known`` and goes past them: its machines
        go on after exactly those WARNINGs (none with ``--report-known``)."""
        warn_past = frozenset(s for s in known if s.kind == KernelWarning.kind)
        return self if warn_past == self.warn_past else attrs.evolve(self, warn_past=warn_past)

    def operation(self, name: str) -> Operation:
        for op in self.operations:
            if op.name == name:
                return op
        known = ", ".join(o.name for o in self.operations) or "none"
        raise UsageError(f"unknown operation {name!r}; loaded operations: {known}")

    def interrupt(self, name: str) -> InterruptSource:
        for src in self.interrupts:
            if src.name == name:
                return src
        known = ", ".join(s.name for s in self.interrupts) or "none"
        raise UsageError(f"unknown interrupt source {name!r}; loaded sources: {known}")

    def plugin_of_traceback(self, tb: TracebackType | None) -> tuple[str, str] | None:
        """The plugin whose code raised, and where; None when the innermost model
        frame is the fuzzer's own (an internal error)."""
        for frame, lineno in reversed(list(traceback.walk_tb(tb))):
            mod = frame.f_globals.get("__name__", "")
            plugin = self.plugin_modules.get(mod) or self._package_plugin(mod)
            if plugin is not None:
                fn = frame.f_code.co_name
                return plugin, f"{fn} ({frame.f_code.co_filename}:{lineno})"
            if mod == "fuzzer" or mod.startswith("fuzzer."):
                return None
        return None

    def _package_plugin(self, mod: str) -> str | None:
        """The plugin a submodule belongs to (``pkg.ops`` of plugin module ``pkg``)."""
        for pmod, plugin in self.plugin_modules.items():
            if mod.startswith(pmod + "."):
                return plugin
        return None

    @classmethod
    def build(cls, pm: FuzzerPluginManager, run: RunConfig) -> Model:
        """Collect every plugin's contribution for ``run``; errors name the plugin."""
        mmu = pm.mmus()[run.mmu]
        versions = {v.name: v for v in pm.kernel_versions()}
        version = versions[run.kernel]
        if not version.arch == mmu.arch == run.arch:
            raise UsageError(
                f"kernel {run.kernel} ({version.arch}) cannot run on MMU {run.mmu} ({mmu.arch})"
                f" with arch {run.arch}; --mmu {run.mmu} runs:"
                f" {', '.join(v.name for v in pm.kernel_versions(mmu.arch)) or 'none'}"
            )
        routines = [(pm.owner_of(fn), fn) for result in pm.call("fuzzer_routines", config=run)
                    for fn in result]
        chain = VersionChain.of(run.kernel, {name: v.based_on for name, v in versions.items()})
        table, infos = resolve(chain, routines)

        def collect(hook: str) -> list[Any]:
            return [item for result in pm.call(hook, config=run) for item in result]

        ops: list[Operation] = collect("fuzzer_operations")
        irqs: list[InterruptSource] = collect("fuzzer_interrupt_sources")
        invs: list[Invariant] = collect("fuzzer_invariants")
        inits: list[Initcall] = collect("fuzzer_initcalls")
        _unique("operation", [o.name for o in ops])
        _unique("interrupt source", [s.name for s in irqs])
        _unique("invariant", [i.name for i in invs])
        for inv in invs:
            if inv.when not in ("step", "end"):
                raise UsageError(f"invariant {inv.name!r}: when must be 'step' or 'end'")
        levels = {"start_kernel": -1, "early": 0, "late": 2}
        inits.sort(key=lambda i: levels.get(i.level, 1))
        setup_caller = pm.caller("fuzzer_machine_setup", run.arch)
        setup_plugins = tuple(pm.plugin_name(impl.plugin) for impl in reversed(setup_caller.get_hookimpls()))
        return cls(
            run=run,
            version=version,
            chain=chain,
            mmu=mmu,
            routines=table,
            routine_infos=infos,
            operations=tuple(ops),
            interrupts=tuple(irqs),
            step_invariants=tuple(i for i in invs if i.when == "step"),
            end_invariants=tuple(i for i in invs if i.when == "end"),
            initcalls=tuple(inits),
            machine_setup=_setup_call(pm, setup_caller) if setup_plugins else None,
            machine_setup_plugins=setup_plugins,
            plugin_modules=pm.plugin_modules(),
            known=(known := pm.known_findings(run)),
            warn_past=frozenset(k.signature for k in known if k.signature.kind == KernelWarning.kind),
        )


def _setup_call(pm: FuzzerPluginManager, caller: Any) -> Callable[..., Any]:
    from fuzzer._plugins import call_blamed

    def setup(machine: Any) -> None:
        call_blamed(caller, "fuzzer_machine_setup", pm.plugin_name, pm.is_core, machine=machine)

    return setup


def _unique(what: str, names: Iterable[str]) -> None:
    seen: set[str] = set()
    for n in names:
        if n in seen:
            raise UsageError(f"{what} {n!r} is defined by two plugins")
        seen.add(n)
