"""init_aggr_kprobe publishes the aggregator before filling it in.

When a second kprobe is registered at an address, ``register_aggr_kprobe()``
(kernel/kprobes.c:1305-1381, v6.12) -- and, for a probe it can optimize,
``try_to_optimize_kprobe()`` (:851-879) -- allocates an aggregator with
``alloc_aggr_kprobe()`` (kzalloc: every field zero) and ``init_aggr_kprobe()``
(kernel/kprobes.c:1283-1300) fills it in -- ``copy_kprobe(p, ap)`` (the
original's insn slot and opcode), its flags and handlers, the probe list --
and only as its last step swaps it into ``kprobe_table`` in place of the
original probe (``hlist_replace_rcu``): RCU's rule that an object is
published only once it is initialised (``rcu_assign_pointer``;
Documentation/RCU/whatisRCU.rst). The variant moves the
``hlist_replace_rcu`` to the top of ``init_aggr_kprobe`` ("take the old
probe's place first, then set the new one up"), a reordering that reads
naturally because the original probe stays armed and ``kprobe_mutex`` and
``text_mutex`` are held throughout -- but ``kprobe_handler`` takes neither.

The bad interleaving, on two CPUs and four events: a first probe at an
address is registered and armed (the trap is in the text); CPU A registers a
second probe there and, inside ``init_aggr_kprobe``, publishes the zeroed
aggregator; CPU B executes the probed instruction, takes the trap and looks
the address up -- it finds the aggregator, with no handler and
``ainsn.insn`` still NULL -- and single-steps it (``try_to_emulate`` reads
``p->ainsn.insn``) before A's ``copy_kprobe``: a NULL pointer dereference in
the program check. B's lookup and single-step must both fall in A's window
between the publish and the copy. No known upstream instance; the
publish-after-initialise order is the one ``hlist_replace_rcu``'s callers
throughout kprobes keep.
"""

from __future__ import annotations

from collections.abc import Generator
from typing import Any

from fuzzer import Cpu, RunConfig, hookimpl, routine

from ..kprobes import KPROBES_C, Kprobe, ProbeList, kstate


@routine("init_aggr_kprobe", KPROBES_C, override=True, inlined=True)
def init_aggr_kprobe(cpu: Cpu, ap: Kprobe, p: Kprobe) -> Generator[Any, None, Any]:
    """init_aggr_kprobe with its hlist_replace_rcu moved to its top."""
    m = cpu.m
    m.note_access(cpu, ("kprobe table", p.addr), True)
    kstate(m).table[p.addr] = ap  # hlist_replace_rcu, moved above the rest: ap still zeroed
    yield  # copy_kprobe(p, ap): the original's ainsn and opcode
    ap.opcode, ap.insn_slot, ap.armed, ap.disabled = p.opcode, p.insn_slot, p.armed, p.disabled
    ap.children = ProbeList([p])  # INIT_LIST_HEAD, list_add_rcu
    p.parent = ap


@hookimpl
def fuzzer_routines(config: RunConfig) -> list[Any]:
    return [init_aggr_kprobe]
