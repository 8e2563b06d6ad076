"""Steps: the recorded decisions a run is a pure function of."""

from __future__ import annotations

from typing import Any

import attrs

#: Step actions, in the order a reproduction usually shows them.
ACTIONS = ("boot", "online", "offline", "start", "run", "irq")


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
    """The CPU the step concerns (``online``, ``offline``, ``start``, ``irq``)."""
    name: str = ""
    """The operation (``start``) or interrupt source (``irq``)."""
    args: tuple[tuple[str, Any], ...] = attrs.field(default=(), converter=_freeze_args)
    """Operation arguments as ``(name, value)`` pairs of plain JSON values."""
    cpus: tuple[int, ...] = attrs.field(default=(), converter=lambda c: tuple(c))
    """``run``: the CPU advanced at each emulated step, in order."""
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
