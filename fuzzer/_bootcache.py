"""Booted machines, kept: an example that boots the way an earlier one did starts from a copy.

A boot is a pure function of the model and the boot step (its seed and draws): CPU 0 runs
``start_kernel`` and the initcalls to completion, alone, with no decision taken on the way
(:meth:`fuzzer._machine.Machine.boot`). It is more than half of an example's emulated steps
(the optprobes detour alone is ~435), and the walk boots the same way again and again: every
rescheduled or extended example replays a kept example's boot step, the shrinker replays one
reproduction's boot hundreds of times. So the state a boot leaves is pickled, the second
time a boot step is seen on a model, and loaded into the machine from the third time on.
The seed only seeds the kernel's random generator (:meth:`~fuzzer._machine.Machine.random_below`
takes a step's chosen draws first): a boot that drew nothing from the generator (Hash and
v6.1 draw nothing at boot; v6.12 Radix draws its patching address, which a chosen draw
supplies) is kept by the draws it consumed, and any seed with those draws first loads it,
with its own generator and the draws left.

What makes a copy the same machine (each copy kept is checked against the real boot it
copies, with :func:`fuzzer._snapshot.snapshot`; the cache is off for a model where one is not):

* everything the boot can change is in the machine's ``__dict__`` (CPUs, memory, every mm,
  the kernel's and the plugins' state, the random generator, the step count, the kernel log,
  the example's record); what is the model's (the model, its routine table, config, layout)
  is shared, never copied;
* closures (the hooks plugins register in ``fuzzer_machine_setup``) are rebuilt around the
  copied objects they captured, so they act on the copy;
* no state keys a dict by ``id()`` of a copied object (the page-table ledger keys by the mm);
* the CPU objects stay the fresh machine's, their state copied in: an engine that took
  ``m.cpus[n]`` before the boot step (the interleaving feedback's holds) has the machine's CPU.

Only when nothing outside the machine watches the boot: no ``observe_steps`` observer
registered before it, and a routine recorder (``run``'s coverage statistics and guidance)
gets the routines the boot entered added to its example, as the boot itself would have.
The interleaving feedback's access log, attached before the boot, gets the accesses the
boot noted. A boot that fails is never kept (it fails again, the same way, each time).
A machine opts in (``Machine(model, boot_cache=True)``): the engines' examples, replays and
shrinking do; a test that changes a machine before booting it does not.
"""

from __future__ import annotations

import collections
import io
import pickle
import random
import sys
import threading
import types
from typing import TYPE_CHECKING, Any

import attrs

from fuzzer._snapshot import snapshot

if TYPE_CHECKING:
    from fuzzer._machine import Machine
    from fuzzer._model import Model

#: Off: every boot runs (``bench/run.py`` measures the raw emulator so).
ENABLED = True
#: Boot steps kept per model, and models kept (least recently used dropped first).
ENTRIES = 256
MODELS = 4
#: Where a copy keeps its CPUs' state: each CPU object stays the fresh machine's own (what
#: an engine took from ``m.cpus`` before the boot step still names the machine's CPU).
_CPUS = "\0cpus"
#: Machine attributes that are the model's, equal in every machine of it: never copied.
STATIC = frozenset({"model", "run", "config", "version", "k", "layout", "nr_wp_slots",
                    "max_steps", "_step_checks", "_step_fns", "_end_checks"})


@attrs.define
class Entry:
    data: bytes
    shared: list[Any]
    """Objects the pickle refers to and does not copy (code objects, module globals)."""
    entered: frozenset[str]
    """The routines the boot entered (for a routine recorder)."""


@attrs.define
class ModelCache:
    model: Model
    entries: collections.OrderedDict[Any, Entry | None] = attrs.Factory(collections.OrderedDict)
    """Boot key -> the booted state; None for a boot seen once (kept the second time)."""
    usable: bool | None = None
    """Whether a copy is the same machine on this model (None: not checked yet)."""
    prefixes: set[int] = attrs.Factory(set)
    """How many chosen draws the boots that took no draw from their seed consumed."""


@attrs.frozen
class Boot:
    """A boot to run: its step's seed and draws, and what else its state depends on."""

    seed: int
    draws: tuple[int, ...]
    rest: tuple[Any, ...]
    """The step bound and the kind of access log attached."""

    def exact(self) -> Any:
        return ("seed", self.seed, self.draws, self.rest)

    def drawn(self, k: int) -> Any:
        """The key of a boot that made ``k`` random draws, all from the step's ``draws``: the
        seed only seeds the generator, which such a boot never read."""
        return ("draws", self.draws[:k], self.rest)


_MODELS: collections.OrderedDict[int, ModelCache] = collections.OrderedDict()
_LOCK = threading.RLock()


def clear() -> None:
    with _LOCK:
        _MODELS.clear()


def key(m: Machine, seed: int, draws: tuple[int, ...]) -> Boot | None:
    """The boot of ``m`` so, or None when this boot cannot come from the cache."""
    if not (ENABLED and m.boot_cache) or m.steps or m.nsteps or m._observers:
        return None
    return Boot(seed, draws, (m.max_steps, type(m.accesses).__qualname__))


def _cache(m: Machine) -> ModelCache:
    mc = _MODELS.get(id(m.model))
    if mc is None or mc.model is not m.model:
        mc = _MODELS[id(m.model)] = ModelCache(m.model)
        while len(_MODELS) > MODELS:
            _MODELS.popitem(last=False)
    _MODELS.move_to_end(id(m.model))
    return mc


def restore(m: Machine, boot: Boot) -> bool:
    """Load ``boot`` into the fresh machine ``m`` if it is kept; True if it was."""
    with _LOCK:
        entry, drawn = _find(_cache(m), boot)
    if entry is None:
        return False
    _load(m, entry)
    if drawn is not None:
        # The same boot but for the step's seed and the draws it did not make.
        m.steps[0] = attrs.evolve(m.steps[0], seed=boot.seed, draws=boot.draws)
        m.rng = random.Random(boot.seed)
        m.draws = list(boot.draws[drawn:])
    return True


def _find(mc: ModelCache, boot: Boot) -> tuple[Entry | None, int | None]:
    """The kept copy of ``boot``, and how many draws it consumed when kept by them."""
    if mc.usable is False:
        return None, None
    for k in (None, *sorted(mc.prefixes)):
        if k is not None and k > len(boot.draws):
            continue
        key = boot.exact() if k is None else boot.drawn(k)
        entry = mc.entries.get(key)
        if entry is not None:
            mc.entries.move_to_end(key)
            return entry, k
    return None, None


def boot_recorded(m: Machine, boot: Boot, entered: frozenset[str]) -> None:
    """``m`` just booted as ``boot`` (entering ``entered``): note it, keep it the second time.

    A boot that drew nothing from its seed's generator is kept by the draws it consumed,
    whatever its seed: the generator is all the seed makes."""
    with _LOCK:  # engines on threads (a Dask worker with several) share the cache
        _recorded(_cache(m), m, boot, entered)


def _recorded(mc: ModelCache, m: Machine, boot: Boot, entered: frozenset[str]) -> None:
    if mc.usable is False:
        return
    consumed = len(boot.draws) - len(m.draws)
    if m.rng.getstate() == random.Random(boot.seed).getstate():
        k = boot.drawn(consumed)
        mc.prefixes.add(consumed)
    else:
        k = boot.exact()
    if k not in mc.entries:
        mc.entries[k] = None
    elif mc.entries[k] is None:
        entry = _dump(m, entered)
        if entry is None or not _same(m, entry):  # every copy kept is checked (few are)
            mc.usable = False
            mc.entries.clear()
            return
        mc.usable = True
        mc.entries[k] = entry
    while len(mc.entries) > ENTRIES:
        mc.entries.popitem(last=False)


def _same(m: Machine, entry: Entry) -> bool:
    """A copy of ``m`` loaded into a fresh machine is ``m``, state for state."""
    other = type(m)(m.model, max_steps=m.max_steps)
    log = other.accesses = _fresh_log(m, other)
    record = ("steps", "nsteps", "boot_steps", "log", "stores", "draws", "booted")
    cpus = list(other.cpus)
    _load(other, entry, record=False)
    return snapshot(other) == snapshot(m) and other.accesses is log and all(
        a is b for a, b in zip(other.cpus, cpus, strict=True)) and all(
        getattr(other, f) == getattr(m, f) for f in record) and _log_state(
        other.accesses) == _log_state(m.accesses)


def _fresh_log(m: Machine, other: Machine) -> Any:
    if m.accesses is None:
        return None
    return type(m.accesses)(other)


def _log_state(log: Any) -> Any:
    if log is None:
        return None
    return [(f.name, getattr(log, f.name)) for f in attrs.fields(type(log)) if f.name != "m"]


# -- the copy -------------------------------------------------------------------------------


def _function(code: types.CodeType, globals_: dict[str, Any], name: str, defaults: Any,
              cells: tuple[Any, ...], kwdefaults: Any, attrs_: dict[str, Any]) -> Any:
    fn = types.FunctionType(code, globals_, name, defaults, cells)
    fn.__kwdefaults__ = kwdefaults
    fn.__dict__.update(attrs_)
    return fn


def _cell(*contents: Any) -> Any:
    return types.CellType(*contents)


class _Pickler(pickle.Pickler):
    def __init__(self, file: io.BytesIO, m: Machine, shared: list[Any]) -> None:
        super().__init__(file, protocol=pickle.HIGHEST_PROTOCOL)
        self.tokens: dict[int, Any] = {id(m): ("machine",)}
        for i, cpu in enumerate(m.cpus):
            self.tokens[id(cpu)] = ("cpu", i)
        for name in STATIC:
            self.tokens.setdefault(id(getattr(m, name)), ("static", name))
        for group in ("operations", "interrupts", "step_invariants", "end_invariants",
                      "initcalls"):
            for i, item in enumerate(getattr(m.model, group)):
                self.tokens.setdefault(id(item), ("model", group, i))
        for name, fn in vars(m.k).items():  # the routine table's entries (a recorder's wrappers)
            self.tokens.setdefault(id(fn), ("routine", name))
        self.shared = shared
        self.index: dict[int, int] = {}

    def persistent_id(self, obj: Any) -> Any:
        token = self.tokens.get(id(obj))
        if token is not None:
            return token
        if isinstance(obj, types.CodeType | types.ModuleType) or (
                type(obj) is dict and obj.get("__name__") is not None and "__builtins__" in obj):
            i = self.index.get(id(obj))
            if i is None:
                i = self.index[id(obj)] = len(self.shared)
                self.shared.append(obj)
            return ("shared", i)
        return None

    def reducer_override(self, obj: Any) -> Any:
        if type(obj) is types.FunctionType and (obj.__closure__ or getattr(
                sys.modules.get(obj.__module__), obj.__qualname__, None) is not obj):
            return (_function, (obj.__code__, obj.__globals__, obj.__name__, obj.__defaults__,
                                obj.__closure__ or (), obj.__kwdefaults__, dict(obj.__dict__)))
        if type(obj) is types.CellType:
            try:
                return (_cell, (obj.cell_contents,))
            except ValueError:
                return (_cell, ())
        return NotImplemented


class _Unpickler(pickle.Unpickler):
    def __init__(self, file: io.BytesIO, m: Machine, shared: list[Any]) -> None:
        super().__init__(file)
        self.m = m
        self.shared = shared

    def persistent_load(self, pid: Any) -> Any:
        kind = pid[0]
        if kind == "machine":
            return self.m
        if kind == "cpu":
            return self.m.cpus[pid[1]]
        if kind == "static":
            return getattr(self.m, pid[1])
        if kind == "routine":
            return getattr(self.m.k, pid[1])
        if kind == "model":
            return getattr(self.m.model, pid[1])[pid[2]]
        return self.shared[pid[1]]


def _dump(m: Machine, entered: frozenset[str]) -> Entry | None:
    state = {k: v for k, v in vars(m).items() if k not in STATIC}
    state[_CPUS] = [vars(c) for c in m.cpus]
    shared: list[Any] = []
    f = io.BytesIO()
    try:
        _Pickler(f, m, shared).dump(state)
    except (TypeError, AttributeError, pickle.PicklingError, RecursionError):
        return None  # something the boot left cannot be copied (a generator): never cache
    return Entry(f.getvalue(), shared, entered)


def _load(m: Machine, entry: Entry, record: bool = True) -> None:
    """Make the fresh machine ``m`` the booted one; keep its access log object, filled."""
    log = m.accesses
    state = _Unpickler(io.BytesIO(entry.data), m, entry.shared).load()
    for cpu, copied in zip(m.cpus, state.pop(_CPUS), strict=True):
        vars(cpu).clear()
        vars(cpu).update(copied)
    vars(m).update(state)
    copied = m.accesses
    if log is not None and copied is not None and copied is not log:
        for f in attrs.fields(type(log)):
            if f.name != "m":
                setattr(log, f.name, getattr(copied, f.name))
        m.accesses = log
    entered = getattr(m.k, "_entered", None)
    if entered is not None and record:
        entered |= entry.entered
