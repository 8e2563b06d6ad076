"""The project's tests use the public plugin-testing harness, fuzzer.testing.

Tests pin v6.2 by default: most injected mistakes and expectations are v6.2's.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from fuzzer import Model, Step
from fuzzer._engine.replay import apply_step
from fuzzer._machine import Machine
from fuzzer.testing import boot_steps, plugin_module, replay, search
from fuzzer.testing import make_model as _make_model


def make_model(
    kernel: str = "v6.2",
    *,
    mmu: str = "radix",
    plugins: Sequence[str] = (),
    extra: Iterable[Any] = (),
    config: Sequence[str] = (),
    cpus: int = 4,
) -> Model:
    return _make_model(kernel, mmu=mmu, plugins=plugins, extra=extra, config=config, cpus=cpus)


def run_until_idle(model: Model, steps: Sequence[Step], n: int) -> Step:
    """The ``run`` step that takes CPU ``n`` to the end of its operation after ``steps``:
    derived from the run, so a test follows the model's step counts instead of a constant."""
    m = Machine(model)
    for step in steps:
        apply_step(m, step)
    cpu, count = m.cpus[n], 0
    while cpu.runnable():
        m.advance(cpu)
        count += 1
    assert not cpu.stack, f"CPU {n} blocked before finishing its operation"
    return Step("run", cpus=[n] * count)


__all__ = ["boot_steps", "make_model", "plugin_module", "replay", "run_until_idle", "search"]


def start_op(cpu: int, name: str, **args: int) -> Step:
    """A ``start`` step of operation ``name`` on ``cpu``."""
    return Step("start", cpu=cpu, name=name, args=args)


def run_each(m: Machine, *steps: Step) -> None:
    """Apply each step and run every CPU to completion after it."""
    for step in steps:
        apply_step(m, step)
        m.run_to_completion()
