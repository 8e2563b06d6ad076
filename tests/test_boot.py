"""``python -m fuzzer boot``: its pieces, fast; the whole build-and-boot path is marked slow."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from fuzzer import Signature
from fuzzer._boot import console_verdict, kconfig_args, missing_tools, newc
from fuzzer._corpus import Entry, load

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


@pytest.mark.slow
def test_a_real_612_kernel_leaks_page_tables_at_cpu_offline(cli, tmp_path):
    """Builds linux-source-6.12 (20-50 minutes) and boots it twice: as is and with the fix."""
    source = os.environ.get("FUZZER_KERNEL_SOURCE", "")
    if not source or missing_tools():
        pytest.skip("set FUZZER_KERNEL_SOURCE to an unpacked linux-source-6.12 tree; needs the tools"
                    " python -m fuzzer boot names")
    fix = tmp_path / "fix.patch"
    fix.write_text("--- a/arch/powerpc/lib/code-patching.c\n+++ b/arch/powerpc/lib/code-patching.c\n"
                   "@@ -145,6 +145,7 @@\n \n \ttlb_gather_mmu(&tlb, mm);\n"
                   " \tfree_pgd_range(&tlb, patching_addr, patching_addr + PAGE_SIZE, 0, 0);\n"
                   "+\ttlb_finish_mmu(&tlb);\n \tmmput(mm);\n }\n \n")
    r = cli("boot", str(LEAK), "--source", source, "--patch", str(fix), "--work", str(tmp_path / "w"))
    assert r.rc == 0, r.err
    as_is, patched = [line for line in r.out.splitlines() if "VERDICT" in line]
    assert "VERDICT: REPRODUCED" in as_is and "VERDICT: NOT REPRODUCED" in patched
