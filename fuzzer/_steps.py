"""Steps: the recorded decisions a run is a pure function of."""

from __future__ import annotations

from typing import Any

import attrs

#: Step actions, in the order a reproduction usually shows them.
ACTIONS = ("boot", "online", "offline", "start", "run", "irq", "fill", "migrate", "fail")


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

    action: str
    """One of :data:`ACTIONS`."""
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

    def describe(self) -> str:
        """The step as a kernel developer reads it in a reproduction."""
        if self.action == "boot":
            return f"boot CPU 0 (start_kernel, initcalls; kernel random seed {self.seed})"
        if self.action == "online":
            return f"bring CPU {self.cpu} online (cpuhp AP_ONLINE_DYN callbacks)"
        if self.action == "offline":
            return f"take CPU {self.cpu} offline (cpuhp teardown callbacks)"
        if self.action == "start":
            args = ", ".join(f"{k}={_fmt(v)}" for k, v in self.args)
            return f"CPU {self.cpu}: start {self.name}({args})"
        if self.action == "irq":
            return f"CPU {self.cpu}: deliver interrupt {self.name}"
        if self.action == "run":
            return "advance " + _runs(self.cpus)
        if self.action == "fill":
            return f"CPU {self.cpu}: speculative TLB fill of {_fmt(dict(self.args).get('va'))}"
        if self.action == "migrate":
            to = self.cpus[0] if self.cpus else "?"
            return f"CPU {self.cpu}: preempt the running task; it resumes on CPU {to}"
        if self.action == "fail":
            return f"CPU {self.cpu}: fail the next {self.name} allocation (fault injection)"
        return f"{self.action} {self}"  # pragma: no cover - unknown actions are rejected on load

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"action": self.action}
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
        return cls(action, cpu=cpu, name=name, args=args, cpus=cpus, seed=seed)


class StepFormatError(ValueError):
    """A recorded step that cannot be read back: ``field`` names the bad field."""

    def __init__(self, field: str, problem: str) -> None:
        self.field = field
        self.problem = problem
        super().__init__(f"{field}: {problem}" if field else problem)


#: The fields each action may carry (besides ``action``), and those it must.
_FIELDS = {
    "boot": ("seed",),
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
