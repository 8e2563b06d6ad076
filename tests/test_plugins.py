"""The plugin host: built-ins, blocking, -p loading, validation, entry points, listing."""

from __future__ import annotations

import importlib
import importlib.metadata
import re
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from fuzzer import AUTOLOAD_ENV

ESSENTIAL = ("boot", "cpuhp", "mm", "patching")
BUILTIN = ("radix", "hash", "kprobes", "optprobes", "jump_label", "fixups", "ftrace", "interrupts",
           "breakpoints")
ALL = (*ESSENTIAL, *BUILTIN)

# A quick run: one example, kprobes off so nothing but boot is fuzzed.
QUICK_RUN = ("run", "--seed", "1", "--max-examples", "1", "--time-budget", "5")


def listing(out: str) -> dict[str, tuple[str, str, list[str]]]:
    """Parse ``python -m fuzzer plugins``: name -> (origin, file, hooks), in listed order."""
    plugins: dict[str, tuple[str, str, list[str]]] = {}
    lines = out.splitlines()
    for line, nxt in zip(lines, [*lines[1:], ""], strict=True):
        m = re.fullmatch(r"(\S+)  \[(.+)\]  (.+)", line)
        if m:
            assert nxt.startswith("    hooks: "), nxt
            hooks = nxt.removeprefix("    hooks: ").split(", ")
            plugins[m[1]] = (m[2], m[3], hooks)
    return plugins


def one_error_line(err: str) -> str:
    """A usage error is exactly one line on stderr, starting ``ERROR:``."""
    assert err.startswith("ERROR: "), err
    assert err.endswith("\n") and err.count("\n") == 1, err
    return err


# ---------------------------------------------------------------------------
# Built-ins and blocking
# ---------------------------------------------------------------------------


def test_builtins_load_in_order_with_origins(cli):
    res = cli("plugins")
    assert res.rc == 0, res.err
    plugins = listing(res.out)
    assert list(plugins) == [*ESSENTIAL, *BUILTIN]
    for name in ESSENTIAL:
        assert plugins[name][0].startswith("essential"), plugins[name]
        assert plugins[name][1].endswith((f"kernel/{name}.py", f"kernel/{name}/__init__.py"))
    for name in BUILTIN:
        assert plugins[name][0] == "built-in", plugins[name]
        assert plugins[name][1].endswith(f"{name}.py")


def test_plugins_listing_shows_hooks_versions_and_mmus(cli):
    res = cli("plugins")
    assert res.rc == 0, res.err
    plugins = listing(res.out)
    assert {"fuzzer_mmus", "fuzzer_routines", "fuzzer_addconfig"} <= set(plugins["radix"][2])
    assert {"fuzzer_addoption", "fuzzer_operations", "fuzzer_machine_setup"} <= set(
        plugins["kprobes"][2]
    )
    assert "fuzzer_kernel_versions" in plugins["boot"][2]
    assert "kernel versions: v6.1, next-20221215, v6.2, v6.12-fixed, v6.12\n" in res.out
    assert "MMUs: hash, radix\n" in res.out


def test_p_plugin_is_listed_with_origin_and_hooks(cli, make_plugin):
    mod = make_plugin("lister", """
        def fuzzer_report_header(config):
            return ["hello"]

        def fuzzer_configure(config):
            pass
        """)
    res = cli("-p", mod, "plugins")
    assert res.rc == 0, res.err
    plugins = listing(res.out)
    assert list(plugins)[-1] == mod
    origin, where, hooks = plugins[mod]
    assert origin == "-p"
    assert where.endswith(f"{mod}.py")
    assert hooks == ["fuzzer_configure", "fuzzer_report_header"]


@pytest.mark.parametrize("argv", [("-p", "no:kprobes"), ("-pno:kprobes",), ("-p=no:kprobes",)])
def test_block_kprobes_removes_plugin(cli, argv):
    res = cli(*argv, "plugins")
    assert res.rc == 0, res.err
    assert list(listing(res.out)) == [p for p in ALL if p != "kprobes"]


def test_block_kprobes_removes_its_operations_and_options(cli):
    res = cli("-p", "no:kprobes", *QUICK_RUN)
    assert res.rc == 0, res.err
    assert "plugins: " + ", ".join(p for p in ALL if p != "kprobes") + "\n" in res.out
    ops = next(line for line in res.out.splitlines() if line.startswith("operations:"))
    assert "kprobes." not in ops and "jump_label.toggle" in ops
    # -p is found after the command too.
    res = cli(*QUICK_RUN, "-p", "no:kprobes")
    assert res.rc == 0, res.err
    ops = next(line for line in res.out.splitlines() if line.startswith("operations:"))
    assert "kprobes." not in ops and "jump_label.toggle" in ops
    # Its command-line option went with it.
    res = cli("-p", "no:kprobes", "run", "--kprobe-sites", "vfs_read+0x0")
    assert res.rc == 4
    assert "--kprobe-sites" in one_error_line(res.err)


def test_kprobes_operations_present_by_default(cli):
    res = cli(*QUICK_RUN)
    assert res.rc == 0, res.err
    assert "operations: kprobes.register, kprobes.disable, kprobes.enable," in res.out


@pytest.mark.parametrize("name", ESSENTIAL)
def test_blocking_essential_plugin_is_usage_error(cli, name):
    res = cli("-p", f"no:{name}", "plugins")
    assert res.rc == 4
    line = one_error_line(res.err)
    assert repr(name) in line
    assert f"blockable built-ins: {', '.join(BUILTIN)}" in line


def test_blocking_the_only_mmu_is_a_usage_error_at_run(cli):
    assert cli("-p", "no:radix", "plugins").rc == 0
    res = cli("-p", "no:radix", *QUICK_RUN)
    assert res.rc == 4
    assert "unknown MMU 'radix'; loaded MMU plugins: hash" in one_error_line(res.err)
    res = cli("-p", "no:radix", "-p", "no:hash", *QUICK_RUN)
    assert res.rc == 4
    assert "unknown MMU 'radix'; loaded MMU plugins: none" in one_error_line(res.err)


# ---------------------------------------------------------------------------
# -p loading and validation
# ---------------------------------------------------------------------------


def test_unknown_plugin(cli):
    res = cli("-p", "doesnotexist", "plugins")
    assert res.rc == 4
    line = one_error_line(res.err)
    assert "'doesnotexist'" in line
    assert f"built-in plugins: {', '.join(BUILTIN)}" in line


def test_p_without_a_name(cli):
    res = cli("plugins", "-p")
    assert res.rc == 4
    assert "-p needs a plugin name" in one_error_line(res.err)


def test_misspelt_hook_is_rejected(cli, make_plugin):
    mod = make_plugin("typo", """
        def fuzzer_operationz(config):
            return []
        """)
    res = cli("-p", mod, "plugins")
    assert res.rc == 4
    line = one_error_line(res.err)
    assert repr(mod) in line
    assert "fuzzer_operationz" in line


def test_marked_hook_without_prefix_is_rejected(cli, make_plugin):
    mod = make_plugin("noprefix", """
        import fuzzer

        @fuzzer.hookimpl
        def operations(config):
            return []
        """)
    res = cli("-p", mod, "plugins")
    assert res.rc == 4
    line = one_error_line(res.err)
    assert repr(mod) in line
    assert "'operations'" in line


BADARG = """
    def fuzzer_operations(cfg):
        return []
    """


def test_hook_with_unknown_argument_is_rejected(cli, make_plugin):
    mod = make_plugin("badarg", BADARG)
    res = cli("-p", mod, "plugins")
    assert res.rc == 4
    assert res.err.startswith(f"ERROR: plugin {mod!r}: ")
    assert "fuzzer_operations" in res.err
    assert "cfg" in res.err
    assert res.out == ""


@pytest.mark.parametrize("case", ["bad hook argument", "module registered twice"])
def test_plugin_validation_errors_are_one_line(cli, make_plugin, case):
    plugin = make_plugin("badarg", BADARG) if case == "bad hook argument" else (
        "fuzzer_plugins.kprobes"
    )
    res = cli("-p", plugin, "plugins")
    assert res.rc == 4
    one_error_line(res.err)


def test_unprefixed_helpers_and_non_callables_are_ignored(cli, make_plugin):
    mod = make_plugin("helpers", """
        fuzzer_version = "1.0"

        def helper(config):
            return []
        """)
    res = cli("-p", mod, "plugins")
    assert res.rc == 0, res.err
    assert listing(res.out)[mod][:1] == ("-p",)
    assert listing(res.out)[mod][2] == ["(none)"]


def test_plugin_whose_import_raises(cli, make_plugin):
    mod = make_plugin("explodes", """
        raise RuntimeError("kaboom at import")
        """)
    res = cli("-p", mod, "plugins")
    assert res.rc == 4
    line = one_error_line(res.err)
    assert repr(mod) in line
    assert "RuntimeError: kaboom at import" in line


def test_plugin_with_missing_dependency_names_the_dependency(cli, make_plugin):
    mod = make_plugin("needsdep", """
        import nonexistent_dependency_xyz
        """)
    res = cli("-p", mod, "plugins")
    assert res.rc == 4
    line = one_error_line(res.err)
    assert f"cannot load plugin {mod!r}" in line
    assert "nonexistent_dependency_xyz" in line


def test_missing_dependency_prefixing_plugin_name_is_not_unknown_plugin(cli, make_plugin):
    mod = make_plugin("zzdep", """
        import zzdep
        """)
    assert mod.startswith("zzdep_")
    res = cli("-p", mod, "plugins")
    assert res.rc == 4
    line = one_error_line(res.err)
    assert "unknown plugin" not in line
    assert "No module named 'zzdep'" in line


def test_same_module_under_two_names_is_usage_error(cli):
    res = cli("-p", "fuzzer_plugins.kprobes", "plugins")
    assert res.rc == 4
    assert res.err.startswith("ERROR: plugin 'fuzzer_plugins.kprobes': ")
    assert "already registered" in res.err


def test_loading_a_builtin_again_by_short_name_is_harmless(cli):
    res = cli("-p", "kprobes", "-p", "boot", "plugins")
    assert res.rc == 0, res.err
    assert list(listing(res.out)) == [*ESSENTIAL, *BUILTIN]


def test_initcalls_run_in_plugin_registration_order(cli, make_plugin):
    template = """
        import fuzzer

        def _init(cpu):
            cpu.m.state.setdefault("initcall order", []).append(__name__)
            yield

        def fuzzer_initcalls(config):
            return [fuzzer.Initcall("init_" + __name__, _init)]
        """
    first = make_plugin("initfirst", template)
    second = make_plugin("initsecond", template + f"""
        def _check(machine):
            order = machine.state.get("initcall order")
            if order != [{first!r}, __name__]:
                return f"initcalls ran in order {{order}}"
            return None

        def fuzzer_invariants(config):
            return [fuzzer.Invariant("initcall order", _check, when="end")]
        """)
    res = cli("-p", first, "-p", second, "-p", "no:kprobes", *QUICK_RUN)
    assert res.rc == 0, res.out


# ---------------------------------------------------------------------------
# Entry points
# ---------------------------------------------------------------------------


def write_dist(root: Path, dist: str, module: str, source: str) -> None:
    """A minimal installed distribution with one ``fuzzer`` entry point."""
    info = root / f"{dist}-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(
        f"Metadata-Version: 2.1\nName: {dist}\nVersion: 1.0\n", encoding="utf-8"
    )
    (info / "entry_points.txt").write_text(f"[fuzzer]\n{dist} = {module}\n", encoding="utf-8")
    (root / f"{module}.py").write_text(source, encoding="utf-8")


FAKEPLUG = '''\
"""An entry-point plugin."""


def fuzzer_report_header(config):
    return ["fakeplug says hi"]
'''


@pytest.fixture
def fakeplug(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    write_dist(tmp_path, "fakeplug", "fakeplug_mod", FAKEPLUG)
    monkeypatch.delenv(AUTOLOAD_ENV)
    # Only fakeplug: other installed plugins (examples/fuzzer-x86) are not these tests' subject.
    real = importlib.metadata.entry_points
    monkeypatch.setattr(importlib.metadata, "entry_points", lambda **kw: [
        ep for ep in real(**kw) if getattr(ep.dist, "name", None) == "fakeplug"])
    monkeypatch.syspath_prepend(str(tmp_path))
    importlib.invalidate_caches()
    sys.modules.pop("fakeplug_mod", None)
    yield "fakeplug"
    sys.modules.pop("fakeplug_mod", None)


def test_entry_point_plugin_loads(cli, fakeplug):
    res = cli("plugins")
    assert res.rc == 0, res.err
    plugins = listing(res.out)
    assert list(plugins) == [*ESSENTIAL, *BUILTIN, "fakeplug"]
    origin, where, hooks = plugins["fakeplug"]
    assert "entry point" in origin
    assert origin == "entry point of fakeplug 1.0"
    assert where.endswith("fakeplug_mod.py")
    assert hooks == ["fuzzer_report_header"]


def test_entry_point_plugin_hooks_are_called(cli, fakeplug):
    res = cli("-p", "no:kprobes", *QUICK_RUN)
    assert res.rc == 0, res.err
    assert "plugins: " + ", ".join(p for p in ALL if p != "kprobes") + ", fakeplug\n" in res.out
    assert "\nfakeplug says hi\n" in res.out


def test_autoload_disabled_skips_entry_points(cli, fakeplug, monkeypatch):
    monkeypatch.setenv(AUTOLOAD_ENV, "1")
    res = cli("plugins")
    assert res.rc == 0, res.err
    assert "fakeplug" not in listing(res.out)
    assert "fakeplug" not in res.out


def test_autoload_disabled_still_loads_module_with_p(cli, fakeplug, monkeypatch):
    monkeypatch.setenv(AUTOLOAD_ENV, "1")
    res = cli("-p", "fakeplug_mod", "plugins")
    assert res.rc == 0, res.err
    plugins = listing(res.out)
    assert "fakeplug" not in plugins
    assert plugins["fakeplug_mod"][0] == "-p"


def test_entry_point_plugin_can_be_blocked(cli, fakeplug):
    res = cli("-p", "no:fakeplug", "plugins")
    assert res.rc == 0, res.err
    assert list(listing(res.out)) == [*ESSENTIAL, *BUILTIN]
    res = cli("-p", "no:fakeplug", "-p", "no:kprobes", *QUICK_RUN)
    assert res.rc == 0, res.err
    assert "fakeplug says hi" not in res.out


def test_broken_entry_point_plugin_is_usage_error_with_a_way_out(
    cli, tmp_path, monkeypatch
):
    write_dist(tmp_path, "brokenplug", "brokenplug_mod", "raise ImportError('half installed')\n")
    monkeypatch.delenv(AUTOLOAD_ENV)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "brokenplug_mod", raising=False)
    res = cli("plugins")
    assert res.rc == 4
    line = one_error_line(res.err)
    assert "'brokenplug'" in line
    assert "entry point of brokenplug 1.0" in line
    assert "half installed" in line
    assert f"{AUTOLOAD_ENV}=1" in line and "-p no:brokenplug" in line
    # ... and the way out works.
    assert cli("-p", "no:brokenplug", "plugins").rc == 0
