"""End to end: throw-away third-party plugins loaded with -p, good and broken."""

from __future__ import annotations

import importlib
import json
import re
import sys

import pytest

from fuzzer._cli import main
from fuzzer._plugins import BUILTIN_PLUGINS, ESSENTIAL_PLUGINS

ALL = (*ESSENTIAL_PLUGINS, *BUILTIN_PLUGINS)

RUN = ("run", "--seed", "1", "--max-examples", "50", "--time-budget", "5")

CANARY = """
    import fuzzer
    from hypothesis import strategies as st


    class Canary:
        def __init__(self):
            self.pokes = 0


    def fuzzer_addoption(parser):
        parser.addoption("--canary-limit", type=int, default=10**9, metavar="N",
                            help="how many canary pokes are fine")


    def fuzzer_machine_setup(machine):
        machine.attach("canary", Canary())


    def poke(cpu, n):
        canary = cpu.m.state["canary"]
        canary.pokes += 1
        for _ in range(n):
            yield
        yield


    def fuzzer_operations(config):
        return [fuzzer.Operation("canary.poke", poke, {"n": st.integers(0, 3)},
                                 doc="poke the canary")]


    def fuzzer_invariants(config):
        limit = config.option("canary_limit")

        def check(machine):
            pokes = machine.state["canary"].pokes
            if pokes > limit:
                return f"{pokes} pokes, limit {limit}"
            return None

        return [fuzzer.Invariant("canary limit", check)]
    """


@pytest.fixture
def canary(make_plugin) -> str:
    return make_plugin("canary", CANARY)


def test_canary_invariant_fires_above_the_option_limit(cli, canary, tmp_path):
    report = tmp_path / "canary.json"
    # The other operation plugins off: the search needs three pokes, not their work.
    others = ("kprobes", "jump_label", "breakpoints")
    blocked = [arg for name in others for arg in ("-p", f"no:{name}")]
    res = cli("-p", canary, *blocked, "run", "--seed", "1", "--max-examples", "300",
              "--canary-limit", "2", "--report-json", str(report))
    assert res.rc == 1, res.err
    loaded = ", ".join(p for p in ALL if p not in others)
    assert f"plugins: {loaded}, {canary}\n" in res.out
    assert "canary.poke" in re.search(r"^operations: (.*)$", res.out, re.M)[1]
    assert "invariant 'canary limit' violated: 3 pokes, limit 2" in res.out
    assert "Signature: INVARIANT in canary limit\n" in res.out
    repro = res.out.split("Minimal reproduction", 1)[1]
    pokes = re.findall(r"^  \d+\. CPU \d: start canary\.poke\(n=\d\)$", repro, re.M)
    assert len(pokes) >= 3, repro
    data = json.loads(report.read_text())
    assert data["signature"] == {"kind": "INVARIANT", "function": "canary limit", "location": ""}
    assert [s["name"] for s in data["steps"] if s["action"] == "start"].count("canary.poke") >= 3


def test_canary_within_a_huge_limit_runs_clean(cli, canary):
    res = cli("-p", canary, *RUN, "--canary-limit", "1000000")
    assert res.rc == 0, res.out
    builtins = ", ".join(ALL)
    assert f"plugins: {builtins}, {canary}\n" in res.out
    assert "canary.poke" in re.search(r"^operations: (.*)$", res.out, re.M)[1]
    assert re.search(r"^=+ \d+ passed, 0 failed", res.out, re.M)


def test_canary_default_option_value_is_used(cli, canary):
    res = cli("-p", canary, *RUN)
    assert res.rc == 0, res.out


def test_canary_option_in_run_help(canary, capsys):
    assert main(["-p", canary, "run", "--help"]) == 0
    text = capsys.readouterr().out
    assert f"plugin {canary}:" in text
    assert "--canary-limit N" in text
    assert "how many canary pokes are fine" in text


def test_canary_option_rejected_without_the_plugin(cli):
    res = cli(*RUN, "--canary-limit", "2")
    assert res.rc == 4
    assert res.err.startswith("ERROR: ") and "--canary-limit" in res.err


def test_canary_option_value_is_type_checked(cli, canary):
    res = cli("-p", canary, *RUN, "--canary-limit", "lots")
    assert res.rc == 4
    assert res.err.startswith("ERROR: ") and "--canary-limit" in res.err
    assert res.err.count("\n") == 1


# ---------------------------------------------------------------------------
# A plugin's own errors: exit 3, blamed on the plugin, never a kernel finding
# ---------------------------------------------------------------------------


def assert_blamed(res, plugin: str, where: str) -> None:
    assert res.rc == 3, (res.rc, res.out, res.err)
    errors = [line for line in res.err.splitlines() if line.startswith("ERROR: ")]
    assert len(errors) == 1, res.err
    assert errors[0].startswith(f"ERROR: plugin {plugin!r} raised in {where}"), res.err
    assert "This is the plugin's fault, not a kernel finding." in res.err
    assert "INTERNAL ERROR" not in res.err
    assert "failed: " not in res.out  # no kernel failure summary


def test_hook_that_raises_is_the_plugins_fault(cli, make_plugin):
    mod = make_plugin("opsboom", """
        def fuzzer_operations(config):
            raise RuntimeError("operations exploded")
        """)
    res = cli("-p", mod, *RUN)
    assert_blamed(res, mod, "hook fuzzer_operations")
    assert "RuntimeError: operations exploded" in res.err
    assert "Traceback" in res.err


def test_addoption_that_raises_is_the_plugins_fault(cli, make_plugin):
    mod = make_plugin("optboom", """
        def fuzzer_addoption(parser):
            raise RuntimeError("no options today")
        """)
    res = cli("-p", mod, "plugins")
    assert_blamed(res, mod, "hook fuzzer_addoption")


def test_configure_usage_error_stays_a_usage_error(cli, make_plugin):
    mod = make_plugin("picky", """
        import fuzzer

        def fuzzer_configure(config):
            if config.cpus != 2:
                raise fuzzer.UsageError("picky needs --cpus 2")
        """)
    res = cli("-p", mod, *RUN)
    assert res.rc == 4
    assert res.err == "ERROR: picky needs --cpus 2\n"
    assert cli("-p", mod, *RUN, "--cpus", "2", "--max-examples", "5").rc == 0


def test_routine_that_raises_is_the_plugins_fault(cli, make_plugin):
    mod = make_plugin("opraise", """
        import fuzzer

        def poke(cpu):
            yield
            raise ValueError("poke went wrong")

        def fuzzer_operations(config):
            return [fuzzer.Operation("opraise.poke", poke)]
        """)
    res = cli("-p", mod, *RUN)
    assert_blamed(res, mod, "poke (")
    assert "ValueError: poke went wrong" in res.err
    steps = res.err.split("Steps that reach it:\n", 1)[1]
    assert re.search(r"^  \d+\. CPU \d: start opraise\.poke\(\)$", steps, re.M), steps


def test_argument_strategy_that_raises_is_the_plugins_fault(cli, make_plugin):
    mod = make_plugin("stratboom", """
        import fuzzer
        from hypothesis import strategies as st

        def poke(cpu, n):
            yield

        def explode(n):
            raise ValueError("no such argument")

        def fuzzer_operations(config):
            return [fuzzer.Operation("stratboom.poke", poke, {"n": st.integers(0, 3).map(explode)})]
        """)
    res = cli("-p", mod, *RUN)
    assert_blamed(res, mod, "the strategy of stratboom.poke(n=...)")
    assert "ValueError: no such argument" in res.err


def test_argument_strategy_with_no_values_is_a_usage_error(cli, make_plugin):
    mod = make_plugin("stratnone", """
        import fuzzer
        from hypothesis import strategies as st

        def poke(cpu, n):
            yield

        def fuzzer_operations(config):
            return [fuzzer.Operation("stratnone.poke", poke, {"n": st.nothing()})]
        """)
    res = cli("-p", mod, *RUN)
    assert res.rc == 4
    assert res.err.startswith("ERROR: ") and "stratnone.poke" in res.err and "'n'" in res.err
    assert len(res.err.strip().splitlines()) == 1, res.err


def test_machine_setup_that_raises_is_the_plugins_fault(cli, make_plugin):
    mod = make_plugin("setupboom", """
        def fuzzer_machine_setup(machine):
            raise RuntimeError("setup exploded")
        """)
    res = cli("-p", mod, *RUN)
    assert_blamed(res, mod, "hook fuzzer_machine_setup")


def test_invariant_check_that_raises_is_the_plugins_fault(cli, make_plugin):
    mod = make_plugin("checkboom", """
        import fuzzer

        def check(machine):
            raise KeyError("no such state")

        def fuzzer_invariants(config):
            return [fuzzer.Invariant("checkboom", check)]
        """)
    res = cli("-p", mod, *RUN)
    assert res.rc == 3
    assert f"ERROR: plugin {mod!r} raised in " in res.err, res.err
    assert "INTERNAL ERROR" not in res.err


def test_routine_in_plugin_submodule_is_the_plugins_fault(cli, make_plugin, tmp_path):
    mod = make_plugin("pkgbase", "")
    package = tmp_path / f"{mod}pkg"
    package.mkdir()
    (package / "__init__.py").write_text(
        "import fuzzer\n"
        f"from {mod}pkg.ops import poke\n\n"
        "def fuzzer_operations(config):\n"
        "    return [fuzzer.Operation('pkg.poke', poke)]\n"
    )
    (package / "ops.py").write_text("def poke(cpu):\n    yield\n    raise ValueError('boom')\n")
    importlib.invalidate_caches()
    try:
        res = cli("-p", f"{mod}pkg", *RUN)
    finally:
        for name in (f"{mod}pkg", f"{mod}pkg.ops"):
            sys.modules.pop(name, None)
    assert_blamed(res, f"{mod}pkg", "poke (")


# ---------------------------------------------------------------------------
# Routines: replacing one, and clashing definitions
# ---------------------------------------------------------------------------

NOOP_ASSERT = """
    import fuzzer

    @fuzzer.routine("assert_pte_locked", "arch/powerpc/mm/pgtable.c", override=True)
    def assert_pte_locked(cpu, mm, addr):
        return
        yield

    def fuzzer_routines(config):
        return [assert_pte_locked]
    """


def test_override_routine_replaces_the_kernels(cli, make_plugin):
    next_kernel = ("run", "--kernel", "next-20221215", "--seed", "1", "--max-examples", "20",
                   "--time-budget", "5")
    before = cli(*next_kernel)
    assert before.rc == 1 and "kernel BUG at arch/powerpc/mm/pgtable.c:333!" in before.out
    mod = make_plugin("nopte", NOOP_ASSERT)
    after = cli("-p", mod, *next_kernel)
    assert after.rc == 0, after.out
    assert "pgtable.c:333" not in after.out
    assert re.search(r"^=+ \d+ passed, 0 failed", after.out, re.M)


def test_override_routine_can_itself_be_blocked(cli, make_plugin):
    mod = make_plugin("nopte", NOOP_ASSERT)
    res = cli("-p", mod, "-p", f"no:{mod}", "run", "--kernel", "next-20221215", "--seed", "1",
              "--max-examples", "20", "--time-budget", "5")
    assert res.rc == 1


DUP_ROUTINE = """
    import fuzzer

    @fuzzer.routine("canary_helper", "kernel/canary.c")
    def canary_helper(cpu):
        yield

    def fuzzer_routines(config):
        return [canary_helper]
    """


def test_two_plugins_defining_one_routine_is_usage_error(cli, make_plugin):
    first = make_plugin("dupa", DUP_ROUTINE)
    second = make_plugin("dupb", DUP_ROUTINE)
    assert cli("-p", first, *RUN, "-p", "no:kprobes", "--max-examples", "1").rc == 0
    res = cli("-p", first, "-p", second, *RUN)
    assert res.rc == 4
    assert res.err.startswith("ERROR: ") and res.err.count("\n") == 1, res.err
    assert "'canary_helper'" in res.err
    assert repr(first) in res.err and repr(second) in res.err
    assert "override=True" in res.err


def test_plugin_redefining_a_kernel_routine_without_override_is_usage_error(cli, make_plugin):
    mod = make_plugin("clash", NOOP_ASSERT.replace(", override=True", ""))
    res = cli("-p", mod, *RUN)
    assert res.rc == 4
    assert "'assert_pte_locked'" in res.err
    assert "'mm'" in res.err and repr(mod) in res.err


def test_two_plugins_defining_one_operation_is_usage_error(cli, make_plugin):
    source = """
        import fuzzer

        def poke(cpu):
            yield

        def fuzzer_operations(config):
            return [fuzzer.Operation("shared.poke", poke)]
        """
    first, second = make_plugin("opa", source), make_plugin("opb", source)
    res = cli("-p", first, "-p", second, *RUN)
    assert res.rc == 4
    assert res.err.startswith("ERROR: ") and "'shared.poke'" in res.err
