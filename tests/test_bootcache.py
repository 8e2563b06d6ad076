"""The boot cache: a machine booted from a copy is the machine the boot makes, and a
campaign with it makes the same examples, steps and findings as one without it."""

from __future__ import annotations

import attrs
import pytest

from fuzzer import _bootcache
from fuzzer._coverage import RoutineRecorder
from fuzzer._engine import run_campaign
from fuzzer._interleave import Interleavings
from fuzzer._machine import Machine
from fuzzer._snapshot import snapshot
from tests.modelkit import make_model

RECORD = ("steps", "nsteps", "boot_steps", "log", "stores", "draws", "booted")


@pytest.fixture(autouse=True)
def _fresh_cache():
    _bootcache.clear()
    yield
    _bootcache.ENABLED = True
    _bootcache.clear()


def booted(model, seed, draws=(), *, cache=True, log=False):
    m = Machine(model, boot_cache=cache)
    if log:
        Interleavings().attach(m)
    m.boot(seed, draws)
    return m


def same_machine(a, b):
    assert snapshot(a) == snapshot(b)
    for f in RECORD:
        assert getattr(a, f) == getattr(b, f), f
    if a.accesses is not None:
        assert (a.accesses.last, a.accesses.pairs) == (b.accesses.last, b.accesses.pairs)
        assert a.accesses.m is a


@pytest.mark.parametrize(("kernel", "mmu"), [("v6.12", "radix"), ("v6.2", "hash")])
def test_the_third_boot_is_a_copy_and_the_same_machine(kernel, mmu):
    model = make_model(kernel, mmu=mmu)
    real = booted(model, 7, (1, -1), cache=False)
    first, second, third = (booted(model, 7, (1, -1)) for _ in range(3))
    mc = _bootcache._MODELS[id(model)]
    assert mc.usable and any(e is not None for e in mc.entries.values())
    for m in (first, second, third):
        same_machine(m, real)
    # The copy has its own state, and the hooks plugins registered act on it.
    assert third.state["kprobes"] is not real.state["kprobes"]
    assert all(c.m is third for c in third.cpus)
    for hook in third._entry_hooks + third._irqs_on_hooks + third._observers:
        cells = [c.cell_contents for c in hook.__closure__ or ()]
        assert real not in cells and first not in cells


@pytest.mark.parametrize(("kernel", "mmu", "draws"), [
    ("v6.12", "radix", (0, 1, -1, -2)),  # the temp mm's address is the first draw
    ("v6.12", "hash", ()),  # no draw at boot: the seed makes no difference to it
    ("v6.1", "radix", ()),
])
def test_a_boot_that_draws_nothing_from_its_seed_is_shared_by_every_seed(kernel, mmu, draws):
    model = make_model(kernel, mmu=mmu)
    booted(model, 1, draws)
    booted(model, 2, draws)
    for seed in (3, 4):
        real, copy = booted(model, seed, draws, cache=False), booted(model, seed, draws)
        same_machine(copy, real)
        assert copy.steps[0].seed == seed and copy.rng.getstate() == real.rng.getstate()
    assert _bootcache._MODELS[id(model)].prefixes == {min(len(draws), 1)}


def test_a_boot_that_draws_from_its_seed_is_kept_by_its_seed():
    model = make_model("v6.12")
    for seed in (1, 2, 3):
        booted(model, seed)
    mc = _bootcache._MODELS[id(model)]
    assert not mc.prefixes and not any(mc.entries.values())
    for _ in range(3):
        copy = booted(model, 5)
    same_machine(copy, booted(model, 5, cache=False))
    assert any(mc.entries.values())


def test_a_copy_runs_on_as_the_boot_would():
    model = make_model("v6.12")
    for _ in range(2):
        booted(model, 3)
    copy, real = booted(model, 3), booted(model, 3, cache=False)
    assert _bootcache._MODELS[id(model)].entries  # the third boot came from the cache
    for m in (copy, real):
        m.cpu_up(m.cpus[1])
        m.run_to_completion()
        m.start(m.cpus[1], model.operation("kprobes.register"), {"site": 0})
        m.finish()
    same_machine(copy, real)


def test_the_access_log_and_the_routine_recorder_get_what_the_boot_noted():
    model = make_model("v6.12")
    recorder = RoutineRecorder(model.routines, model.routine_infos)
    recorded = attrs.evolve(model, routines=recorder.table)
    real = booted(recorded, 5, cache=False, log=True)
    entered = set(recorder.example)
    assert "start_kernel" in entered and real.accesses.last
    for _ in range(3):
        recorder.example.clear()
        m = booted(recorded, 5, log=True)
        same_machine(m, real)
        assert recorder.example == entered


def test_a_machine_that_does_not_opt_in_always_boots():
    model = make_model("v6.12")
    for _ in range(3):
        booted(model, 1, cache=False)
    assert id(model) not in _bootcache._MODELS


@pytest.mark.parametrize("guide", [False, True])
def test_a_campaign_is_the_same_with_and_without_the_cache(guide):
    model = make_model("v6.12")
    outs = []
    for on in (False, True):
        _bootcache.ENABLED = on
        _bootcache.clear()
        out = run_campaign(model, seed=2, max_examples=60, time_budget=0, guide=guide)
        outs.append((out.examples, out.emulated_steps, out.examples_to_first_failure, tuple(out.steps)))
    assert outs[0] == outs[1]
    kept = [e for mc in _bootcache._MODELS.values() for e in mc.entries.values() if e is not None]
    assert kept  # the campaign with the cache on copied boots


def test_a_copied_boot_keeps_the_machines_own_cpus():
    """What an engine took from ``m.cpus`` before the boot step (the interleaving feedback's
    hold takes the held CPU and the other one) is still the machine's CPU after a copied boot:
    the copy's state goes into the fresh machine's CPU objects."""
    model = make_model("v6.12")
    for _ in range(2):
        booted(model, 3)
    m = Machine(model, boot_cache=True)
    cpus = list(m.cpus)
    m.boot(3)
    assert m.boot_steps and all(a is b for a, b in zip(m.cpus, cpus, strict=True))
    assert all(c.m is m and c.online == (c.n == 0) for c in m.cpus)
    same_machine(m, booted(model, 3, cache=False))


def test_a_campaign_with_holds_is_the_same_with_and_without_the_cache():
    # Seed 1's example 38 replays a kept example holding CPU 2 until CPU 1 is done: with the
    # boot copied into new CPU objects, the hold watched a CPU that never ran and let go at once.
    model = make_model("v6.12")
    outs = []
    for on in (False, True):
        _bootcache.ENABLED = on
        _bootcache.clear()
        out = run_campaign(model, seed=1, max_examples=45, time_budget=0, shrink=False,
                           known=[k.signature for k in model.known])
        outs.append((out.examples, out.emulated_steps, out.stats.pairs))
    assert outs[0] == outs[1]
