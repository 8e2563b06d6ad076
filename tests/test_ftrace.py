"""ftrace as powerpc does it: boot-time patching at every version, ftrace_lock only at run time."""

from __future__ import annotations

import json

import pytest

from fuzzer import PAGE_OFFSET, ConfigOption, EndStateViolation, Step
from fuzzer._engine import apply_step
from fuzzer._machine import Machine
from fuzzer.testing import run_cli
from fuzzer_plugins.ftrace import BL_MCOUNT, FTRACE_SITES, MFLR_R0, NOP, site

from modelkit import boot_steps, make_model, replay

#: What next-20221215 with the function tracer must die of: the first patch after
#: poking_init is ftrace_init's, on the boot CPU's idle task, still in start_kernel.
NEXT_FTRACE_CHAIN = ["assert_pte_locked", "patch_instruction", "ftrace_make_nop", "ftrace_init",
                     "start_kernel"]


def _report(tmp_path, *argv: str) -> tuple[int, str, dict]:
    path = tmp_path / "r.json"
    code, out, _ = run_cli("run", *argv, "--report-json", str(path), "--corpus", "none")
    return code, out, json.loads(path.read_text()) if path.exists() else {}


@pytest.mark.parametrize("kernel", ["v6.1", "v6.2", "v6.12"])
@pytest.mark.parametrize("mmu", ["radix", "hash"])
def test_ftrace_init_patches_every_site_at_boot(kernel, mmu):
    m, failure = replay(make_model(kernel, mmu=mmu), boot_steps())
    assert failure is None
    cpu = m.cpus[0]
    # As built: 6.12's two patchable-entry nops; before, -mprofile-kernel's 'mflr r0; bl _mcount'.
    built = (NOP, NOP) if kernel == "v6.12" else (MFLR_R0, BL_MCOUNT)
    for i in range(FTRACE_SITES):
        pa = site(i) - PAGE_OFFSET
        assert (m.pristine_text[pa - 4], m.pristine_text[pa]) == built
        # After ftrace_init: 'mflr r0' then the nop ftrace toggles, at every version.
        assert (m.fetch(cpu, site(i) - 4), m.fetch(cpu, site(i))) == (MFLR_R0, NOP)


def test_without_function_tracer_nothing_is_patched_and_no_toggle():
    model = make_model("v6.2", config=["CONFIG_FUNCTION_TRACER=n"])
    assert "ftrace.toggle" not in [op.name for op in model.operations]
    m, failure = replay(model, boot_steps())
    assert failure is None
    assert all(m.fetch(m.cpus[0], site(i)) == NOP for i in range(FTRACE_SITES))
    assert not any(site(i) - PAGE_OFFSET in m.text_writes for i in range(FTRACE_SITES))


def test_function_tracer_defaults_per_version():
    opt = ConfigOption("CONFIG_X", True, version_defaults={"next-20221215": False})
    assert make_model("next-20221215").run.config["CONFIG_FUNCTION_TRACER"] is False
    assert make_model("v6.1").run.config["CONFIG_FUNCTION_TRACER"] is True
    assert make_model("v6.12").run.config["CONFIG_FUNCTION_TRACER"] is True
    assert opt.default_at(None) is True


def test_next_with_function_tracer_dies_in_ftrace_init(tmp_path):
    code, out, data = _report(tmp_path, "--kernel", "next-20221215", "--seed", "1",
                              "--config", "CONFIG_FUNCTION_TRACER=y")
    assert code == 1, out
    assert "kernel BUG at arch/powerpc/mm/pgtable.c:333!" in out
    assert [f["function"] for f in data["trace"] if not f["inlined"]] == NEXT_FTRACE_CHAIN
    assert "PID: 0 Comm: swapper/0" in data["task"]
    assert data["steps"] == [{"action": "boot", "seed": 0}]
    assert "ftrace: on" in out


def test_next_default_keeps_the_seed_report_and_says_why(tmp_path):
    code, out, data = _report(tmp_path, "--kernel", "next-20221215", "--seed", "1")
    assert code == 1
    frames = [f["function"] for f in data["trace"] if not f["inlined"]]
    assert frames[-5:] == ["arch_init_kprobes", "init_kprobes", "do_one_initcall",
                           "kernel_init_freeable", "kernel_init"]
    assert "CONFIG_FUNCTION_TRACER=n" in out.splitlines()[3]
    assert "ftrace: off (CONFIG_FUNCTION_TRACER=n)" in out


@pytest.mark.parametrize("kernel", ["v6.1", "v6.2", "v6.12-fixed"])
def test_ftrace_patches_under_ftrace_lock_only_so_hotplug_runs_alongside(kernel):
    """powerpc's arch_ftrace_update_code takes neither text_mutex nor cpus_read_lock:
    a CPU goes offline (cpus_write_lock) while another is in the middle of ftrace."""
    model = make_model(kernel)
    m = Machine(model)
    for step in [*boot_steps(), Step("online", cpu=1)]:
        apply_step(m, step)
    m.run_to_completion()
    apply_step(m, Step("start", cpu=0, name="ftrace.toggle", args={"enable": True}))
    cpu0 = m.cpus[0]
    while "patch_instruction" not in [f.function for f in cpu0.trace()]:
        m.advance(cpu0)
    assert m.state["text_mutex"].owner is None
    assert m.state["cpu_hotplug_lock"].readers == 0
    assert m.state["ftrace"]["ftrace_lock"].owner is cpu0.current
    apply_step(m, Step("offline", cpu=1))
    # No lock holds the offline off; its stop_machine waits (multi_cpu_stop's PREPARE) until
    # CPU 0's ftrace task can run its stopper, so both CPUs run.
    m.run_to_completion()
    assert not m.cpus[1].online
    try:
        m.finish()
    except EndStateViolation as exc:  # the known page-table leak of put_patching_mm
        assert kernel == "v6.2" and "page-table memory freed" in str(exc), exc
    assert all(m.fetch(cpu0, site(i)) != NOP for i in range(FTRACE_SITES))


@pytest.mark.parametrize("kernel", ["v6.1", "v6.2", "v6.12"])
def test_ftrace_with_hotplug_and_kprobes_stays_clean(kernel):
    code, out, _ = run_cli("run", "--kernel", kernel, "--seed", "4", "--max-examples", "400",
                           "--corpus", "none")
    assert code == 0, out
