"""Export a reproduction as a program for a real powerpc kernel: ``python -m fuzzer export``.

A corpus entry (or a ``--report-json`` report) becomes a static init written
against the kernel's own nolibc (``tools/include/nolibc/nolibc.h``: only a
cross compiler is needed) or a POSIX shell script for a machine with a
userland. Each step maps to its real equivalent where there is one (CPU
hotplug through sysfs, kprobes and ftrace through tracefs, a hardware
watchpoint through ``perf_event_open``), pinned to the CPU the step names
(``sched_setaffinity``). Steps with no real equivalent -- a chosen
interrupt, a precise interleaving -- are listed in the program's header and
approximated where a standard technique exists: when the reproduction
interleaves two or more CPUs, each CPU's operations run in a loop on that CPU
for a bounded time, as a stress test.

The program ends with one verdict line: ``VERDICT: REPRODUCED`` or ``VERDICT:
NOT REPRODUCED`` (or ``VERDICT: UNOBSERVABLE`` for a finding with no kernel
message and no counter), with the raw numbers: a kernel message at the
reported ``file:line`` read from ``/dev/kmsg``, or, for a leak, the drift of
``PageTables`` (``/proc/meminfo``) over repetitions of the steps.

How an operation maps is the plugin's business: a plugin answers
``fuzzer_export_operation`` for its own operations (the built-in ones are
answered here).
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import attrs

from fuzzer._corpus import CorpusError, Entry
from fuzzer._corpus import load as load_entry
from fuzzer._errors import Signature, UsageError

FORMATS = ("init-c", "shell")
#: Repetitions of the steps for a counter (leak) verdict, as the real-boots measurement did.
LEAK_REPEAT = 200
#: Seconds each CPU's racing operations loop when the reproduction interleaves CPUs.
STRESS_SECONDS = 10
#: What the shell and C programs print before the verdict's raw numbers.
TAG = "FUZZER:"


@attrs.frozen
class Action:
    """What one operation becomes on a real kernel, in each format."""

    shell: tuple[str, ...] = ()
    """Shell commands (run pinned to the step's CPU)."""
    c: tuple[str, ...] = ()
    """C statements using the prelude's helpers (run pinned to the step's CPU)."""
    note: str = ""
    """Where the real equivalent is approximate or missing: listed in the header."""


@attrs.frozen
class Check:
    """What the exported program checks at the end."""

    kind: str
    """``message`` (a kernel message), ``counter`` (a counter's drift) or ``none``."""
    needles: tuple[str, ...] = ()
    """``message``: any of these in /dev/kmsg after the steps started is a reproduction."""
    counter: str = ""
    """``counter``: the /proc/meminfo field whose growth over ``repeat`` runs is the leak."""
    repeat: int = 1
    """How many times the steps run."""


# -- what a finding predicts ---------------------------------------------------------------


def check_for(expect: Signature | None) -> Check:
    """The real-kernel check for a reproduction's expected outcome."""
    if expect is None:
        return Check("message", ("kernel BUG at", "WARNING:", "Oops:", "BUG:"))
    if "leak" in expect.function.lower():
        return Check("counter", counter="PageTables", repeat=LEAK_REPEAT)
    loc = expect.location
    if expect.kind == "BUG" and loc:
        return Check("message", (f"kernel BUG at {loc}!",))
    if expect.kind in ("WARNING", "LOCKDEP", "KASAN", "OOPS") and loc:
        return Check("message", (f"at {loc}",))
    if expect.kind == "LOCKDEP":
        return Check("message", ("possible circular locking dependency", "inconsistent lock state",
                                 "BUG: sleeping function called from invalid context"))
    if expect.kind == "DEADLOCK":
        return Check("message", ("soft lockup", "hard LOCKUP", "self-detected stall"))
    if expect.kind == "OOPS":
        return Check("message", ("Kernel NULL pointer dereference", "Unable to handle kernel"))
    return Check("none")


# -- how the built-in operations map -------------------------------------------------------

_KPROBE_SITES = {0: "do_sys_open", 1: "do_sys_open+0x4", 3: "vfs_read", 4: "vfs_read+0x4", 9: "schedule"}
_TRACEFS = "/sys/kernel/tracing"


def _kprobe(op: str, site: int) -> Action:
    where = _KPROBE_SITES.get(site)
    if where is None:
        return Action(note=f"kprobes site {site} is one of the model's own text layouts (no real symbol)")
    event = f"fuzzer/k{site}"
    if op == "register":
        return Action((f"echo 'p:{event} {where}' >> {_TRACEFS}/kprobe_events",
                       f"echo 1 > {_TRACEFS}/events/{event}/enable"),
                      (f'append_file("{_TRACEFS}/kprobe_events", "p:{event} {where}\\n");',
                       f'write_file("{_TRACEFS}/events/{event}/enable", "1");'))
    if op in ("enable", "disable"):
        on = "1" if op == "enable" else "0"
        return Action((f"echo {on} > {_TRACEFS}/events/{event}/enable",),
                      (f'write_file("{_TRACEFS}/events/{event}/enable", "{on}");',))
    if op == "unregister":
        return Action((f"echo 0 > {_TRACEFS}/events/{event}/enable",
                       f"echo '-:{event}' >> {_TRACEFS}/kprobe_events"),
                      (f'write_file("{_TRACEFS}/events/{event}/enable", "0");',
                       f'append_file("{_TRACEFS}/kprobe_events", "-:{event}\\n");'))
    # hit: make the CPU run the probed function
    if where.startswith("schedule"):
        return Action(("sleep 0",), ("sched_yield_now();",), note="kprobes.hit: a yield runs schedule()")
    return Action(("cat /proc/version > /dev/null",), ('read_file("/proc/version");',),
                  note=f"kprobes.hit: a read of /proc/version runs {where.split('+')[0]}")


def builtin_action(name: str, args: Mapping[str, Any]) -> Action | None:
    """The real equivalent of a built-in operation, or None for one this table does not know."""
    area, _, op = name.partition(".")
    if area == "kprobes":
        return _kprobe(op, int(args.get("site", 0)))
    if name == "ftrace.toggle":
        tracer = "function" if args.get("enable") else "nop"
        return Action((f"echo {tracer} > {_TRACEFS}/current_tracer",),
                      (f'write_file("{_TRACEFS}/current_tracer", "{tracer}");',))
    if name == "jump_label.toggle":
        on = "1" if int(args.get("key", 0)) % 2 == 0 else "0"
        return Action((f"echo {on} > /proc/sys/kernel/sched_schedstats",),
                      (f'write_file("/proc/sys/kernel/sched_schedstats", "{on}");',),
                      note="jump_label.toggle: the model's keys are its own; sched_schedstats toggles a"
                      " real static key (sched_schedstats) the same way")
    if name == "fixups.entry_flush":
        on = "1" if args.get("enable") else "0"
        path = "/sys/kernel/debug/powerpc/entry_flush"
        return Action((f"echo {on} > {path}",), (f'write_file("{path}", "{on}");',))
    if name == "breakpoints.set":
        return Action(c=(f"set_watchpoint({int(args.get('slot', 0))});",),
                      note="breakpoints.set: a perf_event_open(PERF_TYPE_BREAKPOINT) watchpoint on a user"
                      " page (the init format only)")
    if name == "breakpoints.clear":
        return Action(c=(f"clear_watchpoint({int(args.get('slot', 0))});",))
    return None


# -- the program -------------------------------------------------------------------------------


@attrs.frozen
class Plan:
    """A reproduction as a real-kernel program sees it."""

    title: str
    header: tuple[str, ...]
    """Model configuration, expectation, and the steps that are approximated or skipped."""
    hotplug: tuple[tuple[str, int], ...]
    """Foreground actions in order: ("online"|"offline"|"op", index into ``ops``)."""
    ops: tuple[tuple[int, Action], ...]
    """(CPU, action) of each started operation, in order."""
    race: bool
    """The reproduction interleaves two or more CPUs: each CPU's operations loop concurrently."""
    check: Check


def plan(entry: Entry, actions: Mapping[tuple[str, str], Action | None]) -> Plan:
    """Map ``entry``'s steps to real actions; ``actions`` answers (operation, args-json)."""
    notes: list[str] = []
    fg: list[tuple[str, int]] = []
    ops: list[tuple[int, Action]] = []
    cpus_run: set[int] = set()
    for i, step in enumerate(entry.steps, 1):
        if step.action in ("online", "offline"):
            fg.append((step.action, int(step.cpu or 0)))
        elif step.action == "start":
            act = actions.get((step.name, _key(step.args)))
            if act is None:
                notes.append(f"{i}. {step.describe()}: no real equivalent known (skipped)")
                continue
            if act.note:
                notes.append(f"{i}. {step.describe()}: {act.note}")
            fg.append(("op", len(ops)))
            ops.append((int(step.cpu or 0), act))
        elif step.action == "irq":
            notes.append(f"{i}. {step.describe()}: an interrupt cannot be chosen on a real machine"
                         " (the stress loop makes them arrive at random points)")
        elif step.action == "run":
            cpus_run |= set(step.cpus)
    if all(step.action == "boot" for step in entry.steps):
        notes.append("the model fails during boot: a real kernel shows it on the console before init"
                     " runs, so this program only reports what it finds in /dev/kmsg if the boot survives")
    if any(what == "online" for what, _ in fg):
        notes.append("a real kernel brings every CPU online at boot, where the model boots CPU 0 alone:"
                     " an online step for a CPU already online does nothing")
    race = len(cpus_run) > 1 and len({cpu for cpu, _ in ops}) > 1
    if len(cpus_run) > 1:
        notes.append("the interleaving of " + ", ".join(f"CPU {c}" for c in sorted(cpus_run))
                     + (f": approximated by each CPU's operations looping for {STRESS_SECONDS} s"
                        if race else ": not reproducible exactly; the steps run in order"))
    check = check_for(entry.expect)
    header = (f"{entry.title}", f"model: kernel {entry.kernel}, MMU {entry.mmu}, {entry.cpus} CPUs"
              + (f", -p {' -p '.join(entry.plugins)}" if entry.plugins else ""),
              "config: " + " ".join(f"{k}={_kconf(v)}" for k, v in entry.config.items()),
              f"expect: {entry.expected}", "verdict: " + _describe_check(check),
              *(["steps approximated or without a real equivalent:", *(f"  {n}" for n in notes)]
                if notes else ["every step has a real equivalent"]))
    return Plan(entry.title, header, tuple(fg), tuple(ops), race, check)


def _key(args: Iterable[tuple[str, Any]]) -> str:
    return json.dumps(dict(args), sort_keys=True)


def _kconf(v: Any) -> str:
    return ("y" if v else "n") if isinstance(v, bool) else str(v)


def _describe_check(check: Check) -> str:
    if check.kind == "message":
        return "a kernel message containing " + " or ".join(repr(n) for n in check.needles)
    if check.kind == "counter":
        return f"{check.counter} in /proc/meminfo growing over {check.repeat} runs of the steps"
    return "none on a real kernel (the model's invariant has no kernel message): the steps only run"


def _c_str(text: str) -> str:
    return json.dumps(text)


def render_shell(p: Plan) -> str:
    """The reproduction as a POSIX shell script (``sh -n`` clean) for a machine with a userland."""
    out = ["#!/bin/sh", *(f"# {line}" for line in p.header),
           "# Exported by ppc-kernel-fuzzer (python -m fuzzer export). Run as root on the target;",
           "# REPEAT and STRESS_SECONDS may be set in the environment.",
           f"REPEAT=${{REPEAT:-{p.check.repeat}}}", f"STRESS_SECONDS=${{STRESS_SECONDS:-{STRESS_SECONDS}}}",
           "[ -e /sys/kernel/tracing/kprobe_events ] || mount -t tracefs nodev /sys/kernel/tracing"
           " 2>/dev/null", "",
           "counter() { awk -v k=\"$1:\" '$1 == k { print $2 }' /proc/meminfo; }",
           "cpu_online() { echo \"$2\" > \"/sys/devices/system/cpu/cpu$1/online\""
           f" || echo \"{TAG} cpu$1 online=$2 failed\"; }}",
           "on_cpu() { cpu=$1; shift; taskset -c \"$cpu\" sh -c \"$*\"; }", ""]
    out += ['echo "fuzzer-export: start" > /dev/kmsg 2>/dev/null',
            f"before=$(counter {p.check.counter or 'PageTables'})"]
    if p.race:
        out += ["end=$(($(date +%s) + STRESS_SECONDS))"]
        for cpu in sorted({c for c, _ in p.ops}):
            cmds = "; ".join(line for c, act in p.ops if c == cpu for line in act.shell) or ":"
            out.append(f"( while [ \"$(date +%s)\" -lt \"$end\" ]; do taskset -c {cpu} sh -c"
                       f" {shlex.quote(cmds)}; done ) &")
    out += ["i=0", 'while [ "$i" -lt "$REPEAT" ]; do']
    for what, arg in p.hotplug:
        if what in ("online", "offline"):
            out.append(f"  cpu_online {arg} {1 if what == 'online' else 0}")
        elif not p.race:
            cpu, act = p.ops[arg]
            out.append(f"  on_cpu {cpu} {shlex.quote('; '.join(act.shell) or ':')}")
    out += ["  i=$((i + 1))", "done", "wait" if p.race else ":", "sleep 3  # RCU-deferred frees settle",
            f"after=$(counter {p.check.counter or 'PageTables'})"]
    out += _shell_verdict(p.check)
    return "\n".join(out) + "\n"


def _shell_verdict(check: Check) -> list[str]:
    if check.kind == "counter":
        return [f'echo "{TAG} {check.counter}_kB before=$before after=$after runs=$REPEAT"',
                'if [ $((after - before)) -ge $((REPEAT / 2)) ]; then',
                f'  echo "VERDICT: REPRODUCED ({check.counter} grew by $((after - before)) kB)"',
                f'else echo "VERDICT: NOT REPRODUCED ({check.counter} $before -> $after kB)"; fi']
    if check.kind == "message":
        greps = " ".join(f"-e {shlex.quote(n)}" for n in check.needles)
        return ["hit=$(dmesg | sed -n '/fuzzer-export: start/,$p' | grep -F " + greps + " | head -n 1)",
                'if [ -n "$hit" ]; then echo "VERDICT: REPRODUCED: $hit";'
                ' else echo "VERDICT: NOT REPRODUCED (no matching kernel message)"; fi']
    return ['echo "VERDICT: UNOBSERVABLE (the steps ran; this finding prints nothing on a real kernel)"']


#: The init program's helpers, written against nolibc (no libc, no snprintf, no strstr).
C_PRELUDE = r"""
#include <linux/perf_event.h>
#include <linux/hw_breakpoint.h>

static char buf[1 << 16];

static __attribute__((unused)) long read_file(const char *path)
{
	int fd = open(path, O_RDONLY);
	long n, tot = 0;

	if (fd < 0)
		return -1;
	while (tot < (long)sizeof(buf) - 1 && (n = read(fd, buf + tot, sizeof(buf) - 1 - tot)) > 0)
		tot += n;
	close(fd);
	buf[tot] = 0;
	return tot;
}

static __attribute__((unused)) int put_file(const char *path, const char *s, int flags)
{
	int fd = open(path, O_WRONLY | flags);
	int r;

	if (fd < 0) {
		printf("FUZZER: open %s: errno %d\n", path, errno);
		return -1;
	}
	r = write(fd, s, strlen(s));
	if (r < 0)
		printf("FUZZER: write %s to %s: errno %d\n", s, path, errno);
	close(fd);
	return r < 0 ? -1 : 0;
}

static __attribute__((unused)) int write_file(const char *path, const char *s)
{
	return put_file(path, s, 0);
}

static __attribute__((unused)) int append_file(const char *path, const char *s)
{
	return put_file(path, s, O_APPEND);
}

static __attribute__((unused)) void cpu_online(int cpu, int on)
{
	char path[64] = "/sys/devices/system/cpu/cpu";
	char *p = path + strlen(path);

	if (cpu >= 10)
		*p++ = '0' + cpu / 10;
	*p++ = '0' + cpu % 10;
	strcpy(p, "/online");
	write_file(path, on ? "1" : "0");
}

static __attribute__((unused)) void pin(int cpu)
{
	unsigned long mask[16] = { 0 };

	mask[cpu / 64] = 1UL << (cpu % 64);
	if (syscall(__NR_sched_setaffinity, 0, sizeof(mask), mask))
		printf("FUZZER: sched_setaffinity(%d): errno %d\n", cpu, errno);
}

static __attribute__((unused)) void sched_yield_now(void) { syscall(__NR_sched_yield); }

static __attribute__((unused)) long meminfo(const char *key)
{
	size_t kl = strlen(key);
	const char *p = buf;

	read_file("/proc/meminfo");
	for (; *p; p++)
		if ((p == buf || p[-1] == '\n') && !strncmp(p, key, kl) && p[kl] == ':') {
			for (p += kl + 1; *p == ' '; p++)
				;
			return atol(p);
		}
	return -1;
}

static int watch_fd[8] = { -1, -1, -1, -1, -1, -1, -1, -1 };
static long watched[8];

static __attribute__((unused)) void set_watchpoint(int slot)
{
	struct perf_event_attr attr;

	memset(&attr, 0, sizeof(attr));
	attr.type = PERF_TYPE_BREAKPOINT;
	attr.size = sizeof(attr);
	attr.bp_type = HW_BREAKPOINT_W;
	attr.bp_addr = (unsigned long)&watched[slot];
	attr.bp_len = HW_BREAKPOINT_LEN_8;
	attr.exclude_kernel = 1;
	watch_fd[slot] = syscall(__NR_perf_event_open, &attr, 0, -1, -1, 0);
	if (watch_fd[slot] < 0)
		printf("FUZZER: perf_event_open(breakpoint): errno %d\n", errno);
}

static __attribute__((unused)) void clear_watchpoint(int slot)
{
	if (watch_fd[slot] >= 0)
		close(watch_fd[slot]);
	watch_fd[slot] = -1;
}

static __attribute__((unused)) const char *kmsg_find(const char **needles, int n)
{
	int fd = open("/dev/kmsg", O_RDONLY | O_NONBLOCK);
	static char rec[2048];
	int started = 0, i;
	long r;

	if (fd < 0)
		return 0;
	while ((r = read(fd, rec, sizeof(rec) - 1)) > 0 || (r < 0 && errno == EPIPE)) {
		if (r <= 0)
			continue;
		rec[r] = 0;
		for (i = 0; rec[i] && !started; i++)
			if (!strncmp(rec + i, "fuzzer-export: start", 20))
				started = 1;
		for (i = 0; started && i < n; i++) {
			const char *p;

			for (p = rec; *p; p++)
				if (!strncmp(p, needles[i], strlen(needles[i]))) {
					close(fd);
					return rec;
				}
		}
	}
	close(fd);
	return 0;
}

static __attribute__((unused)) long now_s(void)
{
	struct timeval tv;

	gettimeofday(&tv, 0);
	return tv.tv_sec;
}
"""


def render_c(p: Plan) -> str:
    """The reproduction as a static init (PID 1) for a real kernel, built against nolibc."""
    head = ["/*", *(f" * {line}" for line in p.header),
            " * Exported by ppc-kernel-fuzzer (python -m fuzzer export). Build:",
            " *   powerpc64le-linux-gnu-gcc -static -nostdlib -fno-stack-protector -I$HDR/include \\",
            " *     -include tools/include/nolibc/nolibc.h -o init repro.c -lgcc",
            " */", f"#define REPEAT {p.check.repeat}", f"#define STRESS_SECONDS {STRESS_SECONDS}"]
    ops = []
    for n, (_, act) in enumerate(p.ops):
        ops += [f"static void op{n}(void)", "{", *(f"\t{s}" for s in act.c or ("/* none */",)), "}", ""]
    return "\n".join([*head, C_PRELUDE, *ops, *_c_main(p)]) + "\n"


def _c_main(p: Plan) -> list[str]:
    body = ["int main(void)", "{", "\tlong before, after, end;", "\tint i, pid;", "",
            '\tmkdir("/proc", 0755);', '\tmkdir("/sys", 0755);', '\tmkdir("/dev", 0755);',
            '\tmount("proc", "/proc", "proc", 0, 0);', '\tmount("sysfs", "/sys", "sysfs", 0, 0);',
            '\tmount("devtmpfs", "/dev", "devtmpfs", 0, 0);',
            '\tmount("tracefs", "/sys/kernel/tracing", "tracefs", 0, 0);',
            '\tmount("debugfs", "/sys/kernel/debug", "debugfs", 0, 0);',
            '\twrite_file("/dev/kmsg", "fuzzer-export: start\\n");',
            f'\tbefore = meminfo("{p.check.counter or "PageTables"}");', "\tend = now_s() + STRESS_SECONDS;",
            "\t(void)end; (void)pid; (void)before; (void)after;"]
    if p.race:
        for cpu in sorted({c for c, _ in p.ops}):
            calls = " ".join(f"op{n}();" for n, (c, _) in enumerate(p.ops) if c == cpu)
            body += ["\tif (fork() == 0) {", f"\t\tpin({cpu});",
                     f"\t\twhile (now_s() < end) {{ {calls} }}", "\t\texit(0);", "\t}"]
    body += ["\tfor (i = 0; i < REPEAT; i++) {"]
    for what, arg in p.hotplug:
        if what in ("online", "offline"):
            body.append(f"\t\tcpu_online({arg}, {1 if what == 'online' else 0});")
        elif not p.race:
            cpu, _ = p.ops[arg]
            body.append(f"\t\tpin({cpu}); op{arg}();")
    body += ["\t}", "\twhile (p_race_children() > 0)", "\t\t;"] if p.race else ["\t}"]
    body += ["\tsleep(3); /* RCU-deferred frees settle */",
             f'\tafter = meminfo("{p.check.counter or "PageTables"}");', *_c_verdict(p.check),
             "\treboot(LINUX_REBOOT_CMD_POWER_OFF);", "\treturn 0;", "}"]
    if p.race:
        body = ["static int p_race_children(void)", "{", "\tint status;", "",
                "\treturn waitpid(-1, &status, 0);", "}", "", *body]
    return body


def _c_verdict(check: Check) -> list[str]:
    if check.kind == "counter":
        return [f'\tprintf("FUZZER: {check.counter}_kB before=%ld after=%ld runs=%d\\n", before, after,'
                " REPEAT);",
                "\tif (after - before >= REPEAT / 2)",
                f'\t\tprintf("VERDICT: REPRODUCED ({check.counter} grew by %ld kB)\\n", after - before);',
                "\telse",
                f'\t\tprintf("VERDICT: NOT REPRODUCED ({check.counter} %ld -> %ld kB)\\n", before, after);']
    if check.kind == "message":
        needles = ", ".join(_c_str(n) for n in check.needles)
        return ["\t{", f"\t\tstatic const char *needles[] = {{ {needles} }};",
                f"\t\tconst char *hit = kmsg_find(needles, {len(check.needles)});", "",
                '\t\tif (hit)', '\t\t\tprintf("VERDICT: REPRODUCED: %s", hit);', "\t\telse",
                '\t\t\tprintf("VERDICT: NOT REPRODUCED (no matching kernel message)\\n");', "\t}"]
    return ['\tprintf("VERDICT: UNOBSERVABLE (the steps ran; this finding prints nothing on a real'
            ' kernel)\\n");']


# -- from a file to a program ------------------------------------------------------------------


def read_reproduction(path: str | os.PathLike[str]) -> Entry:
    """A corpus entry, or a ``run --report-json`` report read as one (plain JSON, never code)."""
    file = Path(path)
    try:
        data = json.loads(file.read_text(encoding="utf-8"))
    except OSError as exc:
        raise UsageError(f"export: cannot read {file}: {exc.strerror or exc}") from None
    except ValueError as exc:
        raise CorpusError(file, "<document>", f"not JSON: {exc}") from None
    if isinstance(data, dict) and "signature" in data and "expect" not in data:
        sig = data.get("signature") or {}
        data = {"schema": 1, "title": data.get("message", ""), "kernel": data.get("kernel"),
                "mmu": data.get("mmu"), "cpus": data.get("cpus"), "plugins": data.get("plugins", []),
                "config": data.get("config", {}), "options": data.get("options", {}),
                "expect": {k: sig.get(k, "") for k in ("kind", "function", "location")},
                "steps": data.get("steps", [])}
        return Entry.from_json(data, file)
    return load_entry(file)


def export(entry: Entry, fmt: str, answer: Any = None) -> str:
    """``entry`` as a program of format ``fmt`` (:data:`FORMATS`).

    ``answer(name, args)`` maps an operation to an :class:`Action` (the plugins'
    ``fuzzer_export_operation``); None or an unknown operation falls back to the
    built-in table.
    """
    if fmt not in FORMATS:
        raise UsageError(f"unknown export format {fmt!r}; formats: {', '.join(FORMATS)}")
    actions: dict[tuple[str, str], Action | None] = {}
    for step in entry.steps:
        if step.action == "start":
            args = dict(step.args)
            act = answer(step.name, args) if answer is not None else None
            actions[(step.name, _key(step.args))] = act or builtin_action(step.name, args)
    p = plan(entry, actions)
    return render_c(p) if fmt == "init-c" else render_shell(p)


def write_export(source: str | os.PathLike[str], fmt: str, out: str | os.PathLike[str],
                 answer: Any = None) -> Path:
    """Export ``source`` into directory ``out`` (created if missing); the written file."""
    entry = read_reproduction(source)
    text = export(entry, fmt, answer)
    directory = Path(out)
    try:
        directory.mkdir(parents=True, exist_ok=True)
        target = directory / (Path(source).stem + (".c" if fmt == "init-c" else ".sh"))
        target.write_text(text, encoding="utf-8")
    except OSError as exc:
        raise UsageError(f"export: cannot write to {directory}: {exc.strerror or exc}") from None
    if fmt == "shell":
        target.chmod(0o755)
    return target


# -- building the init --------------------------------------------------------------------------

#: The ppc64le cross compiler (Debian: gcc-powerpc64le-linux-gnu).
CROSS_CC = "powerpc64le-linux-gnu-gcc"
#: Kernel UAPI headers for the target (Debian: linux-libc-dev-ppc64el-cross, a dependency of the above).
CROSS_HEADERS = "/usr/powerpc64le-linux-gnu/include"
#: Where nolibc is kept once extracted from a Debian kernel source tarball.
CACHE = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "ppc-kernel-fuzzer"


def find_nolibc(tarball: str = "/usr/src/linux-source-6.12.tar.xz") -> Path | None:
    """The directory holding the kernel's ``nolibc.h``: ``$FUZZER_NOLIBC``, an unpacked kernel
    tree under /usr/src, or the cache (filled from Debian's ``linux-source-6.12`` tarball,
    once: about 30 s); None when there is none."""
    env = os.environ.get("FUZZER_NOLIBC")
    candidates = [Path(env)] if env else []
    candidates += sorted(Path("/usr/src").glob("linux-source-*/tools/include/nolibc"))
    cached = CACHE / "nolibc" / Path(tarball).name.removesuffix(".tar.xz")
    candidates.append(cached / "tools" / "include" / "nolibc")
    for c in candidates:
        if (c / "nolibc.h").is_file():
            return c
    if env or not Path(tarball).is_file():
        return None
    cached.mkdir(parents=True, exist_ok=True)
    member = f"{Path(tarball).name.removesuffix('.tar.xz')}/tools/include/nolibc/"
    proc = subprocess.run(["tar", "-xJf", tarball, "-C", str(cached), "--strip-components=1", member],
                          capture_output=True, text=True, check=False)
    found = cached / "tools" / "include" / "nolibc"
    return found if proc.returncode == 0 and (found / "nolibc.h").is_file() else None


def compile_init(source: Path, output: Path, nolibc: Path) -> tuple[bool, str]:
    """Build an exported init with the cross compiler: (ok, compiler output)."""
    cmd = [CROSS_CC, "-Wall", "-Werror", "-static", "-nostdlib", "-fno-stack-protector",
           f"-I{CROSS_HEADERS}", "-include", str(nolibc / "nolibc.h"), "-o", str(output), str(source),
           "-lgcc"]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    except FileNotFoundError:
        return False, f"{CROSS_CC} not found (Debian: apt-get install gcc-powerpc64le-linux-gnu)"
    return proc.returncode == 0, proc.stdout + proc.stderr
