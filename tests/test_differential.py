"""Differential state machine: the Radix and Hash models agree on what both must agree on.

The same operations, hotplug and interrupts drive a Radix machine and a Hash
machine of the same kernel version. Radix patches through the temporary mm
(from next-20221215 on) and Hash through the vmalloc alias, so their steps
differ; their outcomes must not: the patched kernel text, each operation's
return value, kernel failure or not, and the end state.
"""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, precondition, rule, run_state_machine_as_test

from fuzzer import KernelFailure
from fuzzer._machine import Machine
from fuzzer.kernel.patching import context

from modelkit import make_model

CPUS = 3


def _machines_for(kernel: str, hash_plugins: tuple[str, ...] = ()) -> type[RuleBasedStateMachine]:
    models = (make_model(kernel, mmu="radix", cpus=CPUS),
              make_model(kernel, mmu="hash", cpus=CPUS, plugins=hash_plugins))
    op_names = [op.name for op in models[0].operations]
    assert op_names == [op.name for op in models[1].operations]
    irq_names = [s.name for s in models[0].interrupts]

    class RadixAgreesWithHash(RuleBasedStateMachine):
        def __init__(self) -> None:
            super().__init__()
            self.ms = [Machine(model) for model in models]
            self.outcomes = self._both(lambda m: m.boot(0))

        def _both(self, action: Any) -> list[Any]:
            """Apply ``action`` to each machine and run it to completion; the outcomes."""
            out: list[Any] = []
            for m in self.ms:
                try:
                    result = action(m)
                    m.run_to_completion()
                    out.append(("ok", getattr(result, "result", None)))
                except KernelFailure as failure:
                    out.append(("failure", failure.signature))
            return out

        def _agree(self) -> None:
            radix, hash_ = self.ms
            assert self.outcomes[0] == self.outcomes[1]
            kernel_mem = [{pa: w for pa, w in m.mem.items() if pa < m.layout.user_memory_start}
                          for m in self.ms]
            assert kernel_mem[0] == kernel_mem[1], "the patched kernel text differs"
            assert [c.online for c in radix.cpus] == [c.online for c in hash_.cpus]
            assert radix.static_keys == hash_.static_keys
            for a, b in zip(radix.cpus, hash_.cpus, strict=True):
                assert bool(context(a).addr) == bool(context(b).addr)
                # A watchpoint on a patching address watches a different address on each
                # MMU (a random user address, a vmalloc alias); which slots are set agrees.
                assert [d is None for d in a.dawr] == [d is None for d in b.dawr]
                assert [d is None for d in a.current_brk] == [d is None for d in b.current_brk]

        def _cpu(self, i: int, ok: Any) -> int | None:
            cands = [c.n for c in self.ms[0].cpus if ok(self.ms[0], c)]
            return cands[i % len(cands)] if cands else None

        @rule(i=st.integers(0, CPUS - 1))
        def online(self, i: int) -> None:
            n = self._cpu(i, lambda m, c: m.can_online(c))
            if n is not None:
                self.outcomes = self._both(lambda m: m.cpu_up(m.cpus[n]))
                self._agree()

        @rule(i=st.integers(0, CPUS - 1))
        def offline(self, i: int) -> None:
            n = self._cpu(i, lambda m, c: m.can_offline(c))
            if n is not None:
                self.outcomes = self._both(lambda m: m.cpu_down(m.cpus[n]))
                self._agree()

        @rule(i=st.integers(0, CPUS - 1), name=st.sampled_from(op_names), data=st.data())
        def operate(self, i: int, name: str, data: st.DataObject) -> None:
            n = self._cpu(i, lambda m, c: m.can_start(c))
            op = models[0].operation(name)
            args = {k: data.draw(s, label=k) for k, s in op.args.items()}
            if n is not None:
                # The outcomes include each operation's return value.
                self.outcomes = self._both(
                    lambda m: m.start(m.cpus[n], m.model.operation(name), args))
                self._agree()

        @precondition(lambda self: bool(irq_names))
        @rule(i=st.integers(0, CPUS - 1), name=st.sampled_from(irq_names or ["-"]))
        def interrupt(self, i: int, name: str) -> None:
            src = models[0].interrupt(name)
            n = self._cpu(i, lambda m, c: m.can_interrupt(c, src))
            if n is not None:
                self.outcomes = self._both(lambda m: m.interrupt(m.cpus[n], m.model.interrupt(name)))
                self._agree()

        def teardown(self) -> None:
            self.outcomes = self._both(lambda m: m.finish())
            self._agree()

    return RadixAgreesWithHash


SETTINGS = settings(max_examples=150, stateful_step_count=20, deadline=None,
                    suppress_health_check=list(HealthCheck), database=None,
                    report_multiple_bugs=False)


@pytest.mark.parametrize("kernel", ["v6.1", "v6.2"])
def test_radix_and_hash_agree(kernel):
    run_state_machine_as_test(_machines_for(kernel), settings=SETTINGS)


def test_a_hash_only_mistake_makes_the_models_disagree():
    """Stale HPTEs, a mistake in the Hash model alone: the differential machine notices."""
    broken = _machines_for("v6.2", ("fuzzer_plugins.mistakes.hash_no_hpte_flush",))
    with pytest.raises(AssertionError):
        run_state_machine_as_test(broken, settings=SETTINGS)
