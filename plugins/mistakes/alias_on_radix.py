"""v6.2 patching through the vmalloc alias on Radix + SMP, as v6.1 did.

A ``mm_patch_enabled()`` that forgets Radix: every patch maps the text page
at this CPU's alias in init_mm, with interrupts off, and then calls
``flush_tlb_kernel_range``. With tlbie that is v6.1's design, and correct.
Booted with ``disable_tlbie`` the flush becomes ``on_each_cpu`` with
interrupts disabled: lockdep's ``lockdep_assert_irqs_enabled()`` in
``smp_call_function_many_cond`` (kernel/smp.c:915) warns on the first patch
after boot, and without lockdep two CPUs patching at once wait for each
other's IPIs for ever. Only the model of the IPI flush shows it.
"""

from __future__ import annotations

from collections.abc import Generator
from typing import Any

from fuzzer import Cpu, RunConfig, hookimpl, routine
from fuzzer.kernel import CP

V62 = ("v6.2",)


@routine("patch_instruction", CP, versions=V62, override=True)
def patch_instruction(cpu: Cpu, addr: int, instr: int) -> Generator[Any, None, Any]:
    """v6.2's patch_instruction with a mm_patch_enabled() that is always false."""
    m = cpu.m
    if not m.config.enabled("CONFIG_STRICT_KERNEL_RWX") or not m.static_keys.get("poking_init_done"):
        return (yield from cpu.k.raw_patch_instruction(cpu, addr, instr))
    flags = cpu.local_irq_save()
    err = yield from cpu.k.__do_patch_instruction(cpu, addr, instr)
    cpu.local_irq_restore(flags)
    return err


@routine("poking_init", CP, versions=V62, override=True)
def poking_init(cpu: Cpu) -> Generator[Any, None, Any]:
    """v6.2's poking_init registering the alias callbacks whatever the MMU."""
    if not cpu.m.config.enabled("CONFIG_STRICT_KERNEL_RWX"):
        return
    k = cpu.k
    ret = yield from k.__cpuhp_setup_state(
        cpu, "powerpc/text_poke:online", k.text_area_cpu_up, k.text_area_cpu_down
    )
    if ret >= 0:
        cpu.m.static_keys["poking_init_done"] = True
    yield


@hookimpl
def fuzzer_routines(config: RunConfig) -> list[Any]:
    return [patch_instruction, poking_init]
