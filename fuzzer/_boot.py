"""Build a real kernel, boot it in QEMU with an exported reproduction, and print the verdict.

``python -m fuzzer boot REPRO --source DIR`` closes the loop from model to
machine, as the real boots behind the model's verdicts were made
(``docs/fidelity.md``, "Verdicts"): ``powernv_defconfig`` plus the options
the finding needs (``DEBUG_VM``, ``KPROBES``, ``STRICT_KERNEL_RWX``, the
reproduction's own ``CONFIG_*``), ``make zImage.epapr`` with the ppc64le
cross compiler, the reproduction exported as a static init against the
tree's own nolibc (:mod:`fuzzer._export`), packed as a one-file initramfs,
and ``qemu-system-ppc64 -machine powernv``. The console goes to a log; the
verdict is the init's ``VERDICT:`` line, or for a failure during boot (the
init never runs) the expected kernel message on the console. ``--patch
FILE`` applies a candidate fix to a copy of the tree and boots both, side
by side.

Building a kernel takes about 20 minutes on two idle cores (the build tree is
kept in ``--work`` and reused); a boot with 200 hotplug cycles 75-110 s.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import attrs

from fuzzer._corpus import Entry
from fuzzer._errors import UsageError
from fuzzer._export import CROSS_CC, check_for, export, read_reproduction

ARCH = "powerpc"
CROSS_COMPILE = "powerpc64le-linux-gnu-"
#: Commands the build and the boot need, and the Debian package of each.
TOOLS = {
    CROSS_CC: "gcc-powerpc64le-linux-gnu",
    "qemu-system-ppc64": "qemu-system-ppc",
    "make": "make",
    "flex": "flex",
    "bison": "bison",
    "bc": "bc",
    "patch": "patch",
}
#: What every boot needs besides the finding's own options (as the real boots were built).
BASE_CONFIG = ("-e DEBUG_VM", "-e KPROBES", "-e STRICT_KERNEL_RWX", "-e PPC_RADIX_MMU", "-d MODULES",
               "-e BLK_DEV_INITRD", "-e HOTPLUG_CPU", "-e DEVTMPFS", "-e DEBUG_FS", "-e FTRACE",
               "-e KPROBE_EVENTS", "-e PERF_EVENTS", "-e HAVE_HW_BREAKPOINT", "-e SCHEDSTATS")
#: Model options that are no Kconfig symbol (hardware facts of the modelled machine).
NOT_KCONFIG = frozenset({"CONFIG_PPC_NR_DAWR"})
#: Boot options: POWER9 powernv, as the real boots (the IPMI devices let the init power off).
QEMU = ("qemu-system-ppc64", "-machine", "powernv", "-m", "2G", "-device", "ipmi-bmc-sim,id=bmc0",
        "-device", "isa-ipmi-bt,bmc=bmc0,irq=10", "-nodefaults", "-no-reboot", "-display", "none",
        "-serial", "mon:stdio")


def missing_tools(which: Any = shutil.which) -> list[str]:
    """One line per missing command, naming its Debian package."""
    return [f"{cmd} not found: apt-get install {pkg}" for cmd, pkg in TOOLS.items() if which(cmd) is None]


def kconfig_args(config: Mapping[str, Any]) -> list[str]:
    """``scripts/config`` arguments: the base set, then the reproduction's own options."""
    args = [part for item in BASE_CONFIG for part in item.split()]
    for name, value in sorted(config.items()):
        if name in NOT_KCONFIG or not name.startswith("CONFIG_"):
            continue
        sym = name.removeprefix("CONFIG_")
        if isinstance(value, bool):
            args += ["-e" if value else "-d", sym]
        elif isinstance(value, int):
            args += ["--set-val", sym, str(value)]
        else:
            args += ["--set-str", sym, str(value)]
    if config.get("CONFIG_PPC_64K_PAGES") is False:
        args += ["-e", "PPC_4K_PAGES"]
    return args


def newc(files: Mapping[str, tuple[int, bytes]]) -> bytes:
    """A cpio archive in the kernel's initramfs ``newc`` format: ``{name: (mode, data)}``."""
    out = bytearray()

    def entry(ino: int, name: str, mode: int, data: bytes) -> None:
        fields = [ino, mode, 0, 0, 1, 0, len(data), 0, 0, 0, 0, len(name) + 1, 0]
        out.extend(b"070701" + b"".join(b"%08X" % f for f in fields))
        out.extend(name.encode() + b"\0")
        out.extend(b"\0" * (-len(out) % 4))
        out.extend(data)
        out.extend(b"\0" * (-len(out) % 4))

    for ino, (name, (mode, data)) in enumerate(sorted(files.items()), 1):
        entry(ino, name, mode, data)
    entry(0, "TRAILER!!!", 0, b"")
    return bytes(out)


@attrs.frozen
class BootResult:
    """What one boot printed."""

    label: str
    verdict: str
    """The ``VERDICT:`` line, or what the console showed for a failure during boot."""
    log: Path
    numbers: tuple[str, ...] = ()
    """The init's ``FUZZER:`` lines (raw counters)."""


def console_verdict(text: str, entry: Entry) -> tuple[str, tuple[str, ...]]:
    """The verdict and raw numbers a boot's console shows."""
    numbers = tuple(line.strip() for line in text.splitlines() if line.strip().startswith("FUZZER:"))
    for line in text.splitlines():
        if line.strip().startswith("VERDICT:"):
            return line.strip(), numbers
    check = check_for(entry.expect)
    for needle in check.needles:
        for line in text.splitlines():
            if needle in line:
                return f"VERDICT: REPRODUCED during boot: {line.strip()}", numbers
    if "Kernel panic" in text or "Oops:" in text:
        first = next(line for line in text.splitlines() if "Kernel panic" in line or "Oops:" in line)
        return f"VERDICT: NOT REPRODUCED (the kernel died otherwise: {first.strip()})", numbers
    return "VERDICT: NO VERDICT (the init did not report; see the log)", numbers


#: The patch a patched copy holds, inside the copy (so a later --patch can reverse it).
APPLIED = ".fuzzer-boot.patch"


class Builder:
    """Builds kernels and inits in a work directory, running each command with its output logged."""

    def __init__(self, work: Path, jobs: int | None = None, echo: Any = None) -> None:
        self.work = work
        self.jobs = jobs or os.cpu_count() or 2
        self.echo = echo or (lambda text: None)

    def run(self, cmd: Sequence[str], cwd: Path, log: Path, timeout: float | None = None) -> None:
        self.echo(f"$ {' '.join(cmd)}")
        with log.open("a", encoding="utf-8") as fh:
            proc = subprocess.run(cmd, cwd=cwd, stdout=fh, stderr=subprocess.STDOUT, timeout=timeout,
                                  check=False)
        if proc.returncode != 0:
            raise UsageError(f"boot: {' '.join(cmd[:3])} failed (exit {proc.returncode}); see {log}")

    def tree(self, source: Path, label: str, patch: Path | None) -> Path:
        """A build tree: ``source`` itself, or a copy with ``patch`` applied. The copy is kept and
        re-patched for another patch (the old one reversed first); a copy of a built tree
        builds only what the patch touches."""
        if patch is None:
            return source
        tree = self.work / f"tree-{label}"
        applied = tree / APPLIED
        log = self.work / f"patch-{label}.log"
        wanted = patch.read_bytes()
        if not tree.exists():
            self.run(["cp", "-a", f"{source}/.", str(tree)], self.work, self.work / "copy.log")
            self.keep_objects(source, tree)
        elif applied.is_file() and applied.read_bytes() == wanted:
            return tree
        elif applied.is_file():
            self.run(["patch", "-R", "-p1", "-i", str(applied)], tree, log)
        else:
            raise UsageError(f"boot: {tree} holds a copy whose patch is unknown (an interrupted copy?):"
                             " remove it, or pass another --work")
        self.run(["patch", "-p1", "-i", str(patch.resolve())], tree, log)
        applied.write_bytes(wanted)
        return tree

    def keep_objects(self, source: Path, tree: Path) -> None:
        """Keep the copy's objects up to date: every object depends on objtool, whose build
        records absolute paths, so the copy would rebuild objtool and then everything. Build
        it in the copy now and date it back to the original's build."""
        objtool = source / "tools" / "objtool" / "objtool"
        if not objtool.is_file():
            return  # the source was never built: the copy's first build is a full one anyway
        self.run(["make", f"ARCH={ARCH}", f"CROSS_COMPILE={CROSS_COMPILE}", "tools/objtool"], tree,
                 self.work / "copy.log")
        stamp = objtool.stat()
        for path in (tree / "tools" / "objtool").rglob("*"):
            if path.is_file() and path.stat().st_mtime > stamp.st_mtime:
                os.utime(path, ns=(stamp.st_atime_ns, stamp.st_mtime_ns))

    def kernel(self, tree: Path, config: Mapping[str, Any], label: str) -> Path:
        """Configure and build ``zImage.epapr`` (kept: a second call with the same config is quick)."""
        log = self.work / f"build-{label}.log"
        make = ["make", f"ARCH={ARCH}", f"CROSS_COMPILE={CROSS_COMPILE}"]
        self.run([*make, "powernv_defconfig"], tree, log)
        self.run(["scripts/config", *kconfig_args(config)], tree, log)
        self.run([*make, "olddefconfig"], tree, log)
        self.run([*make, f"-j{self.jobs}", "zImage.epapr"], tree, log)
        self.run([*make, "headers_install", f"INSTALL_HDR_PATH={self.work / 'hdr'}"], tree, log)
        return tree / "arch" / "powerpc" / "boot" / "zImage.epapr"

    def initramfs(self, entry: Entry, tree: Path, label: str) -> Path:
        """The reproduction as ``/init`` in a newc initramfs."""
        src = self.work / f"repro-{label}.c"
        src.write_text(export(entry, "init-c"), encoding="utf-8")
        init = self.work / f"init-{label}"
        nolibc = tree / "tools" / "include" / "nolibc" / "nolibc.h"
        headers = self.work / "hdr" / "include"
        self.run([CROSS_CC, "-static", "-nostdlib", "-fno-stack-protector", f"-I{headers}",
                  "-include", str(nolibc), "-o", str(init), str(src), "-lgcc"], self.work,
                 self.work / f"init-{label}.log")
        cpio = self.work / f"rootfs-{label}.cpio"
        cpio.write_bytes(newc({"init": (0o100755, init.read_bytes()), "dev": (0o040755, b""),
                               "proc": (0o040755, b""), "sys": (0o040755, b"")}))
        return cpio

    def boot(self, kernel: Path, cpio: Path, entry: Entry, label: str, timeout: float) -> BootResult:
        log = self.work / f"console-{label}.log"
        cmd = [*QEMU, "-smp", str(max(2, min(entry.cpus, 4))), "-kernel", str(kernel), "-initrd", str(cpio)]
        self.echo(f"$ {' '.join(cmd)}")
        try:
            proc = subprocess.run(cmd, stdin=subprocess.DEVNULL, capture_output=True, timeout=timeout,
                                  check=False)
            text = proc.stdout.decode(errors="replace")
        except subprocess.TimeoutExpired as exc:
            text = (exc.stdout or b"").decode(errors="replace") + f"\n[boot: killed after {timeout:.0f} s]\n"
        log.write_text(text, encoding="utf-8")
        verdict, numbers = console_verdict(text, entry)
        return BootResult(label, verdict, log, numbers)


def boot(repro: str, source: str, *, patch: str | None = None, work: str = "fuzzer-boot",
         timeout: float = 600.0, echo: Any = None) -> list[BootResult]:
    """Build, boot and judge ``repro`` on the kernel in ``source`` (and with ``patch`` applied)."""
    problems = missing_tools()
    if problems:
        raise UsageError("boot: " + "; ".join(problems))
    entry = read_reproduction(repro)
    src = Path(source)
    if not (src / "Makefile").is_file() or not (src / "arch" / "powerpc").is_dir():
        raise UsageError(f"boot: {source} is not a kernel source tree (unpack Debian's"
                         " /usr/src/linux-source-6.12.tar.xz and pass its directory)")
    if patch is not None and not Path(patch).is_file():
        raise UsageError(f"boot: --patch {patch}: no such file")
    builder = Builder(Path(work).resolve(), echo=echo)
    builder.work.mkdir(parents=True, exist_ok=True)
    results = []
    for label, fix in _variants(patch):
        tree = builder.tree(src.resolve(), label, fix)
        kernel = builder.kernel(tree, entry.config, label)
        cpio = builder.initramfs(entry, tree, label)
        results.append(builder.boot(kernel, cpio, entry, label, timeout))
    return results


def _variants(patch: str | None) -> Iterable[tuple[str, Path | None]]:
    yield "as-is", None
    if patch is not None:
        yield "patched", Path(patch)
