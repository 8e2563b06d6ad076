"""Fault injection as a search decision: failslab / fail_page_alloc, one recorded step each.

A ``fail`` step (``Step("fail", cpu=N, name=SITE)``) arms one failure: the
next allocation of that kind on CPU N returns NULL, as syzkaller's
``fail_nth`` makes the n-th allocation of a system call fail. The search
chooses these steps like any other, the shrinker deletes the ones a failure
does not need, and the kernel's own error paths then run as written.

Sites, by the kernel allocator they fail (``CONFIG_FAULT_INJECTION``, with
FAILSLAB and FAIL_PAGE_ALLOC as in syzkaller's configs):

* ``mm_alloc``: ``allocate_mm()``'s ``kmem_cache_alloc`` in ``mm_alloc()``
  (kernel/fork.c) -- failslab;
* ``pgtable_alloc``: a page-table page (``__pud_alloc``, ``__pmd_alloc``,
  ``__pte_alloc`` in mm/memory.c; ``pte_alloc_kernel`` and the book3s64
  pgtable caches for kernel mappings) -- fail_page_alloc / failslab;
* ``get_vm_area``: ``__get_vm_area_node()``'s ``kzalloc_node`` of the
  ``vm_struct`` (mm/vmalloc.c) -- failslab.

A WARN the kernel prints on such a failure path is expected under fault
injection and is not a finding (:func:`warn_on_alloc_failure`): the machine
logs it and the code goes on as the kernel does without panic_on_warn.
docs/fidelity.md lists them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import attrs

from fuzzer._errors import KernelWarning

if TYPE_CHECKING:
    from fuzzer._machine import Cpu, Machine

#: What a ``fail`` step may name.
SITES = ("mm_alloc", "pgtable_alloc", "get_vm_area")


@attrs.define(eq=False)
class FaultInjection:
    """Armed and injected failures of one machine."""

    armed: set[tuple[int, str]] = attrs.Factory(set)
    """(CPU, site) whose next allocation fails."""
    injected: list[tuple[int, str]] = attrs.Factory(list)
    """(CPU, site) of every failure returned so far, in order."""


def state(m: Machine) -> FaultInjection:
    fi = m.state.get("fault_injection")
    if fi is None:
        fi = m.attach("fault_injection", FaultInjection())
    return fi


def enabled(m: Machine) -> bool:
    """``CONFIG_FAULT_INJECTION``: the search may choose ``fail`` steps."""
    return m.config.enabled("CONFIG_FAULT_INJECTION")


def can_arm(m: Machine, cpu: int, site: str) -> bool:
    """A ``fail`` step makes sense: booted, enabled, a known site not already armed there."""
    return (m.booted and enabled(m) and site in SITES and 0 <= cpu < len(m.cpus)
            and (cpu, site) not in state(m).armed)


def arm(m: Machine, cpu: int, site: str) -> None:
    """Record and apply a ``fail`` step: CPU ``cpu``'s next ``site`` allocation fails."""
    from fuzzer._steps import Step

    if not can_arm(m, cpu, site):
        raise ValueError(f"cannot arm a {site!r} failure on CPU {cpu} now;"
                         f" sites: {', '.join(SITES)}")
    m.steps.append(Step("fail", cpu=cpu, name=site))
    state(m).armed.add((cpu, site))


def should_fail(cpu: Cpu, site: str) -> bool:
    """``should_failslab()`` / ``should_fail_alloc_page()``: consume an armed failure."""
    fi = cpu.m.state.get("fault_injection")
    if fi is None or (cpu.n, site) not in fi.armed:
        return False
    fi.armed.discard((cpu.n, site))
    fi.injected.append((cpu.n, site))
    cpu.m.log.append(f"FAULT_INJECTION: forcing a failure of {site} on CPU {cpu.n}")
    return True


def injected_on(cpu: Cpu, site: str) -> bool:
    """Whether a ``site`` failure was injected on this CPU in this example."""
    fi = cpu.m.state.get("fault_injection")
    return fi is not None and (cpu.n, site) in fi.injected


def warn_on_alloc_failure(cpu: Cpu, site: str, at: str, *, function: str = "", detail: str = "") -> None:
    """A ``WARN_ON(!ptr)`` the kernel prints when an allocation at ``site`` failed.

    Expected under fault injection (syzkaller does not count such WARNs under
    ``fail_nth``): logged, and the caller takes its error path. Where no
    failure was injected the allocation cannot have failed in the model, so
    the WARN is a finding (a plugin's routine returned NULL on its own).
    """
    if injected_on(cpu, site):
        cpu.m.log.append(f"WARNING: CPU: {cpu.n} at {at} {function} (expected under fault"
                         f" injection of {site}: not a finding) {detail}".rstrip())
        return
    raise KernelWarning(at, function=function, detail=detail)
