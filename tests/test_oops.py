"""Bad pointers in the modelled kernel are kernel oopses (exit 1), never model crashes (exit 3).

A NULL or freed object followed by modelled kernel code is reported as
arch/powerpc/mm/fault.c's ``__bad_page_fault`` prints it; a plugin's own Python
mistake outside a modelled dereference stays that plugin's fault.
"""

from __future__ import annotations

import json

import pytest

from fuzzer import KernelOops, Step
from fuzzer.kernel import POISON_POINTER, deref
from fuzzer.testing import boot_steps, make_model, replay

NULL_CTX = "fuzzer_plugins.mistakes.null_patching_context"


def test_a_patching_context_a_cpu_never_got_is_a_null_pointer_oops(cli, tmp_path):
    report = tmp_path / "r.json"
    res = cli("-p", NULL_CTX, "run", "--kernel", "v6.2", "--seed", "3", "--corpus", "none",
              "--report-json", str(report))
    assert res.rc == 1, res.out + res.err
    assert "INTERNAL ERROR" not in res.out + res.err
    text = res.out
    assert "Kernel attempted to read user page (0) - exploit attempt? (uid: 0)" in text
    assert "BUG: Kernel NULL pointer dereference on read at 0x00000000" in text
    assert "Oops: Kernel access of bad area, sig: 11 [#1]" in text
    data = json.loads(report.read_text())
    assert (data["signature"]["kind"], data["signature"]["function"]) == ("OOPS", "walk_to_pmd")
    trace = [f["function"] for f in data["trace"]]
    assert trace[:3] == ["walk_to_pmd", "__get_locked_pte", "__do_patch_instruction_mm"]
    assert "patch_instruction" in trace


def test_deref_of_a_live_object_returns_it():
    class Obj:
        freed = False

    obj = Obj()
    assert deref(obj, "struct obj") is obj


def test_deref_of_a_freed_object_faults_on_the_slub_poison():
    class Obj:
        freed = True

    with pytest.raises(KernelOops) as info:
        deref(Obj(), "struct obj", member="x")
    assert info.value.address == POISON_POINTER
    assert str(info.value) == "BUG: Unable to handle kernel data access at 0x6b6b6b6b6b6b6b6b"
    assert deref(Obj(), "struct obj", freed=False) is not None


def test_null_write_says_write():
    with pytest.raises(KernelOops, match="NULL pointer dereference on write at 0x00000000"):
        deref(None, "pte_t", write=True)


# An mm already put: a plugin routine that puts the patching mm once more and
# then switches to it. The second mmput reads a freed mm (SLUB poison).
DOUBLE_PUT = """
from fuzzer import Initcall, hookimpl, routine
from fuzzer.kernel import context

@routine("double_put", "drivers/example.c")
def double_put(cpu):
    mm = context(cpu).mm
    yield from cpu.k.mmput(cpu, mm)
    yield from cpu.k.mmput(cpu, mm)

@hookimpl
def fuzzer_initcalls(config):
    return [Initcall("double_put", double_put)]
"""


def test_an_mm_already_put_is_a_data_access_oops(cli, make_plugin):
    name = make_plugin("double_put", DOUBLE_PUT)
    res = cli("-p", name, "run", "--kernel", "v6.2", "--seed", "1", "--corpus", "none")
    assert res.rc == 1, res.out + res.err
    assert "BUG: Unable to handle kernel data access at 0x6b6b6b6b6b6b6b6b" in res.out
    assert "Signature: OOPS in mmput" in res.out


# A routine reading a kernel struct's member through None: the blame rule.
NULL_MEMBER = """
from fuzzer import Initcall, hookimpl, routine

@routine("null_member", "drivers/example.c")
def null_member(cpu):
    yield
    mm = None
    return mm.pgd  # a NULL struct mm_struct *

@hookimpl
def fuzzer_initcalls(config):
    return [Initcall("null_member", null_member)]
"""

# The same None, but the attribute is no kernel struct's member: a plugin bug.
PLUGIN_BUG = """
from fuzzer import Initcall, hookimpl, routine

@routine("plugin_bug", "drivers/example.c")
def plugin_bug(cpu):
    yield
    table = None
    table.append_probe(1)

@hookimpl
def fuzzer_initcalls(config):
    return [Initcall("plugin_bug", plugin_bug)]
"""

# A kernel struct member read through None by a plain helper, not a routine's body.
HELPER_BUG = """
from fuzzer import Initcall, hookimpl, routine

def helper(mm):
    return mm.pgd

@routine("helper_bug", "drivers/example.c")
def helper_bug(cpu):
    yield
    helper(None)

@hookimpl
def fuzzer_initcalls(config):
    return [Initcall("helper_bug", helper_bug)]
"""


def test_a_routine_reading_a_kernel_struct_member_through_none_oopses(cli, make_plugin):
    name = make_plugin("null_member", NULL_MEMBER)
    res = cli("-p", name, "run", "--seed", "1", "--corpus", "none")
    assert res.rc == 1, res.out + res.err
    assert "BUG: Kernel NULL pointer dereference on read at 0x00000000" in res.out
    assert "Signature: OOPS in null_member" in res.out


@pytest.mark.parametrize("stem, source", [("plugin_bug", PLUGIN_BUG), ("helper_bug", HELPER_BUG)])
def test_a_plugins_own_none_error_stays_the_plugins_fault(cli, make_plugin, stem, source):
    name = make_plugin(stem, source)
    res = cli("-p", name, "run", "--seed", "1", "--corpus", "none")
    assert res.rc == 3, res.out + res.err
    assert f"plugin {name!r} raised" in res.out + res.err
    assert "AttributeError" in res.out + res.err
    assert "Oops" not in res.out


def test_null_context_replays_as_an_oops_at_boot():
    model = make_model("v6.2", plugins=[NULL_CTX])
    _, failure = replay(model, [*boot_steps(), Step("online", cpu=1)])
    assert isinstance(failure, KernelOops)
    assert failure.cpu == 0 and failure.address == 0
