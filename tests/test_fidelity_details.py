"""Smaller places where the model now follows the kernel line by line (issue 15 item 6)."""

from __future__ import annotations

import pytest

from fuzzer import PAGE_OFFSET, KernelWarning, Pte, Step, hookimpl, routine
from fuzzer._engine import apply_step
from fuzzer._machine import Machine
from fuzzer.kernel import CP, SINCE_TEMP_MM, V61
from fuzzer.testing import plugin_module
from fuzzer_plugins.hash import mm_is_thread_local
from fuzzer_plugins.kprobes import SYMBOLS, kstate, site_addr

from modelkit import boot_steps, make_model


def _drive(gen):
    try:
        while True:
            next(gen)
    except StopIteration as stop:
        return stop.value


def _booted(kernel: str = "v6.2", mmu: str = "radix", **kw) -> Machine:
    m = Machine(make_model(kernel, mmu=mmu, **kw))
    apply_step(m, boot_steps()[0])
    return m


def test_unregister_waits_until_no_cpu_is_inside_the_probe_handler():
    """synchronize_rcu() returns only after a CPU single-stepping the probe's slot is done:
    the slot is not free (for a later probe to reuse) while that CPU can still run it."""
    m = _booted()
    for step in [Step("online", cpu=1)]:
        apply_step(m, step)
    m.run_to_completion()
    apply_step(m, Step("start", cpu=0, name="kprobes.register", args={"site": 0}))
    m.run_to_completion()
    slot = kstate(m).user[(0, 0)].insn_slot
    apply_step(m, Step("start", cpu=1, name="kprobes.hit", args={"site": 0}))
    cpu0, cpu1 = m.cpus[0], m.cpus[1]
    while "kprobe_handler" not in [f.function for f in cpu1.trace()]:
        m.advance(cpu1)
    apply_step(m, Step("start", cpu=0, name="kprobes.unregister", args={"site": 0}))
    for _ in range(500):
        if not cpu0.runnable():
            break
        m.advance(cpu0)
    assert not cpu0.runnable() and "synchronize_rcu" in [f.function for f in cpu0.trace()]
    assert slot not in kstate(m).free_slots
    m.run_to_completion()
    assert slot == min(kstate(m).free_slots)  # freed once CPU 1 left; the next handed out
    m.check_end_state()


@pytest.mark.parametrize(("kernel", "file", "symbol"), [
    ("v6.1", "arch/powerpc/kernel/kprobes.c", "__kretprobe_trampoline"),
    ("v6.2", "arch/powerpc/kernel/kprobes.c", "__kretprobe_trampoline"),
    ("v6.12", "arch/powerpc/kernel/rethook.c", "arch_rethook_trampoline"),
])
def test_arch_init_kprobes_per_version(kernel, file, symbol):
    model = make_model(kernel)
    assert model.routine_infos["arch_init_kprobes"].file == file
    m = _booted(kernel)
    assert list(kstate(m).table) == [PAGE_OFFSET + SYMBOLS[symbol].offset]


def _failing_patch(versions):
    @routine("patch_instruction", CP, versions=versions, override=True)
    def patch_instruction(cpu, addr, instr):
        yield
        return -1

    @hookimpl
    def fuzzer_routines(config):
        return [patch_instruction]

    return plugin_module("failing_patch", fuzzer_routines=fuzzer_routines)


@pytest.mark.parametrize(("kernel", "line"), [("v6.1", 195), ("next-20221215", 195),
                                              ("v6.2", 195), ("v6.12", 178)])
def test_arch_arm_kprobe_warns_at_its_line(kernel, line):
    versions = V61 if kernel == "v6.1" else SINCE_TEMP_MM
    m = Machine(make_model(kernel, extra=[_failing_patch(versions)],
                           config=["CONFIG_FUNCTION_TRACER=n"]))
    with pytest.raises(KernelWarning) as warn:
        apply_step(m, boot_steps()[0])
    assert warn.value.at == f"arch/powerpc/kernel/kprobes.c:{line}"


@pytest.mark.parametrize(("kernel", "line"), [("v6.1", 140), ("next-20221215", 273),
                                              ("v6.2", 271), ("v6.12", 271)])
def test_unmap_patch_area_warns_at_its_line(kernel, line):
    m = _booted(kernel, config=["CONFIG_DEBUG_VM=n"])  # next-20221215 boots only so
    cpu = m.cpus[0]
    with pytest.raises(KernelWarning) as warn:
        _drive(cpu.k.unmap_patch_area(cpu, m.alloc_vmalloc(m.run.page_size)))
    assert warn.value.at == f"arch/powerpc/lib/code-patching.c:{line}"


@pytest.mark.parametrize(("kernel", "function", "line"), [
    ("v6.1", "set_pte_at", 197), ("v6.2", "set_pte_at", 197), ("v6.12", "set_ptes", 215)])
def test_set_pte_at_warns_at_its_line(kernel, function, line):
    m = _booted(kernel)
    cpu = m.cpus[0]
    va = m.alloc_vmalloc(m.run.page_size)
    m.map_page(m.init_mm, va, Pte(m.alloc_pfn(), m.init_mm.lookup(va) or 0))
    ptr = _drive(cpu.k.virt_to_kpte(cpu, va))
    with pytest.raises(KernelWarning) as warn:
        _drive(cpu.k.set_pte_at(cpu, m.init_mm, va, ptr, ptr.get()))
    assert (warn.value.at, warn.value.function) == (f"arch/powerpc/mm/pgtable.c:{line}", function)


def test_hash_flush_local_only_when_the_mm_is_thread_local():
    m = _booted("v6.1", mmu="hash")
    cpu0, cpu1 = m.cpus[0], m.cpus[1]
    mm = m.init_mm
    mm.cpumask.clear()
    assert not mm_is_thread_local(cpu0, mm)  # 6.1: init_mm's mask is empty -> tlbie
    mm.cpumask.add(0)
    assert mm_is_thread_local(cpu0, mm)  # 6.12 with only the boot CPU up -> tlbiel
    assert not mm_is_thread_local(cpu1, mm)
    mm.cpumask.add(1)
    assert not mm_is_thread_local(cpu0, mm)


def test_radix_loaded_mm_changes_at_the_pid_write_before_the_isync():
    m = _booted()
    cpu = m.cpus[0]
    mm = m.new_mm("next")
    gen = cpu.k.switch_mmu_context(cpu, m.init_mm, mm)
    next(gen)
    assert cpu.loaded_mm is m.init_mm
    next(gen)  # mtspr PID
    assert cpu.loaded_mm is mm and cpu.hw.csi_pending
    _drive(gen)  # isync
    assert cpu.loaded_mm is mm and not cpu.hw.csi_pending


@pytest.mark.parametrize(("nwords", "sizes"), [(1, [4]), (2, [8]), (5, [8, 8, 4])])
def test_612_copy_to_kernel_nofault_stores_8_bytes_at_a_time(nwords, sizes):
    m = _booted("v6.12")
    cpu = m.cpus[0]
    seen = []
    store = m.store

    def recording(c, va, value, size=4):
        seen.append(size)
        return store(c, va, value, size)

    m.store = recording  # type: ignore[method-assign]
    dst = PAGE_OFFSET + 0x0030_0000
    code = tuple(0x3860_0000 | i for i in range(nwords))
    cpu.irqs_enabled = True
    assert _drive(cpu.k.patch_instructions(cpu, dst, code, False, nwords)) == 0
    assert seen == sizes
    assert [m.fetch(cpu, dst + 4 * i) for i in range(nwords)] == list(code)
    seen.clear()
    assert _drive(cpu.k.patch_instructions(cpu, dst, (0x7FE0_0008,), True, 3)) == 0
    assert seen == [4, 4, 4]  # patch_memset32


def test_612_copy_fault_returns_efault_and_still_flushes():
    m = _booted("v6.12")
    cpu = m.cpus[0]
    calls = []
    m.store = lambda c, va, value, size=4: False  # type: ignore[method-assign]
    sync = m.mmu.sync
    m.mmu.sync = lambda c: (calls.append("sync"), sync(c))[1]  # type: ignore[method-assign]
    gen = cpu.k.__patch_instructions(cpu, PAGE_OFFSET + 0x0030_0000, PAGE_OFFSET + 0x0030_0000,
                                     (1, 2, 3), False, 3)
    assert _drive(gen) == -14
    assert calls == ["sync"]  # smp_wmb and flush_icache_range after the fault


def test_kprobe_site_layout_unchanged():
    assert site_addr(0) == PAGE_OFFSET + SYMBOLS["do_sys_open"].offset
