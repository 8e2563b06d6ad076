"""Code patching at v6.1 (linux-source-6.1, 6.1.192): a per-CPU vmalloc-area alias in init_mm.

Every MMU patches through ``text_poke_area``: no temporary mm yet.
Line numbers are those of v6.1's arch/powerpc/lib/code-patching.c.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from fuzzer._errors import KernelBug, KernelWarning
from fuzzer._mm import PAGE_KERNEL, Pte
from fuzzer._oops import deref
from fuzzer._routines import routine
from fuzzer.kernel.patching.common import (
    CP,
    V61,
    Gen,
    context,
    get_patch_pfn,
    line,
)

if TYPE_CHECKING:
    from fuzzer._machine import Cpu


@routine("poking_init", CP, versions=V61)
def poking_init_v61(cpu: Cpu) -> Gen:
    """``poking_init()`` (code-patching.c:89, v6.1; built only with STRICT_KERNEL_RWX).

    ``BUG_ON(!cpuhp_setup_state(...))``, then enable ``poking_init_done``. For
    a DYN state cpuhp_setup_state returns > 0 or < 0, never 0: the BUG_ON
    cannot fire and a failure still enables the key (fixed by 071c95c1acbd).
    """
    if not cpu.m.config.enabled("CONFIG_STRICT_KERNEL_RWX"):
        return  # the weak, empty poking_init of init/main.c
    k = cpu.k
    ret = yield from k.__cpuhp_setup_state(
        cpu, "powerpc/text_poke:online", k.text_area_cpu_up, k.text_area_cpu_down
    )
    if ret == 0:
        raise KernelBug(line(cpu, "poking_bug"))
    cpu.m.static_keys["poking_init_done"] = True
    yield

@routine("text_area_cpu_up", CP, versions=V61)
def text_area_cpu_up_v61(cpu: Cpu) -> Gen:
    """``text_area_cpu_up()`` (code-patching.c:50, v6.1).

    ``get_vm_area(PAGE_SIZE)``; map and unmap a page there so the init_mm
    page tables exist before patching needs them; store ``text_poke_area``
    for this CPU (this_cpu_write: the callback runs on the CPU coming up).
    """
    k = cpu.k
    area = yield from k.get_vm_area(cpu, cpu.m.run.page_size)
    if area is None:
        raise KernelWarning(line(cpu, "cpu_up_warn"), detail=f"Failed to create text area for cpu {cpu.n}")
    err = yield from k.map_patch_area(cpu, cpu.m.state["empty_zero_page"], area.addr)
    if err:
        return err
    yield from k.unmap_patch_area(cpu, area.addr)
    context(cpu).area = area
    context(cpu).addr = area.addr
    return 0

@routine("text_area_cpu_down", CP, versions=V61)
def text_area_cpu_down_v61(cpu: Cpu) -> Gen:
    """``text_area_cpu_down()`` (code-patching.c:76, v6.1): ``free_vm_area`` of this CPU's area."""
    yield from cpu.k.free_vm_area(cpu, context(cpu).area)  # NULL if this CPU never got one
    return 0

@routine("patch_instruction", CP, versions=V61)
def patch_instruction_v61(cpu: Cpu, addr: int, instr: int) -> Gen:
    """``patch_instruction()`` (code-patching.c:205, v6.1).

    Returns 0 for a freed init section (the model has none), else
    ``do_patch_instruction``.
    """
    return (yield from cpu.k.do_patch_instruction(cpu, addr, instr))

@routine("do_patch_instruction", CP, versions=V61, inlined=True)
def do_patch_instruction_v61(cpu: Cpu, addr: int, instr: int) -> Gen:
    """``do_patch_instruction()`` (code-patching.c:175, v6.1).

    Raw write without STRICT_KERNEL_RWX or before ``poking_init_done``;
    otherwise ``__do_patch_instruction`` with interrupts saved and disabled.
    """
    m = cpu.m
    if not m.config.enabled("CONFIG_STRICT_KERNEL_RWX") or not m.static_keys.get("poking_init_done"):
        return (yield from cpu.k.raw_patch_instruction(cpu, addr, instr))
    flags = cpu.local_irq_save()
    err = yield from cpu.k.__do_patch_instruction(cpu, addr, instr)
    cpu.local_irq_restore(flags)
    return err

@routine("__do_patch_instruction", CP, versions=V61, inlined=True)
def __do_patch_instruction_v61(cpu: Cpu, addr: int, instr: int) -> Gen:
    """``__do_patch_instruction()`` (code-patching.c:150, v6.1): the vm-area alias path.

    Set this CPU's alias PTE in init_mm (``virt_to_kpte`` each time) to the
    text page with PAGE_KERNEL; ptesync on Radix; store; ``pte_clear``
    (init_mm is exempt from the lock assert; on Hash the clear flushes the
    HPTE); ``flush_tlb_kernel_range`` -- global, since every CPU could have
    translated the alias.
    """
    m = cpu.m
    k = cpu.k
    ctx = context(cpu)
    area = deref(ctx.area, "struct vm_struct", member="addr")  # __this_cpu_read(text_poke_area)->addr
    text_poke_addr = area.addr & ~(m.run.page_size - 1)
    patch_addr = text_poke_addr + (addr & (m.run.page_size - 1))
    pte = yield from k.virt_to_kpte(cpu, text_poke_addr)
    yield from k.__set_pte_at(cpu, m.init_mm, text_poke_addr, pte, Pte(get_patch_pfn(m, addr), PAGE_KERNEL))
    if m.mmu.radix:
        yield
        m.mmu.ptesync(cpu)
    err = yield from k.__patch_instruction(cpu, addr, instr, patch_addr)
    yield from k.pte_clear(cpu, m.init_mm, text_poke_addr, pte)
    yield from k.flush_tlb_kernel_range(cpu, text_poke_addr, text_poke_addr + m.run.page_size)
    return err
