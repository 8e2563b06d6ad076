"""The per-step hot path made cheaper decides exactly as before: each shortcut against the
plain computation it replaces, at every step (or every call) of real campaigns."""

from __future__ import annotations

import inspect
import sys
from typing import Any

import attrs
import pytest

from fuzzer import _interleave
from fuzzer._engine import run_campaign
from fuzzer._machine import Machine
from fuzzer._mmu import Mmu
from fuzzer._routines import FRAME_BY_CODE
from fuzzer._steps import Step, StepAction
from fuzzer.kernel import lockdep
from tests.modelkit import make_model

MODELS = [("v6.12", "radix", ()), ("v6.12", "hash", ()), ("v6.1", "radix", ()),
          ("v6.2", "radix", ("fuzzer_plugins.mistakes.irqs_early",))]


def _campaign(model: Any, seed: int, examples: int = 25) -> Any:
    return run_campaign(model, seed=seed, max_examples=examples, time_budget=0, shrink=False,
                        known=[k.signature for k in model.known])


def _every_frame_routine(f: Any) -> str:
    """``running_routine`` as it was: the whole stack, looked up by code object."""
    fallback = "?"
    while f is not None:
        frame = FRAME_BY_CODE.get(f.f_code)
        if frame is not None:
            return frame.function
        if fallback == "?" and f.f_code.co_flags & inspect.CO_GENERATOR:
            fallback = f.f_code.co_name
        f = f.f_back
    return fallback


def test_the_access_notes_and_lockdep_name_what_the_whole_stack_names(monkeypatch):
    fast_routine, fast_frames = _interleave.running_routine, lockdep.frames_here
    calls = {"notes": 0, "locks": 0}

    def routine(depth: int = 2) -> str:
        got = fast_routine(depth + 1)
        assert got == _every_frame_routine(sys._getframe(depth))
        calls["notes"] += 1
        return got

    def frames() -> Any:
        got = fast_frames()
        want = []
        f = inspect.currentframe()
        while f is not None:
            if FRAME_BY_CODE.get(f.f_code) is not None:
                want.append(FRAME_BY_CODE[f.f_code])
            f = f.f_back
        assert got == tuple(want)
        calls["locks"] += 1
        return got

    monkeypatch.setattr(_interleave, "running_routine", routine)
    monkeypatch.setattr(lockdep, "frames_here", frames)
    _campaign(make_model("v6.12"), seed=1)
    _campaign(make_model("v6.12"), seed=2, examples=10)  # hypothesis below: a deeper stack
    run_campaign(make_model("v6.12"), seed=1, max_examples=5, time_budget=0, shrink=False,
                 engine="hypothesis")
    assert calls["notes"] > 1000 and calls["locks"] > 100


def _owner_by_dict(m: Machine) -> dict[int, int]:
    out = {}
    for c in m.cpus:
        ctx = c.state.get("cpu_patching_context")
        if ctx is not None and ctx.mm is not None:
            out[id(ctx.mm)] = c.n
    return out


def _patch_window_by_dict(m: Machine) -> str | None:
    for c in m.cpus:
        mm = c.loaded_mm
        if mm is None or not mm.is_patching:
            continue
        owner = _owner_by_dict(m).get(id(mm))
        if owner is not None and owner != c.n:
            return f"CPU {c.n} has loaded {mm.name}, the patching mm of CPU {owner}"
        if c.irqs_enabled:
            return f"CPU {c.n} has interrupts enabled while its patching mm is loaded"
    return None


def _mapping_private_by_pairs(m: Machine) -> str | None:
    """``mapping_private`` asking ``translations_of`` for every pair of CPUs."""
    holders = [c for c in m.cpus if c.tlb]
    for owner in m.cpus:
        ctx = owner.state.get("cpu_patching_context")
        if ctx is None or len(holders) < 2:
            continue
        mm, area = ctx.mm, ctx.area
        if mm is None or mm.is_init or (mm.freed and (area is None or area.freed)):
            continue
        for c in holders:
            if c is not owner and m.mmu.translations_of(c, mm, ctx.addr):
                return (f"CPU {c.n} holds a translation of CPU {owner.n}'s patching address"
                        f" {ctx.addr:#x}")
    return None


@pytest.mark.parametrize(("kernel", "mmu", "plugins"), MODELS)
def test_the_patching_step_checks_say_what_the_plain_ones_say(kernel, mmu, plugins):
    model = make_model(kernel, mmu=mmu, plugins=plugins)
    seen = {"steps": 0, "failed": 0, "pairs": 0}
    plain = {"patch window": _patch_window_by_dict,
             "patching mapping private": _mapping_private_by_pairs}

    def checked(check: Any) -> Any:
        def both(m: Machine) -> str | None:
            got = check.check(m)
            assert got == plain[check.name](m)
            seen["steps"] += 1
            seen["failed"] += got is not None
            seen["pairs"] += sum(1 for c in m.cpus if c.tlb) >= 2
            return got
        return attrs.evolve(check, check=both)

    model = attrs.evolve(model, step_invariants=tuple(
        checked(c) if c.name in plain else c for c in model.step_invariants))
    out = _campaign(model, seed=3)
    if plugins:  # irqs_early: the fast patch-window check still catches it
        assert out.failure is not None and out.failure.signature.function == "patch window"
        assert seen["failed"] >= 1
    else:
        assert seen["steps"] > 10_000 and seen["pairs"] > 1000


def test_a_tlb_key_is_what_translations_of_looks_for():
    for mmu in ("radix", "hash"):
        m = Machine(make_model("v6.12", mmu=mmu))
        m.boot(1)
        assert type(m.mmu).translations_of is Mmu.translations_of
        c = m.cpus[0]
        for key in list(c.tlb)[:20]:
            va = key[1] << m.mmu.shift
            assert m.mmu.translations_of(c, m.init_mm, va) == (m.mmu.tlb_key(m.init_mm, va) in c.tlb)


def test_a_run_step_is_the_same_step_however_made():
    assert Step(StepAction.RUN, cpus=(1, 2)) == Step("run", cpus=[1, 2])
    assert Step(StepAction.RUN, cpus=(1,)).action is StepAction.RUN
    m = Machine(make_model("v6.12"))
    m._record_run([0])
    m._record_run([])
    m._record_run([1, 1])
    assert m.steps == [Step("run", cpus=[0, 1, 1])]
