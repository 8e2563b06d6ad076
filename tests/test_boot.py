"""``python -m fuzzer boot``: its pieces, fast; the whole build-and-boot path is marked slow."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from fuzzer import Signature
from fuzzer._boot import APPLIED, Builder, console_verdict, kconfig_args, missing_tools, newc
from fuzzer._corpus import Entry, load
from fuzzer._errors import UsageError

ROOT = Path(__file__).resolve().parent.parent
LEAK = ROOT / "corpus" / "v6.2-end-state-patching-mm-leak-ebfdac598da1.json"
SEED_612 = ROOT / "corpus" / "v6.12-bug-assert_pte_locked-15a1d9a80cbb.json"


def test_each_missing_tool_names_its_debian_package():
    lines = missing_tools(lambda cmd: None if cmd in ("qemu-system-ppc64", "bc") else f"/usr/bin/{cmd}")
    assert lines == ["qemu-system-ppc64 not found: apt-get install qemu-system-ppc",
                     "bc not found: apt-get install bc"]


def test_the_kernel_config_is_the_base_set_plus_the_reproductions_options():
    args = kconfig_args({"CONFIG_DEBUG_VM": False, "CONFIG_SMP": True, "CONFIG_PPC_NR_DAWR": 2,
                         "CONFIG_PPC_64K_PAGES": False})
    assert args[:4] == ["-e", "DEBUG_VM", "-e", "KPROBES"]
    # The reproduction's own values come after the base set, so they win (DEBUG_VM=n here).
    assert args[-8:] == ["-d", "DEBUG_VM", "-d", "PPC_64K_PAGES", "-e", "SMP", "-e", "PPC_4K_PAGES"]
    assert "PPC_NR_DAWR" not in args  # a hardware fact of the model, not a Kconfig symbol


@pytest.mark.skipif(shutil.which("cpio") is None, reason="cpio not installed (apt-get install cpio)")
def test_the_initramfs_is_a_newc_archive_cpio_reads(tmp_path):
    archive = tmp_path / "rootfs.cpio"
    archive.write_bytes(newc({"init": (0o100755, b"\x7fELF..."), "proc": (0o040755, b"")}))
    with archive.open("rb") as fh:
        proc = subprocess.run(["cpio", "-itv"], stdin=fh, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    names = [line.split()[-1] for line in proc.stdout.splitlines()]
    assert names == ["init", "proc"]
    assert proc.stdout.splitlines()[0].startswith("-rwxr-xr-x")


def test_the_verdict_comes_from_the_init_or_from_the_console_for_a_boot_failure():
    leak = load(LEAK)
    text = "FUZZER: PageTables_kB before=448 after=26048 runs=200\nVERDICT: REPRODUCED (PageTables grew)\n"
    assert console_verdict(text, leak) == ("VERDICT: REPRODUCED (PageTables grew)",
                                           ("FUZZER: PageTables_kB before=448 after=26048 runs=200",))
    seed = load(SEED_612)
    console = "[    0.1] ftrace: allocating\n[    0.2] kernel BUG at arch/powerpc/mm/pgtable.c:403!\n"
    assert console_verdict(console, seed)[0] == (
        "VERDICT: REPRODUCED during boot: [    0.2] kernel BUG at arch/powerpc/mm/pgtable.c:403!")
    other = Entry(title="t", kernel="v6.12", mmu="radix", cpus=2, plugins=(), config={}, options={},
                  expect=Signature("BUG", "f", "mm/x.c:1"), steps=seed.steps)
    assert console_verdict("Kernel panic - not syncing: Attempted to kill init!\n", other)[0].startswith(
        "VERDICT: NOT REPRODUCED (the kernel died otherwise: Kernel panic")


def test_bad_input_is_one_usage_error(cli, tmp_path):
    r = cli("boot", str(LEAK), "--source", str(tmp_path))
    assert r.rc == 4
    assert r.err.count("\n") == 1 and r.err.startswith("ERROR: boot: ")


LEAK_612 = ROOT / "corpus" / "v6.12-end-state-page-table-memory-freed-9169333d7256.json"
#: The one-line fix of the page-table leak (tlb_finish_mmu in put_patching_mm), and the seed bug
#: (c28c15b6d28a's cached PTE) put back into 6.12.117: the patches the README's commands use.
LEAK_FIX = ROOT / "tests" / "data" / "cpuhp-leak-fix-6.12.patch"
SEED_BUG = ROOT / "tests" / "data" / "seed-bug-6.12.patch"


def real_boot(cli, tmp_path, repro: Path, patch: Path) -> tuple[str, str, str]:
    """``boot REPRO --patch PATCH`` on FUZZER_KERNEL_SOURCE: (as-is verdict, patched verdict, stdout).
    FUZZER_BOOT_WORK keeps the built trees between runs (a first build takes 20-50 minutes)."""
    source = os.environ.get("FUZZER_KERNEL_SOURCE", "")
    if not source or missing_tools():
        pytest.skip("set FUZZER_KERNEL_SOURCE to an unpacked linux-source-6.12 tree; needs the tools"
                    " python -m fuzzer boot names")
    work = os.environ.get("FUZZER_BOOT_WORK") or str(tmp_path / "w")
    r = cli("boot", str(repro), "--source", source, "--patch", str(patch), "--work", work)
    assert r.rc == 0, r.err
    as_is, patched = [line for line in r.out.splitlines() if "VERDICT" in line]
    return as_is, patched, r.out


def page_tables_kb_per_run(out: str) -> list[float]:
    """Each boot's ``FUZZER: PageTables_kB before=B after=A runs=N`` line, as (A - B) / N."""
    found = re.findall(r"PageTables_kB before=(\d+) after=(\d+) runs=(\d+)", out)
    return [(int(after) - int(before)) / int(runs) for before, after, runs in found]


@pytest.mark.slow
def test_a_real_612_kernel_leaks_page_tables_at_cpu_offline(cli, tmp_path):
    """Builds linux-source-6.12 and boots it twice: as is (128 kB of page tables lost per
    offline/online cycle, as shared/reference/real-boots measured) and with the fix (flat)."""
    as_is, patched, out = real_boot(cli, tmp_path, LEAK_612, LEAK_FIX)
    assert "VERDICT: REPRODUCED" in as_is and "VERDICT: NOT REPRODUCED" in patched
    assert page_tables_kb_per_run(out) == [128.0, 0.0]


@pytest.mark.slow
def test_the_seed_bug_put_back_into_612_dies_at_boot_as_the_model_says(cli, tmp_path):
    as_is, patched, _ = real_boot(cli, tmp_path, SEED_612, SEED_BUG)
    assert "VERDICT: NOT REPRODUCED" in as_is
    assert "VERDICT: REPRODUCED during boot:" in patched
    assert "kernel BUG at arch/powerpc/mm/pgtable.c:403!" in patched


@pytest.mark.skipif(shutil.which("patch") is None, reason="patch not installed (apt-get install patch)")
def test_a_patched_copy_is_kept_and_repatched_for_another_patch(tmp_path):
    source = tmp_path / "src"
    source.mkdir()
    (source / "a.c").write_text("one\ntwo\nthree\n")
    first, second = tmp_path / "first.patch", tmp_path / "second.patch"
    first.write_text("--- a/a.c\n+++ b/a.c\n@@ -1,3 +1,3 @@\n one\n-two\n+TWO\n three\n")
    second.write_text("--- a/a.c\n+++ b/a.c\n@@ -1,3 +1,3 @@\n-one\n+ONE\n two\n three\n")
    builder = Builder(tmp_path / "work")
    builder.work.mkdir()
    tree = builder.tree(source, "patched", first)
    assert (tree / "a.c").read_text() == "one\nTWO\nthree\n"
    (tree / "a.o").write_text("kept")  # a build product of the copy
    assert builder.tree(source, "patched", first) == tree
    assert builder.tree(source, "patched", second) == tree
    assert (tree / "a.c").read_text() == "ONE\ntwo\nthree\n"  # the first reversed, the second applied
    assert (tree / "a.o").read_text() == "kept" and (source / "a.c").read_text() == "one\ntwo\nthree\n"
    (tree / APPLIED).unlink()
    with pytest.raises(UsageError, match="whose patch is unknown"):
        builder.tree(source, "patched", first)
