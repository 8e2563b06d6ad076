"""The v6.12 model: the real boot crash with the cached PTE put back, and 6.12's patching API."""

from __future__ import annotations

import io
import json

import pytest

from fuzzer import PAGE_OFFSET, KernelBug
from fuzzer._cli import main
from fuzzer._machine import Machine
from fuzzer.kernel.patching import context
from fuzzer_plugins.ftrace import FTRACE_SITES, FTRACE_SITES_AT, FTRACE_STRIDE, MFLR_R0

from modelkit import boot_steps, make_model, replay

#: The real 6.12 powernv boot with the cached-pte mistake put back dies so:
#: kernel BUG at arch/powerpc/mm/pgtable.c:403!, in assert_pte_locked, from
#: patch_mem <- ftrace_init_nop <- ftrace_init <- start_kernel.
REAL_612_CHAIN = ["assert_pte_locked", "patch_mem", "ftrace_init_nop", "ftrace_init", "start_kernel"]
CACHED = "fuzzer_plugins.mistakes.cached_pte"


def run(*argv: str) -> tuple[int, str]:
    out = io.StringIO()
    return main(list(argv), out=out, err=io.StringIO()), out.getvalue()


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_cached_pte_on_v612_dies_as_the_real_boot(seed, tmp_path):
    report = tmp_path / "r.json"
    code, out = run("-p", CACHED, "run", "--kernel", "v6.12", "--seed", str(seed),
                    "--report-json", str(report), "--corpus", "none")
    assert code == 1, out
    assert "kernel BUG at arch/powerpc/mm/pgtable.c:403!" in out
    data = json.loads(report.read_text())
    real_frames = [f["function"] for f in data["trace"] if not f["inlined"]]
    assert real_frames == REAL_612_CHAIN
    assert data["steps"] == [{"action": "boot", "seed": 0}]
    assert "PID: 0 Comm: swapper/0" in data["task"]  # still in start_kernel


def test_cached_pte_on_v612_boots_without_debug_vm():
    code, out = run("-p", CACHED, "run", "--kernel", "v6.12", "--seed", "1",
                    "--config", "CONFIG_DEBUG_VM=n", "--max-examples", "150", "--corpus", "none")
    assert code == 0, out


@pytest.mark.parametrize("mmu", ["radix", "hash"])
def test_v612_boot_runs_ftrace_init_before_kprobes(mmu):
    m, failure = replay(make_model("v6.12", mmu=mmu), boot_steps())
    assert failure is None
    for i in range(FTRACE_SITES):
        assert m.fetch(m.cpus[0], FTRACE_SITES_AT + FTRACE_STRIDE * i - 4) == MFLR_R0
    assert (context(m.cpus[0]).mm is not None) is (mmu == "radix")


@pytest.mark.parametrize("kernel", ["v6.12"])
@pytest.mark.parametrize("mmu", ["radix", "hash"])
def test_v612_is_clean_briefly(kernel, mmu):
    code, out = run("run", "--kernel", kernel, "--mmu", mmu, "--seed", "3",
                    "--max-examples", "200", "--corpus", "none")
    assert code == 0, out


def _drive(gen):
    try:
        while True:
            next(gen)
    except StopIteration as stop:
        return stop.value


def _booted(kernel: str = "v6.12", mmu: str = "radix") -> Machine:
    m = Machine(make_model(kernel, mmu=mmu))
    m.boot(0)
    return m


@pytest.mark.parametrize("mmu", ["radix", "hash"])
def test_patch_uint_and_patch_ulong_check_alignment_and_write(mmu):
    m = _booted(mmu=mmu)
    cpu = m.cpus[0]
    base = PAGE_OFFSET + 0x0020_0000
    assert _drive(cpu.k.patch_uint(cpu, base + 2, 0x1234)) == -22
    assert _drive(cpu.k.patch_ulong(cpu, base + 4, 0x1234)) == -22
    assert _drive(cpu.k.patch_uint(cpu, base, 0xDEAD_BEEF)) == 0
    assert m.fetch(cpu, base) == 0xDEAD_BEEF
    assert _drive(cpu.k.patch_ulong(cpu, base + 8, 0x1111_2222_3333_4444)) == 0
    assert (m.fetch(cpu, base + 8), m.fetch(cpu, base + 12)) == (0x3333_4444, 0x1111_2222)


@pytest.mark.parametrize("mmu", ["radix", "hash"])
def test_patch_instructions_crosses_pages_and_repeats(mmu):
    m = _booted(mmu=mmu)
    cpu = m.cpus[0]
    page = m.run.page_size
    start = PAGE_OFFSET + 0x0030_0000 + page - 8  # two words, then the next page
    code = (0x3860_0001, 0x3860_0002, 0x3860_0003, 0x3860_0004)
    cpu.irqs_enabled = True
    assert _drive(cpu.k.patch_instructions(cpu, start, code, False, 4)) == 0
    assert [m.fetch(cpu, start + 4 * i) for i in range(4)] == list(code)
    trap = 0x7FE0_0008
    assert _drive(cpu.k.patch_instructions(cpu, start, (trap,), True, 4)) == 0
    assert [m.fetch(cpu, start + 4 * i) for i in range(4)] == [trap] * 4
    ctx = context(cpu)
    mm = ctx.mm if ctx.mm is not None else m.init_mm
    assert mm.lookup(ctx.addr) is None  # unmapped again after each page


def test_v612_assert_pte_locked_reports_line_403():
    m = Machine(make_model("v6.12"))
    cpu = m.cpus[0]
    m.system_state = "SYSTEM_RUNNING"
    cpu.irqs_enabled = True
    mm = m.new_mm("patching_mm")
    ptr, ptl = _drive(cpu.k.__get_locked_pte(cpu, mm, 0x10000))
    assert _drive(cpu.k.assert_pte_locked(cpu, mm, 0x10000)) is None
    _drive(cpu.k.pte_unmap_unlock(cpu, ptr, ptl))
    with pytest.raises(KernelBug) as bug:
        _drive(cpu.k.assert_pte_locked(cpu, mm, 0x10000))
    assert bug.value.at == "arch/powerpc/mm/pgtable.c:403"


def test_fidelity_doc_lists_every_routine_the_model_runs():
    import pathlib
    import sys

    root = pathlib.Path(__file__).resolve().parent.parent
    sys.path.insert(0, str(root / "docs"))
    try:
        import fidelity_table
    finally:
        sys.path.pop(0)
    doc = (root / "docs" / "fidelity.md").read_text()
    assert fidelity_table.markdown() in doc, "docs/fidelity.md is stale: python docs/fidelity_table.py"


@pytest.mark.parametrize("mmu", ["radix", "hash"])
def test_bpf_pack_loads_through_patch_instructions_across_pages(mmu):
    from fuzzer import Step
    from fuzzer_plugins.fixups import BPF_TRAP, _bpf_slot

    steps = [*boot_steps(), Step("start", cpu=0, name="bpf.load", args={"slot": 3, "nwords": 24}),
             Step("run", cpus=[0] * 400)]
    m, failure = replay(make_model("v6.12", mmu=mmu), steps)
    assert failure is None
    dst = _bpf_slot(m, 3)
    assert (dst + 4 * 24) // m.run.page_size != dst // m.run.page_size  # it did cross a page
    assert [m.fetch(m.cpus[0], dst + 4 * i) for i in range(24)] == [BPF_TRAP] * 24
