"""The modelled kernel: the seed crash, the fixed versions, kprobes, hardware rules."""

from __future__ import annotations

import io
import json

import pytest

from fuzzer import PAGE_OFFSET, Step
from fuzzer._cli import main
from fuzzer.kernel.patching import context
from fuzzer_plugins.kprobes import BREAKPOINT_INSTRUCTION, SYMBOLS, kstate, site_addr

from modelkit import boot_steps, make_model, replay, search

SEED_TRACE = [
    "assert_pte_locked",
    "radix__pte_update",
    "pte_clear",
    "__do_patch_instruction_mm",
    "patch_instruction",
    "arch_prepare_kprobe",
    "register_kprobe",
    "arch_init_kprobes",
    "init_kprobes",
    "do_one_initcall",
    "kernel_init_freeable",
    "kernel_init",
]


def run_cli(*argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    code = main(list(argv), out=out, err=err)
    return code, out.getvalue(), err.getvalue()


@pytest.mark.parametrize("seed", [1, 2, 3, 4, 5])
def test_seed_crash_is_found_by_search_and_shrunk_to_boot(seed, tmp_path):
    report = tmp_path / "r.json"
    code, out, _ = run_cli("run", "--kernel", "next-20221215", "--seed", str(seed),
                           "--report-json", str(report))
    assert code == 1
    assert "kernel BUG at arch/powerpc/mm/pgtable.c:333!" in out
    data = json.loads(report.read_text())
    assert data["signature"] == {
        "kind": "BUG", "function": "assert_pte_locked", "location": "arch/powerpc/mm/pgtable.c:333",
    }
    assert [f["function"] for f in data["trace"]] == SEED_TRACE
    # Boot alone reproduces it, so nothing else is kept; its seed shrinks to 0.
    assert data["steps"] == [{"action": "boot", "seed": 0}]
    assert data["cpu"] == 0 and "Comm: swapper/0" in data["task"]


def test_seed_crash_needs_debug_vm():
    code, out, _ = run_cli("run", "--kernel", "next-20221215", "--config", "CONFIG_DEBUG_VM=n",
                           "--seed", "1", "--max-examples", "150")
    assert code == 0, out
    assert "150 passed" in out or "passed, 0 failed" in out


def test_seed_crash_replays_deterministically():
    model = make_model("next-20221215")
    _, first = replay(model, boot_steps())
    _, second = replay(model, boot_steps())
    assert first is not None and second is not None
    assert [f.function for f in first.trace] == SEED_TRACE
    assert first.signature == second.signature
    assert first.detail == second.detail  # same random patching address


@pytest.mark.parametrize("kernel", ["v6.1", "v6.2"])
@pytest.mark.parametrize("seed", [1, 2])
def test_fixed_versions_are_clean(kernel, seed):
    outcome = search(make_model(kernel), seed=seed, max_examples=200)
    assert outcome.status == "passed", outcome.failure and outcome.failure.message


@pytest.mark.slow
@pytest.mark.parametrize("kernel", ["v6.1", "v6.2"])
@pytest.mark.parametrize("seed", [1, 2, 3])
def test_fixed_versions_are_clean_for_a_minute(kernel, seed):
    outcome = search(make_model(kernel), seed=seed, max_examples=0, time_budget=60)
    assert outcome.status == "passed", outcome.failure and outcome.failure.message


def test_v62_boot_arms_the_trampoline_probe_through_the_temp_mm():
    model = make_model("v6.2")
    m, failure = replay(model, boot_steps())
    assert failure is None
    tramp = PAGE_OFFSET + SYMBOLS["__kretprobe_trampoline"].offset
    # Armed (the trap), then optimized by the boot's optimizer run (a branch to its detour,
    # opcode 18), each store through the temporary mm.
    word = m.fetch(m.cpus[0], tramp)
    assert word != BREAKPOINT_INSTRUCTION and word >> 26 == 18, hex(word)
    probe = kstate(m).table[tramp]
    assert m.fetch(m.cpus[0], probe.insn_slot) == SYMBOLS["__kretprobe_trampoline"].words[0]
    ctx = context(m.cpus[0])
    assert ctx.mm is not None and ctx.area is None
    assert ctx.mm.lookup(ctx.addr) is None  # unmapped after each patch
    assert m.cpus[0].loaded_mm is m.init_mm


def test_v61_patches_through_the_vmalloc_alias():
    m, failure = replay(make_model("v6.1"), boot_steps())
    assert failure is None
    ctx = context(m.cpus[0])
    assert ctx.mm is None and ctx.area is not None
    assert m.init_mm.lookup(ctx.area.addr) is None
    assert not any(k[0] == 0 and k[1] == ctx.area.addr >> 16 for k in m.cpus[0].tlb)


def test_random_patching_address_is_per_cpu_and_in_bounds():
    steps = [*boot_steps(7), Step("online", cpu=1), Step("run", cpus=[1] * 20)]
    m, failure = replay(make_model("v6.2"), steps)
    assert failure is None
    a0, a1 = context(m.cpus[0]).addr, context(m.cpus[1]).addr
    assert a0 != a1
    for a in (a0, a1):
        assert a % 0x10000 == 0 and 0x10000 <= a <= (1 << 47) - 2 * 0x10000


@pytest.mark.parametrize("kernel", ["v6.2", "v6.12-fixed"])
def test_offline_frees_the_patching_mm(kernel):
    """The mm goes at CPU offline; its page tables too only with tlb_finish_mmu (v6.12-fixed):
    v6.2's put_patching_mm leaks them, a known finding (tests/test_cpu_offline.py)."""
    steps = [*boot_steps(), Step("online", cpu=1), Step("run", cpus=[1] * 20),
             Step("offline", cpu=1), Step("run", cpus=[1] * 20)]
    m, failure = replay(make_model(kernel), steps)
    if kernel == "v6.2":
        assert failure is not None and failure.signature.function == "page-table memory freed"
    else:
        assert failure is None
    assert not m.cpus[1].online
    mms = [mm for mm in m.mms.values() if mm.name.startswith("patching_mm")]
    assert len(mms) == 2 and sum(mm.freed for mm in mms) == 1


def _register(site: int, cpu: int = 0) -> list[Step]:
    return [Step("start", cpu=cpu, name="kprobes.register", args={"site": site}),
            Step("run", cpus=[cpu] * 800)]  # with the optprobe detour build


@pytest.mark.parametrize(
    ("site", "accepted", "message"),
    [
        (0, True, None),
        (2, False, "Attempt to register kprobe at an unaligned address"),
        (6, False, "Cannot register a kprobe on the second word of prefixed instruction"),
        (7, True, None),
        (8, False, "Cannot register a kprobe on instructions that can't be single stepped"),
    ],
)
def test_arch_prepare_kprobe_rejections(site, accepted, message):
    m, failure = replay(make_model("v6.2"), [*boot_steps(), *_register(site)])
    assert failure is None
    addr = site_addr(site)
    registered = (site, 0) in kstate(m).user
    assert registered is accepted
    if accepted:
        assert m.fetch(m.cpus[0], addr) == BREAKPOINT_INSTRUCTION
    else:
        assert message in m.log
        if addr % 4 == 0:
            assert m.fetch(m.cpus[0], addr) != BREAKPOINT_INSTRUCTION


def test_probe_on_suffix_rejected_when_the_prefix_is_probed():
    m, failure = replay(make_model("v6.2"), [*boot_steps(), *_register(5), *_register(6)])
    assert failure is None
    assert (5, 0) in kstate(m).user and (6, 0) not in kstate(m).user


def test_hit_traps_into_the_probe_and_disarm_restores_text():
    steps = [*boot_steps(), *_register(3),
             Step("start", cpu=0, name="kprobes.hit", args={"site": 3}), Step("run", cpus=[0] * 20),
             Step("start", cpu=0, name="kprobes.disable", args={"site": 3}),
             Step("run", cpus=[0] * 200)]
    m, failure = replay(make_model("v6.2"), steps)
    assert failure is None
    kp = kstate(m).user[(3, 0)]
    hashed = kstate(m).table[site_addr(3)]  # kp, or (optprobes) its optimized aggregator
    assert kp.hits == 1 and not hashed.armed and hashed.disabled
    assert m.fetch(m.cpus[0], site_addr(3)) == SYMBOLS["vfs_read"].words[0]


def test_missing_isync_after_pid_change_is_detected():
    from fuzzer import hookimpl, routine

    from modelkit import plugin_module

    @routine("switch_mmu_context", "arch/powerpc/mm/book3s64/mmu_context.c", override=True,
             symbol="radix__switch_mmu_context")
    def no_isync(cpu, prev, next_mm):
        yield
        cpu.m.mmu.mtspr_pid(cpu, next_mm.context_id)  # the isync that should follow is gone

    plugin = plugin_module("no_isync", fuzzer_routines=hookimpl(lambda config: [no_isync]))
    _, failure = replay(make_model("v6.2", extra=[plugin]), boot_steps())
    assert failure is not None
    assert failure.signature.kind == "HARDWARE"
    assert failure.signature.function == "isync after PID change"


def _drive(gen):
    """Run a routine generator to completion outside the scheduler; return its value."""
    try:
        while True:
            next(gen)
    except StopIteration as stop:
        return stop.value


@pytest.mark.parametrize("kernel", ["v6.1", "next-20221215", "v6.2"])
def test_assert_pte_locked_checks_in_the_kernels_order(kernel):
    from fuzzer import KernelBug
    from fuzzer._machine import Machine

    m = Machine(make_model(kernel))
    cpu = m.cpus[0]
    m.system_state = "SYSTEM_RUNNING"
    cpu.irqs_enabled = True
    mm = m.new_mm("patching_mm")
    addr = 0x1234_0000
    # init_mm is exempt.
    assert _drive(cpu.k.assert_pte_locked(cpu, m.init_mm, addr)) is None
    # Nothing at the pgd: BUG_ON(pgd_none) at line 318.
    with pytest.raises(KernelBug) as bug:
        _drive(cpu.k.assert_pte_locked(cpu, mm, addr))
    assert bug.value.at == "arch/powerpc/mm/pgtable.c:318"
    ptr, ptl = _drive(cpu.k.__get_locked_pte(cpu, mm, addr))
    # Locked: fine.
    assert _drive(cpu.k.assert_pte_locked(cpu, mm, addr)) is None
    # Unlocked: the assert_spin_locked BUG at line 333, the crash's line.
    _drive(cpu.k.pte_unmap_unlock(cpu, ptr, ptl))
    with pytest.raises(KernelBug) as bug:
        _drive(cpu.k.assert_pte_locked(cpu, mm, addr))
    assert bug.value.at == "arch/powerpc/mm/pgtable.c:333"
    # A pgd entry whose PUD page is empty: BUG_ON(pud_none) at line 322.
    other = 0x4000_0000_0000  # another pgd entry than addr's
    mm.pgd.entries[mm.geometry.indices(other)[0]] = type(mm.pgd)(1)
    with pytest.raises(KernelBug) as bug:
        _drive(cpu.k.assert_pte_locked(cpu, mm, other))
    assert bug.value.at == "arch/powerpc/mm/pgtable.c:322"


def test_assert_pte_locked_is_empty_without_debug_vm():
    from fuzzer._machine import Machine

    m = Machine(make_model("next-20221215", config=["CONFIG_DEBUG_VM=n"]))
    cpu = m.cpus[0]
    mm = m.new_mm("patching_mm")
    assert _drive(cpu.k.assert_pte_locked(cpu, mm, 0x10000)) is None


def test_jump_labels_patch_concurrently_with_kprobes():
    """Two CPUs inside patch_instruction at once: each through its own patching mm."""
    steps = [*boot_steps(), Step("online", cpu=1), Step("run", cpus=[1] * 30),
             Step("start", cpu=0, name="kprobes.register", args={"site": 0}),
             Step("start", cpu=1, name="jump_label.toggle", args={"key": 1}),
             Step("run", cpus=[0, 1] * 150)]
    m, failure = replay(make_model("v6.2"), steps)
    assert failure is None
    from fuzzer_plugins.jump_label import branch_to_target
    from fuzzer_plugins.jump_label import site as jl_site

    assert m.fetch(m.cpus[0], jl_site(1)) == branch_to_target(1)
    assert m.fetch(m.cpus[0], site_addr(0)) == BREAKPOINT_INSTRUCTION
    assert context(m.cpus[0]).mm is not context(m.cpus[1]).mm


def test_an_nmi_returning_on_a_reader_does_not_end_the_grace_period():
    """CPU 1 is in kprobe_handler (interrupts off: an RCU reader) with a system reset on top
    when CPU 2's unregister_kprobe calls synchronize_rcu; the NMI returning does not end
    CPU 1's read-side section, so the insn slot is freed only after CPU 1 single-stepped it.
    (A model that waited for the innermost activation only showed a false NULL
    ainsn.insn oops on the released v6.1, found by the walk's search.)"""
    from fuzzer._machine import Machine

    model = make_model("v6.1")
    m = Machine(model)
    m.boot(0)
    cpu0, cpu1, cpu2 = m.cpus[:3]

    def settle(cpu):
        while cpu.runnable():
            m.advance(cpu)

    m.start(cpu0, model.operation("kprobes.register"), {"probe": 0, "site": 9})
    settle(cpu0)
    for cpu in (cpu1, cpu2):
        m.cpu_up(cpu)
        settle(cpu)
    m.start(cpu1, model.operation("kprobes.hit"), {"site": 9})
    while cpu1.irqs_enabled:  # into the program check: interrupts off
        m.advance(cpu1)
    m.interrupt(cpu1, model.interrupt("system_reset"))
    depth = len(cpu1.stack)
    m.start(cpu2, model.operation("kprobes.unregister"), {"probe": 0, "site": 9})
    settle(cpu2)  # up to synchronize_rcu, which waits for CPU 1
    while len(cpu1.stack) >= depth:  # the system reset returns; CPU 1 stays in the handler
        m.advance(cpu1)
    assert cpu1.stack and not cpu2.runnable()  # the grace period is not over
    m.finish()
    assert m.failure is None
    assert kstate(m).user == {}
