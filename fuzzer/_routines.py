"""The routine registry: modelled kernel functions by name, replaceable by plugins."""

from __future__ import annotations

from collections.abc import Callable, Generator, Iterable
from types import CodeType
from typing import TYPE_CHECKING, Any

import attrs

from fuzzer._errors import Frame, UsageError

if TYPE_CHECKING:
    from fuzzer._config import VersionChain

#: A modelled kernel routine: a generator function whose every ``yield`` is a
#: point where real hardware could interleave. It is called with the CPU that
#: runs it first; ``yield from`` calls another routine.
RoutineFn = Callable[..., Generator[Any, None, Any]]


@attrs.frozen
class RoutineInfo:
    """What a modelled routine mirrors in the kernel."""

    name: str
    """The kernel function name; the registry key (``patch_instruction``)."""
    file: str
    """The kernel source file it follows (``arch/powerpc/lib/code-patching.c``)."""
    versions: frozenset[str] | None
    """Kernel versions it models; ``None`` for every version."""
    override: bool
    """True when it replaces the default of the same name (an injected variant)."""
    inlined: bool
    """True where the kernel inlines it, so the real oops trace skips it."""
    symbol: str
    """The symbol shown in call traces (``radix__pte_update`` for ``pte_update``)."""
    fn: RoutineFn = attrs.field(eq=False, repr=False)
    plugin: str | None = attrs.field(default=None, eq=False)


#: code object -> info, for turning generator frames into a modelled call trace.
_BY_CODE: dict[CodeType, RoutineInfo] = {}
#: code object -> its call-trace frame, made once (a Frame is immutable): the lockdep and
#: interleaving notes look frames up at every lock and shared access.
FRAME_BY_CODE: dict[CodeType, Frame] = {}
#: The same by ``id(code)``, for the walks of the Python stack (the interleaving notes, lockdep,
#: call traces): hashing a code object hashes its constants at every lookup, an id is an int.
#: :data:`_CODES` keeps every registered code object alive, so no other one takes its id.
FRAME_BY_ID: dict[int, Frame] = {}
_CODES: list[CodeType] = []
#: ``id`` of the code of the machine's step entry points (``Machine.advance``, ``.interrupt``,
#: ...; filled in by :mod:`fuzzer._machine`): the engines call them, modelled code never does
#: (routines yield; none steps a CPU or takes a step), so no modelled routine's frame is below
#: one and a walk of the stack for modelled frames may end there.
STEP_ENTRIES: set[int] = set()


def routine(
    name: str,
    file: str,
    *,
    versions: Iterable[str] | None = None,
    override: bool = False,
    inlined: bool = False,
    symbol: str | None = None,
) -> Callable[[RoutineFn], RoutineFn]:
    """Declare a generator function as the model of kernel function ``name``.

    ``versions`` limits it to some kernel versions; ``override=True`` makes it
    replace the default of the same name (how a plugin injects a variant).
    ``symbol`` is the name shown in call traces when it differs from the
    registry name (an MMU's ``radix__pte_update`` implements ``pte_update``).
    """

    def mark(fn: RoutineFn) -> RoutineFn:
        info = RoutineInfo(
            name=name,
            file=file,
            versions=frozenset(versions) if versions is not None else None,
            override=override,
            inlined=inlined,
            symbol=symbol or name,
            fn=fn,
        )
        fn.__fuzzer_routine__ = info  # type: ignore[attr-defined]
        _BY_CODE[fn.__code__] = info
        FRAME_BY_CODE[fn.__code__] = FRAME_BY_ID[id(fn.__code__)] = Frame(
            info.symbol, info.file, info.inlined)
        _CODES.append(fn.__code__)
        return fn

    return mark


def info_of(fn: RoutineFn) -> RoutineInfo:
    try:
        return fn.__fuzzer_routine__  # type: ignore[attr-defined]
    except AttributeError:
        raise TypeError(f"{fn!r} is not declared with @fuzzer.routine") from None


def frame_of_code(code: CodeType) -> Frame | None:
    return FRAME_BY_ID.get(id(code))


class RoutineTable:
    """The routines of one machine, resolved once: ``k.patch_instruction(cpu, ...)``.

    Attribute access is a plain instance lookup, so the per-step path pays
    nothing for the registry.
    """

    _entered: set[str] | None = None
    """A recorder's table: the set its wrappers add each entered routine's name to (a boot
    copied from the boot cache adds the boot's)."""

    def __getattr__(self, name: str) -> Any:
        # Only reached for names that were not resolved.
        raise UsageError(
            f"no modelled routine {name!r} for this kernel version and MMU"
            " (no loaded plugin provides it)"
        )


def resolve(
    chain: VersionChain,
    candidates: Iterable[tuple[str, RoutineFn]],
) -> tuple[RoutineTable, dict[str, RoutineInfo]]:
    """Pick, for each routine name, the definition that applies to ``version``.

    ``candidates`` are ``(plugin name, function)`` pairs from every plugin's
    ``fuzzer_routines``. A version-specific definition beats an every-version
    one; a version without its own definition falls back along ``based_on``.
    An ``override`` beats the default. Defaults (or overrides) of one routine
    from two plugins, or two at the same rank, are an error naming both.
    """
    by_name: dict[str, list[RoutineInfo]] = {}
    for plugin, fn in candidates:
        info = attrs.evolve(info_of(fn), plugin=plugin)
        by_name.setdefault(info.name, []).append(info)

    version = chain.name

    table = RoutineTable()
    chosen: dict[str, RoutineInfo] = {}
    for name, infos in by_name.items():
        best: RoutineInfo | None = None
        best_rank: tuple[int, int] | None = None
        owners: dict[bool, RoutineInfo] = {}
        for info in infos:
            if info.versions is None:
                vrank = len(chain.names)
            else:
                hits = [i for i, c in enumerate(chain.names) if c in info.versions]
                if not hits:
                    continue
                vrank = hits[0]
            # Each kind of definition (default, override) of one routine belongs to one
            # plugin: another plugin's default would otherwise be shadowed silently.
            other = owners.setdefault(info.override, info)
            if other.plugin != info.plugin:
                kind = "overridden" if info.override else "defined"
                raise UsageError(
                    f"routine {name!r} is {kind} by two plugins for kernel {version}:"
                    f" {other.plugin!r} and {info.plugin!r}"
                    + ("" if info.override else " (use override=True to replace a routine)")
                )
            rank = (0 if info.override else 1, vrank)
            if best_rank is None or rank < best_rank:
                best, best_rank = info, rank
            elif rank == best_rank:
                assert best is not None
                raise UsageError(
                    f"routine {name!r} is defined twice for kernel {version}: by plugin"
                    f" {best.plugin!r} and by plugin {info.plugin!r}"
                    " (use override=True to replace a routine)"
                )
        if best is not None:
            setattr(table, name, best.fn)
            chosen[name] = best
    return table, chosen
