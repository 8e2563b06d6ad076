"""Radix without tlbie (``disable_tlbie``): kernel flushes by IPI, and what that means at each version."""

from __future__ import annotations

import json

import pytest

from fuzzer import ConfigOption, Step, UsageError, hookimpl
from fuzzer._engine import apply_step
from fuzzer._machine import Machine
from fuzzer.testing import plugin_module, run_cli, search

from modelkit import boot_steps, make_model

KNOB = "CONFIG_CMDLINE=disable_tlbie"


def _without_lockdep(kernel: str, **kw):
    """A model with CONFIG_PROVE_LOCKING=n: the option comes from the lockdep model when it is
    loaded; otherwise from a throw-away plugin defining it (the smp model reads it either way)."""
    config = [KNOB, "CONFIG_PROVE_LOCKING=n"]
    try:
        return make_model(kernel, config=config, **kw)
    except UsageError:
        @hookimpl
        def fuzzer_addconfig():
            return [ConfigOption("CONFIG_PROVE_LOCKING", True, "lockdep")]

        prove = plugin_module("prove", fuzzer_addconfig=fuzzer_addconfig)
        return make_model(kernel, config=config, extra=[prove], **kw)


def test_v61_with_disable_tlbie_is_a_known_finding(tmp_path):
    """Declared through radix's fuzzer_known_findings: named in the header, counted, searched
    past (exit 0); only on Radix."""
    code, out, _ = run_cli("run", "--kernel", "v6.1", "--seed", "1", "--config", KNOB,
                           "--max-examples", "50", "--corpus", "none")
    assert code == 0, out
    assert "known finding: disable_tlbie" in out
    # The WARNING, and (the kernel going on past it) two CPUs deadlocked in their IPIs.
    assert "2 known findings seen" in out and "(csd_lock_wait; a hard LOCKUP)" in out
    _, out, _ = run_cli("run", "--kernel", "v6.1", "--mmu", "hash", "--seed", "1", "--config",
                        KNOB, "--max-examples", "1", "--corpus", "none")
    assert "known finding: disable_tlbie" not in out


def test_v61_with_disable_tlbie_warns_on_the_first_patch_after_boot(tmp_path):
    """A finding on v6.1 as released: its alias path (code-patching.c:170, IRQs off since :188)
    flushes with on_each_cpu when tlbie is off, and lockdep_assert_irqs_enabled() fires."""
    path = tmp_path / "r.json"
    code, out, _ = run_cli("run", "--kernel", "v6.1", "--seed", "1", "--config", KNOB,
                           "--report-known", "--report-json", str(path), "--corpus", "none")
    assert code == 1, out
    assert "WARNING: CPU: 0 PID: 1 at kernel/smp.c:915 smp_call_function_many_cond" in out
    assert "boot: disable_tlbie" in out
    data = json.loads(path.read_text())
    frames = [f["function"] for f in data["trace"]]
    assert frames[:4] == ["smp_call_function_many_cond", "radix__flush_tlb_kernel_range",
                          "__do_patch_instruction", "do_patch_instruction"]
    assert data["steps"] == [{"action": "boot", "seed": 0}]


def test_v61_with_disable_tlbie_and_no_lockdep_deadlocks_by_search():
    """Two CPUs patching at once (kprobes under text_mutex, a static key under its own mutex),
    each spinning with IRQs off for the other's IPI: the walk finds it from a seed (a known
    finding of disable_tlbie boots, reported here as an ordinary one)."""
    outcome = search(_without_lockdep("v6.1"), seed=1, max_examples=2000, known=())
    assert outcome.status == "failed"
    assert outcome.failure is not None and outcome.failure.kind == "DEADLOCK"
    assert outcome.failure.signature.function == "smp_call_function_many_cond"
    assert "smp_call_function_many_cond" in str(outcome.failure)
    actions = [s.action for s in outcome.steps]
    assert "online" in actions and actions.count("start") >= 2


@pytest.mark.parametrize("kernel", ["v6.2", "v6.12"])
def test_temp_mm_versions_stay_clean_without_tlbie(kernel):
    code, out, _ = run_cli("run", "--kernel", kernel, "--seed", "2", "--config", KNOB,
                           "--max-examples", "400", "--corpus", "none")
    assert code == 0, out


@pytest.mark.parametrize("kernel", ["v6.2", "v6.12"])
def test_without_lockdep_the_temp_mm_versions_do_not_deadlock(kernel):
    assert search(_without_lockdep(kernel), seed=3, max_examples=400).status == "passed"


def test_hash_ignores_disable_tlbie():
    """setup_disable_tlbie(): "Unable to disable TLBIE with Hash MMU" -- nothing changes."""
    code, out, _ = run_cli("run", "--kernel", "v6.1", "--mmu", "hash", "--seed", "1",
                           "--config", KNOB, "--max-examples", "300", "--corpus", "none")
    assert code == 0, out
    assert "boot: disable_tlbie" not in out


def test_uniprocessor_on_each_cpu_runs_locally_without_the_check():
    code, out, _ = run_cli("run", "--kernel", "v6.1", "--seed", "1", "--config", KNOB,
                           "--config", "CONFIG_SMP=n", "--max-examples", "300", "--corpus", "none")
    assert code == 0, out


def test_ipi_flush_reaches_every_online_cpu():
    """v6.1's text_area_cpu_up flushes with IRQs on: CPU 0, idle, takes the IPI and drops its
    kernel translations; CPU 1's bring-up waits for it and completes."""
    m = Machine(_without_lockdep("v6.1"))
    apply_step(m, boot_steps()[0])
    m.cpus[0].tlb[(0, 0x1234)] = object()  # a stale kernel (PID 0) translation
    apply_step(m, Step("online", cpu=1))
    m.run_to_completion()
    assert m.cpus[1].online
    assert (0, 0x1234) not in m.cpus[0].tlb
    assert not m.cpus[0].state["call_single_queue"]


def test_unknown_boot_parameter_is_a_usage_error():
    code, _, err = run_cli("run", "--config", "CONFIG_CMDLINE=nosmp")
    assert code == 4
    assert "ERROR:" in err and "nosmp" in err and "disable_tlbie" in err
