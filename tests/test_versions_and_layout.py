"""Version chains, the MMU spec's address layout, and the one home for plugin state."""

from __future__ import annotations

import pytest

from fuzzer import BOOK3S64, KernelVersion, Machine, ModelLimitation, Step, VersionChain
from fuzzer.kernel import line

from modelkit import boot_steps, make_model, plugin_module, replay


def _derived(name: str, based_on: str | None, order: int = 9000):
    return plugin_module(
        f"derived_{name.replace('.', '_').replace('-', '_')}",
        fuzzer_kernel_versions=lambda: [KernelVersion(name, order, "a user's own version",
                                                      based_on=based_on)],
    )


def test_chain_resolves_nearest_first():
    chain = VersionChain.of("mine-2", {"mine-2": "mine-1", "mine-1": "v6.1", "v6.1": None})
    assert chain.names == ("mine-2", "mine-1", "v6.1")
    assert chain.is_("v6.1") and not chain.is_("v6.2")
    assert chain.lookup({"v6.1": 1, "mine-1": 2}, "lines") == 2
    with pytest.raises(ModelLimitation, match=r"lines: nothing for kernel mine-2 or the versions it is"
                       r" based on \(mine-1, v6.1\); known for: v6.2"):
        chain.lookup({"v6.2": 3}, "lines")


def test_a_version_based_on_next_gets_its_routines_predicates_and_lines():
    model = make_model("mine", extra=[_derived("mine", "next-20221215")])
    assert model.chain.names == ("mine", "next-20221215")
    assert model.routine_infos["__do_patch_instruction_mm"].versions == frozenset({"next-20221215"})
    _, failure = replay(model, boot_steps())
    assert failure is not None
    # The seed crash, at next-20221215's line of pgtable.c, as the version it is based on.
    assert failure.signature.location == "arch/powerpc/mm/pgtable.c:333"


def test_a_version_based_on_v61_patches_through_the_alias_and_cites_v61_lines():
    model = make_model("mine61", extra=[_derived("mine61", "v6.1")])
    machine, failure = replay(model, [*boot_steps(), Step("online", cpu=1), Step("run", cpus=[1] * 200)])
    assert failure is None
    assert machine.version.is_("v6.1")
    ctx = machine.cpus[1].state["cpu_patching_context"]
    assert ctx.area is not None and ctx.mm is None  # the vmalloc alias, as v6.1 (a predicate)
    assert line(machine.cpus[0], "cpu_up_warn") == "arch/powerpc/lib/code-patching.c:58"


def test_a_version_with_no_ancestor_names_itself_instead_of_borrowing_v62_lines():
    model = make_model("orphan", extra=[_derived("orphan", None)])
    machine = Machine(model)
    with pytest.raises(ModelLimitation, match=r"nothing for kernel orphan; known for: v6\.1, next-20221215"):
        line(machine.cpus[0], "cpu_up_warn")


def test_the_machine_takes_its_layout_and_breakpoint_slots_from_the_mmu_spec():
    machine = Machine(make_model(config=["CONFIG_PPC_NR_DAWR=2"]))
    assert machine.layout is BOOK3S64
    assert machine.nr_wp_slots == 2 and len(machine.cpus[0].dawr) == 2
    assert machine.translate(machine.cpus[0], BOOK3S64.page_offset + 0x1000, False) == 0x1000


def test_state_attaches_once_per_name_on_the_machine_and_on_a_cpu():
    machine = Machine(make_model())
    cpu = machine.cpus[1]
    obj = object()
    assert cpu.attach("my_plugin", obj) is obj and cpu.state["my_plugin"] is obj
    with pytest.raises(ValueError, match="CPU 1 state 'my_plugin' is attached twice"):
        cpu.attach("my_plugin", object())
    assert "text_mutex" in machine.state and "cpu_hotplug_lock" in machine.state
    with pytest.raises(ValueError, match="machine state 'text_mutex' is attached twice"):
        machine.attach("text_mutex", object())
