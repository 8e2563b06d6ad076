"""Steps: the recorded decisions a run is a pure function of."""

from __future__ import annotations

import enum
from typing import Any

import attrs


class StepAction(enum.StrEnum):
    """What a step does. A ``str`` enum: it compares equal to, and is written to JSON as,
    its value (``"boot"``), so the corpus and database formats are unchanged."""

    BOOT = "boot"
    """Boot CPU 0 (``seed``: the kernel's random seed)."""
    ONLINE = "online"
    """Bring ``cpu`` online."""
    OFFLINE = "offline"
    """Take ``cpu`` offline."""
    START = "start"
    """Start operation ``name`` with ``args`` on ``cpu``."""
    RUN = "run"
    """Advance the CPUs listed in ``cpus``, one emulated step each."""
    IRQ = "irq"
    """Deliver interrupt source ``name`` on ``cpu``."""
    FILL = "fill"
    """The MMU loads a translation of ``args["va"]`` into ``cpu``'s TLB, unasked."""
    MIGRATE = "migrate"
    """Preempt the task running on ``cpu`` (CONFIG_PREEMPT); it resumes on ``cpus[0]``."""
    FAIL = "fail"
    """``cpu``'s next allocation at site ``name`` fails (CONFIG_FAULT_INJECTION)."""


#: Step actions, in the order a reproduction usually shows them.
ACTIONS = tuple(a.value for a in StepAction)


def _action(action: Any) -> StepAction:
    # StepAction(a) is a itself for a member; the enum's lookup is skipped then (every
    # emulated step's run step is made anew: the converter is on the hot path).
    return action if type(action) is StepAction else StepAction(action)


def _freeze_args(args: Any) -> tuple[tuple[str, Any], ...]:
    if isinstance(args, dict):
        return tuple(sorted(args.items()))
    return tuple(args)


@attrs.frozen
class Step:
    """One decision of a run, replayable without Hypothesis.

    A run is the machine's configuration plus a tuple of steps; replaying the
    same steps on a machine of the same configuration gives the same outcome.
    """

    action: StepAction = attrs.field(converter=_action)
    """What the step does."""
    cpu: int | None = None
    """The CPU the step concerns (``online``, ``offline``, ``start``, ``irq``, ``fill``,
    ``migrate``: the CPU the task is preempted on)."""
    name: str = ""
    """The operation (``start``), interrupt source (``irq``) or allocation site (``fail``)."""
    args: tuple[tuple[str, Any], ...] = attrs.field(default=(), converter=_freeze_args)
    """Operation arguments as ``(name, value)`` pairs of plain JSON values (``fill``:
    ``va``, the address whose translation the CPU loads)."""
    cpus: tuple[int, ...] = attrs.field(default=(), converter=lambda c: tuple(c))
    """``run``: the CPU advanced at each emulated step, in order; ``migrate``: the CPU
    the preempted task resumes on."""
    seed: int = 0
    """``boot``: the seed of the kernel's own random numbers (get_random_long)."""
    draws: tuple[int, ...] = attrs.field(default=(), converter=lambda d: tuple(d))
    """``boot``: the kernel's random draws, chosen by the search, in the order the kernel
    makes them: a draw in ``[0, n)`` takes ``value % n`` (so -1 is the highest value).
    Draws past the end, and every draw when empty, come from ``seed``."""

    def describe(self) -> str:
        """The step as a kernel developer reads it in a reproduction."""
        return _DESCRIBE[self.action](self)

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"action": self.action.value}
        if self.cpu is not None:
            out["cpu"] = self.cpu
        if self.name:
            out["name"] = self.name
        if self.args:
            out["args"] = dict(self.args)
        if self.cpus:
            out["cpus"] = list(self.cpus)
        if self.action == "boot":
            out["seed"] = self.seed
            if self.draws:
                out["draws"] = list(self.draws)
        return out

    @classmethod
    def from_json(cls, data: Any) -> Step:
        """The inverse of :meth:`to_json`, validating every field.

        Plain data in, a :class:`Step` out; nothing is imported or evaluated.
        A bad field raises :class:`StepFormatError` naming it.
        """
        if not isinstance(data, dict):
            raise StepFormatError("", f"expected an object, not {_kind(data)}")
        action = data.get("action")
        if action is None:
            raise StepFormatError("action", "missing")
        if action not in ACTIONS:
            raise StepFormatError("action", f"unknown action {action!r}; known: {', '.join(ACTIONS)}")
        allowed = _FIELDS[action]
        for key in data:
            if key != "action" and key not in allowed:
                raise StepFormatError(
                    str(key), f"not a field of a {action!r} step; its fields: {', '.join(allowed)}"
                )
        for key in _REQUIRED[action]:
            if key not in data:
                raise StepFormatError(key, f"missing (a {action!r} step needs it)")
        cpu = data.get("cpu")
        if cpu is not None:
            _check_count("cpu", cpu)
        name = data.get("name", "")
        if not isinstance(name, str) or (action in ("start", "irq", "fail") and not name):
            raise StepFormatError("name", f"expected a non-empty string, not {name!r}")
        args = data.get("args", {})
        if not isinstance(args, dict):
            raise StepFormatError("args", f"expected an object, not {_kind(args)}")
        for key, value in args.items():
            if value is not None and not isinstance(value, bool | int | float | str):
                raise StepFormatError(f"args.{key}", f"expected a number, string, bool or null,"
                                      f" not {_kind(value)}")
        cpus = data.get("cpus", [])
        if not isinstance(cpus, list):
            raise StepFormatError("cpus", f"expected a list of CPU numbers, not {_kind(cpus)}")
        for i, n in enumerate(cpus):
            _check_count(f"cpus[{i}]", n)
        seed = data.get("seed", 0)
        _check_count("seed", seed)
        draws = data.get("draws", [])
        if not isinstance(draws, list) or any(isinstance(v, bool) or not isinstance(v, int)
                                              for v in draws):
            raise StepFormatError("draws", f"expected a list of whole numbers, not {draws!r}")
        return cls(action, cpu=cpu, name=name, args=args, cpus=cpus, seed=seed, draws=draws)


class StepFormatError(ValueError):
    """A recorded step that cannot be read back: ``field`` names the bad field."""

    def __init__(self, field: str, problem: str) -> None:
        self.field = field
        self.problem = problem
        super().__init__(f"{field}: {problem}" if field else problem)


#: The fields each action may carry (besides ``action``), and those it must.
_FIELDS = {
    "boot": ("seed", "draws"),
    "online": ("cpu",),
    "offline": ("cpu",),
    "start": ("cpu", "name", "args"),
    "run": ("cpus",),
    "irq": ("cpu", "name"),
    "fill": ("cpu", "args"),
    "migrate": ("cpu", "cpus"),
    "fail": ("cpu", "name"),
}
_REQUIRED = {
    "boot": ("seed",),
    "online": ("cpu",),
    "offline": ("cpu",),
    "start": ("cpu", "name"),
    "run": (),
    "irq": ("cpu", "name"),
    "fill": ("cpu", "args"),
    "migrate": ("cpu", "cpus"),
    "fail": ("cpu", "name"),
}


_DESCRIBE = {
    StepAction.BOOT: lambda s: f"boot CPU 0 (start_kernel, initcalls; kernel random seed {s.seed}"
                               + (f"; random draws {list(s.draws)})" if s.draws else ")"),
    StepAction.ONLINE: lambda s: f"bring CPU {s.cpu} online (cpuhp AP_ONLINE_DYN callbacks)",
    StepAction.OFFLINE: lambda s: f"take CPU {s.cpu} offline (cpuhp teardown callbacks)",
    StepAction.START: lambda s: f"CPU {s.cpu}: start {s.name}({_args(s.args)})",
    StepAction.IRQ: lambda s: f"CPU {s.cpu}: deliver interrupt {s.name}",
    StepAction.RUN: lambda s: "advance " + _runs(s.cpus),
    StepAction.FILL: lambda s: f"CPU {s.cpu}: speculative TLB fill of {_fmt(dict(s.args).get('va'))}",
    StepAction.MIGRATE: lambda s: (f"CPU {s.cpu}: preempt the running task; it resumes on CPU"
                                   f" {s.cpus[0] if s.cpus else '?'}"),
    StepAction.FAIL: lambda s: f"CPU {s.cpu}: fail the next {s.name} allocation (fault injection)",
}


def _args(args: tuple[tuple[str, Any], ...]) -> str:
    return ", ".join(f"{k}={_fmt(v)}" for k, v in args)


def _kind(value: Any) -> str:
    return {dict: "an object", list: "a list", str: "a string", bool: "a bool",
            type(None): "null"}.get(type(value), type(value).__name__)


def _check_count(field: str, value: Any) -> None:
    # bool is an int in Python but never a CPU number or a seed in a reproduction.
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise StepFormatError(field, f"expected a whole number 0 or more, not {value!r}")


def _fmt(value: Any) -> str:
    if isinstance(value, int) and not isinstance(value, bool) and value > 0xFFFF:
        return hex(value)
    return repr(value)


def _runs(cpus: tuple[int, ...]) -> str:
    """``(1, 1, 1, 0)`` -> ``CPU 1 x3, CPU 0``: run-length, as a person would say it."""
    parts: list[str] = []
    i = 0
    while i < len(cpus):
        j = i
        while j < len(cpus) and cpus[j] == cpus[i]:
            j += 1
        n = j - i
        parts.append(f"CPU {cpus[i]}" + (f" x{n}" if n > 1 else ""))
        i = j
    return ", ".join(parts) if parts else "nothing"
