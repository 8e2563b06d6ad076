"""Disabling one of two kprobes at an address disarms them both (v6.2).

``__disable_kprobe`` without the ``aggr_kprobe_disabled()`` test: disabling
one probe on an aggregator disarms and disables the aggregator although
another probe on its list is still enabled -- that probe silently stops
firing. Nothing executes wrongly (the text holds the original instruction),
so only the check of the kprobe hash table against the text sees it; it
needs two probes at one address, registered by operations, and one disabled.
"""

from __future__ import annotations

from typing import Any

from fuzzer import Cpu, RunConfig, hookimpl, routine
from fuzzer.kernel import Gen
from fuzzer_plugins.kprobes import KPROBES_C, Kprobe, get_valid_kprobe, kstate


@routine("__disable_kprobe", KPROBES_C, versions=("v6.2",), override=True, inlined=True)
def __disable_kprobe(cpu: Cpu, p: Kprobe) -> Gen:
    """__disable_kprobe disarming the aggregator whatever its other probes want."""
    orig = get_valid_kprobe(cpu.m, p)
    if orig is None:
        return None
    if not p.disabled:
        if p is not orig:
            p.disabled = True
        # missing: p == orig || aggr_kprobe_disabled(orig)
        if not kstate(cpu.m).all_disarmed and not orig.disabled:
            yield from cpu.k.disarm_kprobe(cpu, orig)
        orig.disabled = True
    return orig


@hookimpl
def fuzzer_routines(config: RunConfig) -> list[Any]:
    return [__disable_kprobe]
