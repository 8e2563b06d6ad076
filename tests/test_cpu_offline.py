"""CPU offline as the kernel does it: page tables freed through mmu_gather, lazy TLB at exit.

Ground truth: real 6.12.117 powernv boots cycling CPU 1 offline/online
(shared/reference/real-boots/): without ``tlb_finish_mmu()`` in
``put_patching_mm()`` PageTables grows by 128 kB (two 64K pages) and the
pgtable-2^9 cache by one object per cycle; with it, flat. 3 of 4 of those
boots also warn at arch/powerpc/mm/mmu_context.c:106 from idle_task_exit.
"""

from __future__ import annotations

import io
import itertools
import json

import pytest

from fuzzer import Signature, Step
from fuzzer._cli import main
from fuzzer.kernel import pgalloc, rcu
from fuzzer.kernel.known import known_findings
from fuzzer.testing import make_model as _make_model
from fuzzer.testing import plugin_module

from modelkit import boot_steps, make_model, replay, search

#: The real 6.12 warning's call chain, innermost first (realkernel-6.12-cpuhp-leak.log).
REAL_WARN_CHAIN = ["switch_mm_irqs_off", "idle_task_exit", "pnv_cpu_offline_self",
                   "arch_cpu_idle_dead", "do_idle"]
LEAK = ("END-STATE", "page-table memory freed")
WARN_106 = ("WARNING", "switch_mm_irqs_off", "arch/powerpc/mm/mmu_context.c:106")
WARN_51 = ("WARNING", "switch_mm_irqs_off", "arch/powerpc/mm/mmu_context.c:51")
WARN_1634 = ("WARNING", "start_secondary", "arch/powerpc/kernel/smp.c:1634")


#: After an offline: the dying CPU to its death, then the control side (__cpu_die,
#: finish_cpu, cpus_write_unlock) on CPU 0, where cpuhp_report_idle_dead released it.
AP_FIRST = [1] * 200 + [0] * 200 + [1] * 5


def cycles(n: int, *, user_op: bool = False) -> list[Step]:
    steps = list(boot_steps())
    for _ in range(n):
        steps += [Step("online", cpu=1), Step("run", cpus=[1] * 200)]
        if user_op:
            steps += [Step("start", cpu=1, name="jump_label.toggle", args={"key": 0}),
                      Step("run", cpus=[1] * 300)]
        steps += [Step("offline", cpu=1), Step("run", cpus=AP_FIRST)]
    return steps


def counters(kernel: str, n: int, mmu: str = "radix", config: tuple[str, ...] = ()) -> tuple:
    """(failure signature or None, NR_PAGETABLE, live PUDs, live batch pages) after n cycles."""
    m, failure = replay(make_model(kernel, mmu=mmu, config=list(config)), cycles(n))
    led = pgalloc.ledger(m)
    rcu.rcu_barrier(m)
    live = {k: sum(1 for p in led.pages if p.kind == k and not p.freed) for k in ("pud", "batch")}
    sig = None if failure is None else (failure.signature.kind, failure.signature.function)
    return sig, led.nr_page_table_pages, live["pud"], live["batch"]


def test_offline_cycles_leak_as_the_real_612_boot():
    """+2 NR_PAGETABLE pages (PTE and PMD fragment pages: 128 kB at 64K) and +1 PUD
    object per cycle, as realkernel-6.12-cpuhp-leak.log; plus the batch page."""
    runs = [counters("v6.12", n) for n in (1, 2, 3)]
    assert all(sig == LEAK for sig, *_ in runs)
    nr = [r[1] for r in runs]
    assert [b - a for a, b in itertools.pairwise(nr)] == [2, 2]
    assert [r[2] for r in runs] == [2, 3, 4]  # CPU 0's PUD + one per cycle
    assert [r[3] for r in runs] == [1, 2, 3]


def test_kernel_accounting_cannot_see_the_leak():
    """free_pgd_range's mm_dec_nr_* bring pgtables_bytes to 0 before anything is freed."""
    m, failure = replay(make_model("v6.12"), cycles(1))
    assert failure is not None and failure.signature.function == LEAK[1]
    led = pgalloc.ledger(m)
    freed = [mm for mm in m.mms.values() if mm.freed]
    assert freed and all(led.pgtables_bytes[mm] == 0 for mm in freed)


@pytest.mark.parametrize("mmu", ["radix", "hash"])
def test_fixed_version_offline_cycles_stay_flat(mmu):
    """cpuhp-leak-fix.patch (realkernel-6.12-cpuhp-leak-fixed.log): flat counters."""
    runs = [counters("v6.12-fixed", n, mmu) for n in (1, 2, 3)]
    assert all(sig is None for sig, *_ in runs)
    assert len({r[1:] for r in runs}) == 1
    assert runs[0][3] == 0


@pytest.mark.parametrize(("kernel", "mmu", "config", "leaks"), [
    ("next-20221215", "radix", ("CONFIG_DEBUG_VM=n",), True),  # DEBUG_VM: the seed crash first
    ("v6.2", "radix", (), True),
    ("v6.1", "radix", (), False),  # no temporary mm: the vmalloc alias in init_mm
    ("v6.1", "hash", (), False),
    ("v6.2", "hash", (), False),  # Hash patches through the alias at every version
    ("v6.12", "hash", (), False),
])
def test_other_versions_follow_their_source(kernel, mmu, config, leaks):
    sig, *_ = counters(kernel, 2, mmu, config)
    assert (sig == LEAK) is leaks


def test_no_batch_page_frees_tables_one_by_one():
    """tlb_remove_table without a batch page (GFP_NOWAIT failed) frees each table at
    once (tlb_remove_table_one): even the unfixed kernel then leaks nothing."""

    def fuzzer_machine_setup(machine):
        machine.state["fail_nowait_page"] = 1_000

    faults = plugin_module("fail_nowait", fuzzer_machine_setup=fuzzer_machine_setup)
    model = make_model("v6.12", extra=[faults])
    m, failure = replay(model, cycles(2))
    assert failure is None
    assert not [p for p in pgalloc.ledger(m).pages if p.kind == "batch"]


def report_known() -> list[str]:
    """``run --report-known``: reports known findings (these are) as ordinary ones -- once the
    engine has known findings (``fuzzer.KnownFinding``); before, every finding is reported."""
    import fuzzer

    return ["--report-known"] if hasattr(fuzzer, "KnownFinding") else []


def run_json(tmp_path, *argv: str, known: bool = True) -> tuple[int, dict]:
    report = tmp_path / "r.json"
    out = io.StringIO()
    code = main([*argv, *(report_known() if known else []), "--report-json", str(report),
                 "--corpus", "none"], out=out, err=io.StringIO())
    assert code in (0, 1), out.getvalue()
    return code, (json.loads(report.read_text()) if code == 1 else {})


@pytest.mark.parametrize("seed", [1, 2])
def test_search_finds_the_612_hotplug_warning(seed, tmp_path):
    """On Hash (which has no leak) the walk finds the real boots' warning, with their chain:
    :106, or :51 from the same call when the control CPU's __cpu_die got there first."""
    code, data = run_json(tmp_path, "run", "--kernel", "v6.12", "--mmu", "hash", "--seed", str(seed))
    assert code == 1
    sig = data["signature"]
    assert (sig["kind"], sig["function"], sig["location"]) in (WARN_106, WARN_51)
    assert [f["function"] for f in data["trace"] if not f["inlined"]] == REAL_WARN_CHAIN
    assert "PID: 0 Comm: swapper/" in data["task"]
    actions = [s["action"] for s in data["steps"]]
    assert actions.index("start") < actions.index("offline")  # a process ran there first


@pytest.mark.parametrize("kernel", ["v6.2", "v6.12"])
def test_search_finds_the_leak(kernel, tmp_path):
    """Without fault injection only a CPU offline frees a patching mm: the search finds it."""
    code, data = run_json(tmp_path, "run", "--kernel", kernel, "--seed", "1",
                          "--config", "CONFIG_FAULT_INJECTION=n")
    assert code == 1
    assert (data["signature"]["kind"], data["signature"]["function"]) in (LEAK, WARN_106[:2])
    assert "offline" in [s["action"] for s in data["steps"]]


@pytest.mark.parametrize("kernel", ["v6.2", "v6.12"])
def test_a_failed_bring_up_leaks_through_the_same_put_patching_mm(kernel):
    """text_area_cpu_up_mm()'s error path (fail_no_pte, code-patching.c:187-188 in 6.12)
    frees a half-built patching mm with put_patching_mm(): the same leak, at CPU online,
    when a page-table allocation after the first fails. Found by the search with fault
    injection on; the known finding covers it."""
    model = make_model(kernel)
    for after in range(1, 40):
        steps = [*boot_steps(), Step("online", cpu=1), Step("run", cpus=[1] * after),
                 Step("fail", cpu=1, name="pgtable_alloc")]
        m, failure = replay(model, steps)
        if failure is not None:
            break
    assert failure is not None and failure.signature in {k.signature for k in model.known}
    assert str(failure.signature) == "END-STATE in page-table memory freed"
    assert m.state["fault_injection"].injected == [(1, "pgtable_alloc")]
    assert not m.cpus[1].online


@pytest.mark.parametrize("mmu", ["radix", "hash"])
def test_fixed_version_runs_clean(mmu, tmp_path):
    """v6.12-fixed has the fixes for v6.12's hotplug findings, which it does not declare known:
    a run reports any of them. It keeps (declares) the kprobes/enabled findings of every
    version, which are counted, not reported."""
    code, _ = run_json(tmp_path, "run", "--kernel", "v6.12-fixed", "--mmu", mmu, "--seed", "1",
                       "--max-examples", "400", known=False)
    assert code == 0


@pytest.mark.parametrize("kernel", ["v6.1", "v6.2"])
def test_the_warning_is_612s(kernel):
    """The check arrived with 177255afb405 (after v6.2): the same steps are clean before."""
    _, failure = replay(make_model(kernel, mmu="hash"), cycles(1, user_op=True))
    assert failure is None


def test_lazy_mm_survives_to_the_idle_task_exit():
    m, failure = replay(make_model("v6.12-fixed", mmu="hash"), cycles(1, user_op=True))
    assert failure is None
    assert m.cpus[1].idle_task.active_mm is m.init_mm  # finish_cpu
    assert 1 not in m.init_mm.cpumask  # __cpu_die


def test_known_findings_match_the_corpus():
    sigs = {(f.signature.kind, f.signature.function, f.signature.location): f for f in known_findings()}
    assert set(sigs) == {(*LEAK, ""), WARN_106, WARN_51, WARN_1634}
    assert set(sigs[(*LEAK, "")].kernels) == {"next-20221215", "v6.2", "v6.12"}
    assert "tlb_finish_mmu" in sigs[(*LEAK, "")].fix
    assert "21641bd9a7a7" in sigs[WARN_106].fix
    assert "21641bd9a7a7" in sigs[WARN_51].fix and set(sigs[WARN_51].kernels) == {"v6.12"}
    assert "6.12.117-cpuhp-200-cycles.log" in sigs[WARN_51].reference
    assert "21641bd9a7a7" in sigs[WARN_1634].fix and set(sigs[WARN_1634].kernels) == {"v6.12"}
    assert all(f.fixed_in == {"v6.12-fixed"} for f in sigs.values())


# -- the control side's __cpu_die against the dying CPU's idle_task_exit ----------------------
#
# docs/real-boots/6.12.117-cpuhp-200-cycles.log (-smp 4, 200 cycles of CPU 1): at the first
# offline WARNING mmu_context.c:51 then :106, both in switch_mm_irqs_off <- idle_task_exit,
# and at the next online WARNING smp.c:1634 in start_secondary.


def search_init_mm_race(kernel: str, mmu: str, seed: int, max_examples: int = 2000):
    """The walk from ``seed``, counting the other known findings and going past them."""
    model = make_model(kernel, mmu=mmu)
    return search(model, seed=seed, max_examples=max_examples, time_budget=0,
                  known=[k for k in model.known if k.signature != Signature(*WARN_51)])


@pytest.mark.parametrize(("mmu", "seed"), [("radix", 1), ("radix", 2), ("hash", 1)])
def test_search_finds_the_init_mm_race_at_612(mmu, seed):
    """Some schedule lets the control CPU clear the dying CPU from init_mm's cpumask
    (__cpu_die, smp.c:1791) before the dying CPU's idle_task_exit switches to init_mm: the
    real boot's first warning, with its chain, on CPU 1's idle task."""
    out = search_init_mm_race("v6.12", mmu, seed)
    assert out.status == "failed", out
    f = out.failure
    assert (f.signature.kind, f.signature.function, f.signature.location) == WARN_51
    assert [fr.function for fr in f.trace if not fr.inlined] == REAL_WARN_CHAIN
    assert f.cpu == 1 and "PID: 0 Comm: swapper/1" in f.task
    actions = [s.action for s in f.steps]
    assert actions.index("start") < actions.index("offline")  # a lazy mm on CPU 1
    after = [n for s in f.steps[actions.index("offline"):] if s.action == "run" for n in s.cpus]
    assert 0 in after  # the control side ran on CPU 0 before CPU 1 got there


def search_behind_the_known_warnings(mmu: str, seed: int, max_examples: int = 2000):
    """The walk from ``seed`` with smp.c:1634 reported and every other known finding counted
    and gone past: :51 and :106 are printed and the kernel goes on (--panic-on-warn=known)."""
    model = make_model("v6.12", mmu=mmu)
    known = [k.signature for k in model.known if k.signature != Signature(*WARN_1634)]
    out = search(model, seed=seed, max_examples=max_examples, time_budget=0, known=known)
    return model.searching(known), out


@pytest.mark.parametrize(("mmu", "seed"), [("radix", 1), ("hash", 1), ("hash", 2)])
def test_the_search_goes_past_the_known_warnings_to_the_real_boots_third(mmu, seed):
    """The real boot (no panic_on_warn) printed :51, then :106 in the same switch_mm_irqs_off,
    then at the next online smp.c:1634 in start_secondary. With the first two known, the walk
    goes past them and finds the third; shrunk, the reproduction's target is still smp.c:1634
    (the shrinker cannot stop at an earlier known WARNING: it does not end the example), and
    its report shows the two before it, in the real boot's order, each with the real chain."""
    model, out = search_behind_the_known_warnings(mmu, seed)
    assert out.status == "failed", out
    f = out.failure
    assert f.signature == Signature(*WARN_1634)
    assert [w.signature for w in f.warned] == [Signature(*WARN_51), Signature(*WARN_106)]
    for w in f.warned:
        assert [fr.function for fr in w.trace if not fr.inlined] == REAL_WARN_CHAIN
        assert w.cpu == 1 and "PID: 0 Comm: swapper/1" in w.task
    assert f.trace[0].function == "start_secondary" and "PID: 0 Comm: swapper/1" in f.task
    assert f.cpu == 1 and f.context["irqs_enabled"] is False
    actions = [s.action for s in f.steps]
    assert actions.count("online") == 2 and "offline" in actions
    assert actions.index("start") < actions.index("offline")  # a lazy mm on CPU 1
    _, again = replay(model, f.steps)  # the same model: the same three, the same target
    assert again is not None and again.signature == f.signature
    assert [w.signature for w in again.warned] == [w.signature for w in f.warned]


def test_the_reproduction_gives_the_real_boots_three_lines_without_panic_on_warn():
    """The reproduction found above, replayed as the real kernel ran it (--panic-on-warn=0):
    no finding on Hash (all three are known), and the machine printed exactly the real boot's
    three WARNINGs in its order; with panic_on_warn=1 (syzkaller's setting) it stops at :51."""
    _, out = search_behind_the_known_warnings("hash", 1)
    steps = out.failure.steps
    m, failure = replay(_make_model("v6.12", mmu="hash", options={"panic_on_warn": "0"}), steps)
    assert failure is None
    assert [w.signature for w in m.warnings] == [Signature(*w) for w in (WARN_51, WARN_106, WARN_1634)]
    assert not m.cpus[1].online or 1 in m.init_mm.cpumask
    _, failure = replay(_make_model("v6.12", mmu="hash", options={"panic_on_warn": "1"}), steps)
    assert failure is not None and failure.signature == Signature(*WARN_51) and not failure.warned


@pytest.mark.parametrize("kernel", ["v6.12-fixed", "v6.2"])
def test_without_panic_on_warn_the_fixed_and_older_kernels_print_nothing(kernel):
    """--panic-on-warn=0 goes on after every WARNING and reports the first unknown one when
    the example ends: at v6.12-fixed (21641bd9a7a7) and before the checks (v6.2) the search
    finds none and counts none."""
    model = _make_model(kernel, mmu="hash", options={"panic_on_warn": "0"})
    out = search(model, seed=1, max_examples=300, time_budget=0)
    assert out.status == "passed", out
    assert not out.stats.warned_seen


def test_the_default_search_counts_the_three_and_reports_nothing_at_612():
    """``run``'s default (every known finding counted and gone past): the walk from a seed
    meets all three WARNINGs within the budget and reports no failure."""
    model = make_model("v6.12", mmu="hash")
    out = search(model, seed=1, max_examples=400, time_budget=0)
    assert out.status == "passed", out
    assert {Signature(*w) for w in (WARN_51, WARN_106, WARN_1634)} <= set(out.stats.warned_seen)


@pytest.mark.parametrize("mmu", ["radix", "hash"])
def test_the_fixed_kernel_has_no_init_mm_race(mmu):
    """21641bd9a7a7 switches to init_mm in take_cpu_down, before __cpu_disable and long
    before the control side's __cpu_die: the search finds nothing."""
    out = search_init_mm_race("v6.12-fixed", mmu, 1, max_examples=300)
    assert out.status == "passed", out


def test_the_reproduction_is_clean_before_612_and_on_the_fixed_kernel():
    """The same steps at v6.12-fixed, v6.1 and v6.2 (no init_mm accounting in __cpu_die or
    switch_mm_irqs_off before 6.12): no warning; the fixed kernel leaves CPU 1 out of
    init_mm's mask."""
    steps = search_init_mm_race("v6.12", "hash", 1).steps
    m, failure = replay(make_model("v6.12-fixed", mmu="hash"), steps)
    assert failure is None and 1 not in m.init_mm.cpumask
    for kernel in ("v6.1", "v6.2"):
        _, failure = replay(make_model(kernel, mmu="hash"), steps)
        assert failure is None


def test_the_control_side_runs_on_a_free_cpu_or_after_the_death():
    """With CPU 0 free when CPU 1 reports idle-dead, the control side runs there; with CPU 0
    busy (an operation running), on CPU 1 after its death: both offlines complete cleanly."""
    model = make_model("v6.12-fixed", mmu="hash")
    m, failure = replay(model, cycles(1, user_op=True))
    assert failure is None and m.cpus[1].state["cpuhp_takedown"].control == "cpu"
    busy = [*boot_steps(), Step("online", cpu=1), Step("run", cpus=[1] * 200),
            Step("start", cpu=0, name="jump_label.toggle", args={"key": 0}),
            Step("offline", cpu=1), Step("run", cpus=[1] * 300)]
    m, failure = replay(model, busy)
    assert failure is None and not m.cpus[1].online and 1 not in m.init_mm.cpumask
    assert m.cpus[1].state["cpuhp_takedown"].control == "inline"
