"""A complete, identity-free encoding of a machine's state, for ``check``'s pruning.

:func:`snapshot` walks everything a later step of the machine can read -- memory, the
kernel's globals and every plugin's state (``Machine.state``), every mm and its page
tables, the allocators' cursors, the kernel's random generator, each CPU's registers,
TLB, MMU state, per-CPU variables and the stack of modelled routines it is in (each
generator's position and every local) -- and returns a hashable value. Two states with
equal snapshots behave the same from there on: objects are encoded by their class and
fields all the way down, so only object identity is left out, and aliasing is kept (an
object met a second time is encoded as a reference to its first encounter, in a traversal
order that does not depend on identity). Closures are encoded with what they captured.
An int that is the ``id()`` of an mm (the page-table ledger keys by it) is that mm.

What is left out on purpose: the record of the example (``steps``, the step counter, the
kernel log) and what only memoises a check (fields named in :data:`MEMO_FIELDS`, the
store counter): none of them changes what a step does or what a check decides.
"""

from __future__ import annotations

import collections
import types
from typing import TYPE_CHECKING, Any

import attrs

if TYPE_CHECKING:
    from fuzzer._machine import Cpu, Machine

#: Fields that memoise a check's last result (``checked``: the store count when an invariant
#: last passed), not kernel state: two states differing only there are the same.
MEMO_FIELDS = frozenset({"checked"})
_PLAIN = frozenset({type(None), bool, int, float, str, bytes, complex})
#: Machine attributes that are kernel state (everything but the example's record and the model).
MACHINE_FIELDS = ("mem", "text_writes", "rodata_ro", "static_keys", "system_state", "booted",
                  "hotplug_busy", "cpuhp_states", "vmalloc_next", "next_pfn", "mm_ids",
                  "next_pid", "draws", "mms", "state", "mmu")
CPU_FIELDS = ("online", "irqs_enabled", "preempt_count", "irq_depth", "loaded_mm", "tlb", "hw",
              "dawr", "current_brk", "state", "stack", "wait", "idle_task")


def snapshot(m: Machine, frozen: dict[int, tuple[Any, Any]] | None = None) -> Any:
    """The encoding of ``m``'s state (hashable; equal for states that behave the same).

    ``frozen``: a dict the caller keeps between snapshots of one machine, where the
    encodings of immutable objects (frozen attrs instances) are kept.
    """
    enc = _Encoder(m, frozen)
    parts: list[Any] = [enc.value(getattr(m, f)) for f in MACHINE_FIELDS]
    parts.append(hash(m.rng.getstate()))
    for c in m.cpus:
        parts.append(enc.cpu(c))
    return tuple(parts)


class _Encoder:
    def __init__(self, m: Machine, frozen: dict[int, tuple[Any, Any]] | None = None) -> None:
        self.m = m
        self.seen: dict[int, int] = {}
        self.keep: list[Any] = []  # keeps encoded temporaries alive, so ids stay unique
        self.frozen: dict[int, tuple[Any, Any]] = frozen if frozen is not None else {}
        """Encodings of immutable objects, by id (each kept alive with its encoding)."""
        self.opaque = {id(m): "machine", id(m.model): "model", id(m.k): "routines"}
        for c in m.cpus:
            self.opaque[id(c)] = f"cpu{c.n}"
        # The model keys some state by ``id(mm)`` (the page-table ledger): such an int is
        # the mm it names, whatever address this replay gave it.
        self.ids = {id(mm): mm for mm in m.mms.values()}
        for name in ("layout", "geometry", "config", "run", "version"):
            obj = getattr(m, name, None)
            if obj is not None:
                self.opaque[id(obj)] = name

    def cpu(self, c: Cpu) -> Any:
        return tuple(self.value(getattr(c, f)) for f in CPU_FIELDS)

    def value(self, v: Any) -> Any:
        cls = type(v)
        if cls in _PLAIN:
            if cls is int and v in self.ids:
                return ("id", self.value(self.ids[v]))
            return v if cls is not bool else ("bool", v)
        if cls is tuple:  # immutable: who else holds it does not matter
            return ("tuple", self._all(v))
        key = id(v)
        frozen = self.frozen.get(key)
        if frozen is not None:
            return frozen[1]
        name = self.opaque.get(key)
        if name is not None:
            return ("@", name)
        ref = self.seen.get(key)
        if ref is not None:
            return ("@", ref)
        self.seen[key] = len(self.seen)
        self.keep.append(v)
        out = self._object(v)
        if _is_frozen(cls) and _flat(out) and all(self._immutable(getattr(v, k, None))
                                                  for k in _field_names(v)):
            del self.seen[key]  # a value: encoded the same wherever it is met
            self.frozen[key] = (v, out)
        return out

    def _order(self, x: Any) -> tuple[int, str, Any]:
        """A sort key for set elements and dict keys that depends neither on identity nor
        on the order they were added in: plain values by value, objects by their class
        and plain fields (a tie keeps the container's order: a state then may look new
        when it is not, which costs time, never a schedule)."""
        if type(x) in _PLAIN and x not in self.ids:
            return (0, type(x).__name__, repr(x))
        return (1, type(x).__qualname__, self._shallow(x))

    def _shallow(self, x: Any) -> str:
        if type(x) in _PLAIN:
            return repr(x) if x not in self.ids else self._shallow(self.ids[x])
        if type(x) is tuple:
            return "(" + ",".join(self._shallow(y) for y in x) + ")"
        try:
            names = _field_names(x)
        except TypeError:
            return type(x).__qualname__
        return repr(tuple(y for y in (getattr(x, k, None) for k in names)
                          if type(y) in _PLAIN and y not in self.ids))

    def _immutable(self, x: Any) -> bool:
        if type(x) in _PLAIN:
            return True
        if type(x) is tuple:
            return all(self._immutable(y) for y in x)
        return id(x) in self.frozen

    def _all(self, xs: Any) -> tuple[Any, ...]:
        """``tuple(self.value(x) for x in xs)``, without a call for the plain ones."""
        ids, value = self.ids, self.value
        return tuple(x if (type(x) is int and x not in ids) or type(x) is str or x is None
                     else value(x) for x in xs)

    def _object(self, v: Any) -> Any:
        if isinstance(v, dict):
            keys = sorted(v, key=self._order)
            return ("dict", self._all(keys), self._all([v[k] for k in keys]))
        if isinstance(v, list | tuple):
            return (type(v).__name__, self._all(v))
        if isinstance(v, set | frozenset):
            return ("set", tuple(self.value(x) for x in sorted(v, key=self._order)))
        if isinstance(v, types.GeneratorType | types.CoroutineType):
            return self._generator(v)
        if isinstance(v, types.MethodType):
            return ("method", v.__func__.__qualname__, self.value(v.__self__))
        if isinstance(v, types.FunctionType):
            cells = tuple(self.value(_cell(c)) for c in v.__closure__ or ())
            return ("function", v.__qualname__, cells)
        if isinstance(v, types.BuiltinFunctionType | type | types.ModuleType):
            return ("static", getattr(v, "__qualname__", getattr(v, "__name__", "?")))
        if isinstance(v, types.CodeType):
            return ("code", v.co_qualname)
        if isinstance(v, collections.deque):
            return ("deque", self._all(v))
        names = _field_names(v)
        if not names and not attrs.has(type(v)) and not hasattr(v, "__dict__"):
            # No fields to read (a C object): its repr, which may name its address -- then
            # the state never matches another, the safe side.
            return ("opaque", type(v).__qualname__, repr(v))
        return (type(v).__qualname__, names, self._all([getattr(v, k, None) for k in names]))

    def _generator(self, g: Any) -> Any:
        frame = g.gi_frame
        if frame is None:
            return ("generator", g.gi_code.co_qualname, "done")
        local = tuple((k, self.value(x)) for k, x in sorted(frame.f_locals.items()))
        return ("generator", g.gi_code.co_qualname, frame.f_lasti, local,
                self.value(g.gi_yieldfrom))


def _cell(c: Any) -> Any:
    try:
        return c.cell_contents
    except ValueError:  # an empty cell
        return None


_FIELD_NAMES: dict[type, tuple[str, ...]] = {}
_FROZEN: dict[type, bool] = {}


def _field_names(v: Any) -> tuple[str, ...]:
    """The state fields of ``v``: attrs fields, slots, then instance attributes."""
    cls = type(v)
    names = _FIELD_NAMES.get(cls)
    if names is None:
        if attrs.has(cls):
            names = tuple(a.name for a in attrs.fields(cls))
        else:
            names = tuple(s for k in cls.__mro__ for s in getattr(k, "__slots__", ())
                          if s not in ("__dict__", "__weakref__"))
        names = tuple(n for n in names if n not in MEMO_FIELDS)
        if not attrs.has(cls) and hasattr(v, "__dict__"):
            return names + tuple(k for k in sorted(vars(v)) if k not in MEMO_FIELDS)
        _FIELD_NAMES[cls] = names
    return names


def _is_frozen(cls: type) -> bool:
    """Instances of frozen attrs classes cannot change: their encoding can be kept."""
    frozen = _FROZEN.get(cls)
    if frozen is None:
        setter = getattr(cls, "__setattr__", None)
        frozen = _FROZEN[cls] = attrs.has(cls) and getattr(setter, "__name__", "") == "_frozen_setattrs"
    return frozen


def _flat(enc: Any) -> bool:
    """No reference to another object in the encoding (so it means the same anywhere)."""
    if isinstance(enc, tuple):
        if len(enc) == 2 and enc[0] == "@":
            return False
        return all(_flat(x) for x in enc)
    return True
