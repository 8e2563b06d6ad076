"""The x86 example plugin, tested the way a plugin author would: fuzzer.testing only."""

from __future__ import annotations

from pathlib import Path

import pytest

from fuzzer import Step
from fuzzer.testing import boot_steps, make_model, replay, run_cli, search

CORPUS = Path(__file__).resolve().parent.parent / "corpus"
PRE_FIX = {
    "x86-v5.9": "lazy TLB",
    "x86-d6c1b74d0d5e": "smp_call_function_many_cond",
}
FIXED = ("x86-v6.12", "x86-209954cbc7d0")


def x86(kernel: str | None = None, plugins: tuple[str, ...] = ()):
    return make_model(kernel, mmu="x86", plugins=["fuzzer_x86", *plugins])


def test_default_kernel_is_the_newest_x86_one():
    assert x86().run.kernel == "x86-209954cbc7d0"
    assert x86().run.page_shift == 12


@pytest.mark.parametrize("kernel", sorted(PRE_FIX))
@pytest.mark.parametrize("seed", [1, 2])
def test_each_pre_fix_version_is_found_by_search(kernel, seed):
    outcome = search(x86(kernel), seed=seed, max_examples=2000, time_budget=20)
    assert outcome.status == "failed", outcome
    assert outcome.failure.signature.function == PRE_FIX[kernel]


@pytest.mark.parametrize("kernel", FIXED)
def test_fixed_versions_search_clean(kernel):
    assert search(x86(kernel), seed=3, max_examples=1000, time_budget=20).status == "passed"


def test_nmi_without_uaccess_check_is_found():
    outcome = search(x86(plugins=("fuzzer_x86.mistakes.nmi_no_uaccess_check",)), seed=1,
                     max_examples=3000, time_budget=20)
    assert outcome.status == "failed"
    assert outcome.failure.signature.function == "uaccess under a foreign mm"


def test_a_kworker_poke_after_a_process_leaves_init_mm_loaded_when_fixed():
    steps = [*boot_steps(), Step("start", cpu=0, name="x86.syscall", args={}),
             Step("run", cpus=[0] * 5),
             Step("start", cpu=0, name="x86.kworker_text_poke", args={"site": 1, "jump": True})]
    machine, failure = replay(x86("x86-v6.12"), steps)
    assert failure is None
    assert machine.cpus[0].loaded_mm.is_init


def test_corpus_replays_as_recorded_and_pre_fix_entries_fail():
    code, out, err = run_cli("replay", str(CORPUS))
    assert code == 0, out + err
    assert "5 passed" in out
    entry = CORPUS / "x86-v5.9-invariant-lazy-TLB-ca94278ea632.json"
    code, out, _ = run_cli("replay", "--expect-clean", str(entry))
    assert code == 1


def test_plugins_lists_the_x86_plugin_and_versions():
    code, out, _ = run_cli("plugins")  # autoloaded through the entry point
    assert code == 0
    assert "x86  [entry point of fuzzer-x86" in out
    for kernel in (*PRE_FIX, *FIXED):
        assert f"{kernel}" in out and "[x86]" in out


def test_a_powerpc_version_is_refused_for_the_x86_mmu():
    code, _, err = run_cli("run", "--mmu", "x86", "--kernel", "v6.12")
    assert code == 4
    assert "'v6.12' is a powerpc version; --mmu x86 (x86) runs: x86-v5.9" in err


def test_flush_tlb_func_invlpgs_a_range_and_flushes_the_asid_otherwise():
    """A ranged flush one generation ahead is one INVLPG per page; a flush of more than
    tlb_single_page_flush_ceiling pages, or one that finds the ASID two generations
    behind, flushes the whole ASID."""
    from fuzzer_x86 import PAGE_SHIFT, PAGE_SIZE, FlushInfo, load_mm

    machine, failure = replay(x86(), boot_steps())
    assert failure is None
    cpu, mmu = machine.cpus[0], machine.mmu
    mm = machine.new_mm("test")
    load_mm(cpu, mm, lazy_cpumask=True)
    base = 0x1000_0000
    vpns = [(base >> PAGE_SHIFT) + i for i in range(3)]

    def fill():
        for vpn in vpns:
            cpu.tlb[(cpu.hw.asid, vpn)] = "pte"

    def flush(start, end, *, generations=1):
        mmu.tlb_gen[mm.context_id] = mmu.gen(mm) + generations
        for _ in cpu.k.flush_tlb_func(cpu, FlushInfo(mm, start, end, mmu.gen(mm), cpu.n)):
            pass
        return sorted(vpn for asid, vpn in cpu.tlb if asid == cpu.hw.asid)

    fill()
    assert flush(base + PAGE_SIZE, base + 2 * PAGE_SIZE) == [vpns[0], vpns[2]]  # INVLPG of one page
    fill()
    assert flush(base, base + PAGE_SIZE, generations=2) == []  # two behind: full flush
    fill()
    assert flush(base, base + PAGE_SIZE, generations=0) == vpns  # already up to date: nothing


def test_flush_tlb_mm_range_beyond_the_ceiling_is_a_full_flush():
    from fuzzer_x86 import FLUSH_CEILING, PAGE_SHIFT, PAGE_SIZE, load_mm

    machine, _ = replay(x86(), boot_steps())
    cpu = machine.cpus[0]
    mm = machine.new_mm("test")
    load_mm(cpu, mm, lazy_cpumask=True)
    for vpn in range(40):
        cpu.tlb[(cpu.hw.asid, vpn)] = "pte"
    for _ in cpu.k.flush_tlb_mm_range(cpu, mm, 0, 2 * PAGE_SIZE):
        pass
    assert sorted(vpn for _, vpn in cpu.tlb) == list(range(2, 40))
    for _ in cpu.k.flush_tlb_mm_range(cpu, mm, 0, (FLUSH_CEILING + 1) << PAGE_SHIFT):
        pass
    assert cpu.tlb == {}
