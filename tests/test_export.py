"""``python -m fuzzer export``: reproductions as programs for a real powerpc kernel."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from fuzzer import ExportAction, Signature, Step
from fuzzer._corpus import Entry, find, load
from fuzzer._export import check_for, compile_init, export, find_nolibc, read_reproduction

ROOT = Path(__file__).resolve().parent.parent
ENTRIES = find([ROOT / "corpus"])
CONFIG = {"CONFIG_DEBUG_VM": True, "CONFIG_SMP": True, "CONFIG_STRICT_KERNEL_RWX": True}


def _entry(steps, expect=None, title="t"):
    return Entry(title=title, kernel="v6.2", mmu="radix", cpus=4, plugins=(), config=CONFIG,
                 options={}, expect=expect, steps=steps)


@pytest.mark.parametrize("path", ENTRIES, ids=lambda p: p.name)
def test_every_corpus_entry_exports_to_a_valid_shell_script(path, tmp_path):
    script = tmp_path / "repro.sh"
    script.write_text(export(load(path), "shell"))
    proc = subprocess.run(["sh", "-n", str(script)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr


@pytest.fixture(scope="module")
def nolibc():
    if shutil.which("powerpc64le-linux-gnu-gcc") is None:
        pytest.skip("no ppc64le cross compiler (apt-get install gcc-powerpc64le-linux-gnu)")
    found = find_nolibc()
    if found is None:
        pytest.skip("no kernel nolibc (apt-get install linux-source-6.12, or set FUZZER_NOLIBC)")
    return found


@pytest.mark.parametrize("path", ENTRIES, ids=lambda p: p.name)
def test_every_corpus_entry_exports_to_an_init_that_compiles(path, tmp_path, nolibc):
    source = tmp_path / "repro.c"
    source.write_text(export(load(path), "init-c"))
    ok, output = compile_init(source, tmp_path / "init", nolibc)
    assert ok, output


def test_a_boot_bug_checks_the_kernel_message_at_its_line():
    entry = load(ROOT / "corpus" / "next-20221215-bug-assert_pte_locked-910566f8aed8.json")
    text = export(entry, "shell")
    assert "grep -F -e 'kernel BUG at arch/powerpc/mm/pgtable.c:333!'" in text
    assert "the model fails during boot: a real kernel shows it on the console" in text
    assert "kernel BUG at arch/powerpc/mm/pgtable.c:333!" in export(entry, "init-c")


def test_a_leak_checks_page_tables_over_repeated_hotplug_cycles():
    entry = load(ROOT / "corpus" / "v6.2-end-state-patching-mm-leak-ebfdac598da1.json")
    shell = export(entry, "shell")
    assert "REPEAT=${REPEAT:-200}" in shell
    assert "cpu_online 1 1\n  cpu_online 1 0\n" in shell
    assert 'counter PageTables' in shell
    c = export(entry, "init-c")
    assert "#define REPEAT 200" in c and "cpu_online(1, 0);" in c and 'meminfo("PageTables")' in c


def test_interleaved_cpus_become_a_bounded_stress_loop_and_are_listed():
    steps = [Step("boot", seed=0), Step("online", cpu=1),
             Step("start", cpu=0, name="kprobes.register", args={"site": 0}),
             Step("start", cpu=1, name="ftrace.toggle", args={"enable": True}),
             Step("run", cpus=[0, 1, 0, 1]), Step("irq", cpu=1, name="ipi")]
    text = export(_entry(steps), "shell")
    assert "taskset -c 0 sh -c" in text and "taskset -c 1 sh -c" in text and "\nwait\n" in text
    assert "p:fuzzer/k0 do_sys_open" in text and "echo function > /sys/kernel/tracing/current_tracer" in text
    assert "#   the interleaving of CPU 0, CPU 1: approximated by each CPU's operations looping" in text
    assert "deliver interrupt ipi: an interrupt cannot be chosen on a real machine" in text


def test_a_plugins_answer_wins_and_unknown_operations_are_listed():
    steps = [Step("boot", seed=0), Step("start", cpu=2, name="mine.poke", args={"n": 3}),
             Step("start", cpu=1, name="other.thing", args={})]

    def answer(name, args):
        if name == "mine.poke":
            return ExportAction(shell=(f"echo {args['n']} > /proc/sys/mine",), c=("sched_yield_now();",))
        return None

    text = export(_entry(steps), "shell", answer)
    assert "on_cpu 2 'echo 3 > /proc/sys/mine'" in text
    assert "CPU 1: start other.thing(): no real equivalent known (skipped)" in text


def test_checks_follow_the_kind_of_finding():
    warning = Signature("WARNING", "switch_mm_irqs_off", "arch/powerpc/mm/mmu_context.c:106")
    assert check_for(warning).needles == ("at arch/powerpc/mm/mmu_context.c:106",)
    assert check_for(Signature("INVARIANT", "patch window", "")).kind == "none"
    assert check_for(Signature("END-STATE", "page-table leak", "")).kind == "counter"


def test_a_report_json_exports_like_a_corpus_entry(cli, tmp_path):
    r = cli("run", "--kernel", "next-20221215", "--seed", "1", "--report-json", "r.json", "--corpus", "none")
    assert r.rc == 1, r.err
    entry = read_reproduction(tmp_path / "r.json")
    assert entry.expect == Signature("BUG", "assert_pte_locked", "arch/powerpc/mm/pgtable.c:333")
    r = cli("export", "r.json", "--format", "shell", "--out", "out")
    assert r.rc == 0, r.err
    assert "wrote out/r.sh (shell)" in r.out and "expect: BUG in assert_pte_locked" in r.out
    assert (tmp_path / "out" / "r.sh").stat().st_mode & 0o111


def test_bad_input_is_one_usage_error(cli, tmp_path):
    r = cli("export", "missing.json")
    assert r.rc == 4 and r.err.startswith("ERROR: export: cannot read missing.json")
    (tmp_path / "bad.json").write_text(json.dumps({"schema": 1}))
    r = cli("export", "bad.json")
    assert r.rc == 4 and r.err.count("\n") == 1 and "bad.json" in r.err
    r = cli("export", "bad.json", "--format", "pdf")
    assert r.rc == 4 and "invalid choice: 'pdf' (choose from 'init-c', 'shell')" in r.err
