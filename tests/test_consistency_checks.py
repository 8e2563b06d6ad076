"""State nothing executes can still be wrong: static keys against their sites, kprobes'
hash table against the text, and two kprobes at one address aggregated as the kernel does."""

from __future__ import annotations

import attrs

from fuzzer import PAGE_OFFSET, KernelOops, Step
from fuzzer.testing import boot_steps, make_model, replay
from fuzzer_plugins.jump_label import (
    COUNTED,
    COUNTED_SITES,
    NOP,
    branch_to_target,
    jl_state,
    keys_match_sites,
    site,
)
from fuzzer_plugins.kprobes import (
    BREAKPOINT_INSTRUCTION,
    SYMBOLS,
    kstate,
    site_addr,
    table_matches_text,
)


def _op(name: str, cpu: int = 0, n: int = 900, **args: int) -> list[Step]:
    # 900: a kprobe registration also builds its optprobe detour (optprobes plugin)
    return [Step("start", cpu=cpu, name=name, args=args), Step("run", cpus=[cpu] * n)]


# -- static keys ---------------------------------------------------------------


def test_counted_key_patches_on_the_first_inc_and_the_last_dec():
    steps = [*boot_steps(), *_op("jump_label.inc"), *_op("jump_label.inc")]
    m, failure = replay(make_model("v6.2"), steps)
    assert failure is None
    s = jl_state(m)
    assert s.keys[COUNTED].enabled == 2 and s.references == 2
    assert all(m.fetch(m.cpus[0], site(i)) == branch_to_target(i) for i in COUNTED_SITES)
    m, failure = replay(make_model("v6.2"), [*steps, *_op("jump_label.dec"), *_op("jump_label.dec")])
    assert failure is None
    assert jl_state(m).keys[COUNTED].enabled == 0
    assert all(m.fetch(m.cpus[0], site(i)) == NOP for i in COUNTED_SITES)


def test_dec_without_a_reference_does_nothing():
    m, failure = replay(make_model("v6.2"), [*boot_steps(), *_op("jump_label.dec")])
    assert failure is None and jl_state(m).keys[COUNTED].enabled == 0


def test_two_cpus_taking_the_counted_key_concurrently_stay_consistent():
    steps = [*boot_steps(), Step("online", cpu=1), Step("run", cpus=[1] * 40),
             Step("start", cpu=0, name="jump_label.inc", args={}),
             Step("start", cpu=1, name="jump_label.inc", args={}),
             Step("run", cpus=[0, 1] * 300)]
    m, failure = replay(make_model("v6.2"), steps)
    assert failure is None
    assert jl_state(m).keys[COUNTED].enabled == 2


def test_key_check_flags_a_site_that_disagrees_only_while_the_mutex_is_free():
    m, failure = replay(make_model("v6.2"), [*boot_steps(), *_op("jump_label.toggle", key=1)])
    assert failure is None and keys_match_sites(m) is None
    m.mem[site(1) - PAGE_OFFSET] = NOP  # the key says on, its site says off
    m.stores += 1  # as Machine.store counts it
    assert keys_match_sites(m) == f"key1 is enabled (1) but its site 1 holds {NOP:#010x}"
    jl_state(m).mutex.owner = m.cpus[0].idle_task  # someone is updating it: not checked
    assert keys_match_sites(m) is None


# -- kprobes -----------------------------------------------------------------------


def test_second_kprobe_at_an_address_aggregates_without_patching_again():
    steps = [*boot_steps(), *_op("kprobes.register", site=3, probe=0),
             *_op("kprobes.register", site=3, probe=1)]
    m, failure = replay(make_model("v6.2"), steps)
    assert failure is None
    s = kstate(m)
    ap = s.table[site_addr(3)]
    p0, p1 = s.user[(3, 0)], s.user[(3, 1)]
    assert ap.children == [p0, p1] and p0.parent is ap and p1.parent is ap
    assert p1.opcode == p0.opcode == ap.opcode == SYMBOLS["vfs_read"].words[0]
    assert p1.insn_slot == p0.insn_slot == ap.insn_slot
    assert m.fetch(m.cpus[0], site_addr(3)) == BREAKPOINT_INSTRUCTION
    assert table_matches_text(m) is None


def test_aggregator_stays_armed_until_every_probe_on_it_is_disabled():
    base = [*boot_steps(), *_op("kprobes.register", site=3, probe=0),
            *_op("kprobes.register", site=3, probe=1), *_op("kprobes.disable", site=3, probe=0),
            *_op("kprobes.hit", site=3)]
    m, failure = replay(make_model("v6.2"), base)
    assert failure is None
    s = kstate(m)
    assert m.fetch(m.cpus[0], site_addr(3)) == BREAKPOINT_INSTRUCTION
    assert (s.user[(3, 0)].hits, s.user[(3, 1)].hits) == (0, 1)  # aggr_pre_handler skips disabled
    m, failure = replay(make_model("v6.2"), [*base, *_op("kprobes.disable", site=3, probe=1)])
    assert failure is None
    assert m.fetch(m.cpus[0], site_addr(3)) == SYMBOLS["vfs_read"].words[0]
    assert kstate(m).table[site_addr(3)].disabled
    m, failure = replay(make_model("v6.2"), [*base, *_op("kprobes.disable", site=3, probe=1),
                                            *_op("kprobes.enable", site=3, probe=0)])
    assert failure is None
    assert m.fetch(m.cpus[0], site_addr(3)) == BREAKPOINT_INSTRUCTION


def test_unregistering_both_frees_the_aggregator_and_the_slot():
    steps = [*boot_steps(), *_op("kprobes.register", site=3, probe=0),
             *_op("kprobes.register", site=3, probe=1)]
    m, _ = replay(make_model("v6.2"), steps)
    slots = len(kstate(m).free_slots)
    ap = kstate(m).table[site_addr(3)]
    steps += [*_op("kprobes.unregister", site=3, probe=1), *_op("kprobes.unregister", site=3, probe=0)]
    m, failure = replay(make_model("v6.2"), steps)
    assert failure is None
    s = kstate(m)
    assert site_addr(3) not in s.table and not s.user
    assert len(s.free_slots) == slots + 1
    assert m.fetch(m.cpus[0], site_addr(3)) == SYMBOLS["vfs_read"].words[0]
    assert ap is not s.table.get(site_addr(3))


def test_table_check_flags_a_stray_trap_and_a_trap_opcode():
    m, failure = replay(make_model("v6.2"), [*boot_steps(), *_op("kprobes.register", site=3)])
    assert failure is None and table_matches_text(m) is None
    kp = kstate(m).table[site_addr(3)]  # the hashed probe: its optimized aggregator (optprobes)
    kp.opcode = BREAKPOINT_INSTRUCTION
    assert "its saved opcode is the trap itself" in (table_matches_text(m) or "")
    m, _ = replay(make_model("v6.2"), boot_steps())
    m.mem[site_addr(0) - PAGE_OFFSET] = BREAKPOINT_INSTRUCTION
    m.stores += 1
    assert table_matches_text(m) == (
        f"{site_addr(0):#x} holds a kprobe trap but no kprobe is registered there")


def test_a_freed_kprobe_left_in_the_table_oopses_when_hit():
    """The table check reports it first; without that check the hit oopses as the kernel would."""
    model = make_model("v6.2")
    model = attrs.evolve(model, step_invariants=tuple(
        c for c in model.step_invariants if c.name != "kprobes match the text"))
    m, failure = replay(model, [*boot_steps(), *_op("kprobes.register", site=3)])
    assert failure is None
    kstate(m).user[(3, 0)].freed = True  # as if unregister had forgotten to unhash it
    m.start(m.cpus[0], m.model.operation("kprobes.hit"), {"site": 3})
    try:
        m.run_to_completion()
    except KernelOops as oops:
        assert str(oops) == "BUG: Unable to handle kernel data access at 0x6b6b6b6b6b6b6b6b"
        assert oops.signature.function == "kprobe_handler"
    else:
        raise AssertionError("no oops")


def test_checks_skip_only_steps_that_changed_nothing_they_read():
    """The checks rerun only after a store or a change to a key, kprobe or table: a change
    made outside every lock and without a store is still seen at once."""
    m, failure = replay(make_model("v6.2"), [*boot_steps(), *_op("kprobes.register", site=3)])
    assert failure is None
    assert keys_match_sites(m) is None and table_matches_text(m) is None
    jl_state(m).keys[2].enabled = 1  # no store, no mutex
    assert keys_match_sites(m) == f"key2 is enabled (1) but its site 2 holds {NOP:#010x}"
    kstate(m).table.pop(site_addr(3))  # unhashed, the trap left behind
    assert table_matches_text(m) == (
        f"{site_addr(3):#x} holds a kprobe trap but no kprobe is registered there")
