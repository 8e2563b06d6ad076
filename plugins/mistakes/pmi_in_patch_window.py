"""A perf PMI that walks the user stack while the patching mm is loaded.

Delivers the perf PMI as an NMI, ignoring the soft mask, so it can land in
the patch window: ``copy_from_user_nofault`` then reads through the patching
mm (which maps kernel text) instead of the task's own -- the x86
``nmi_uaccess_okay`` lesson. Caught by the "uaccess under a foreign mm"
invariant. (Real ppc64 delivers soft-masked PMIs as NMIs; see
fuzzer_plugins.interrupts.)
"""

from __future__ import annotations

from fuzzer import InterruptSource, RunConfig, hookimpl

from ..interrupts import perf_event_interrupt


@hookimpl
def fuzzer_interrupt_sources(config: RunConfig) -> list[InterruptSource]:
    return [InterruptSource("perf_pmi_nmi", perf_event_interrupt, nmi=True,
                            doc="a PMI delivered as an NMI, even in the patch window")]
