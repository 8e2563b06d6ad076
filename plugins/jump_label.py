"""Jump labels (static keys): a second code-patching user, serialised by its own mutex.

kprobes patch under ``text_mutex`` and ftrace under ``ftrace_lock`` alone;
``static_key_enable``, ``static_key_disable`` and the counted
``static_key_slow_inc``/``_dec`` patch under ``jump_label_mutex`` instead, so
several CPUs can be inside ``patch_instruction`` at once -- which is what
per-CPU patching contexts exist for. Follows kernel/jump_label.c and
arch/powerpc/kernel/jump_label.c. The lines cited are linux-source-6.1
(6.1.192) for v6.1, next-20221215 and v6.2 and linux-source-6.12 for v6.12;
the v6.1 and v6.2 releases decrement with ``atomic_dec_and_mutex_lock`` where
the stable trees have ``static_key_dec_not_one`` and then the mutex: the same
effect on the key and its sites (only the WARNs' texts differ).

Keys 0-3 are switched on and off (one site each); key 4 is counted (two
sites), taken and dropped by users that keep their increments balanced.
"""

from __future__ import annotations

from collections.abc import Generator
from typing import TYPE_CHECKING, Any

import attrs

from fuzzer import (
    PAGE_OFFSET,
    IntRange,
    Invariant,
    InvariantViolation,
    Mutex,
    Operation,
    RunConfig,
    hookimpl,
    mutex_lock,
    mutex_unlock,
    routine,
)
from fuzzer.kernel import EINVAL, down_read, up_read, warn

if TYPE_CHECKING:
    from fuzzer import Cpu, Machine

#: Only runs of this architecture call this plugin's hooks (see fuzzer._hookspec).
FUZZER_ARCH = "powerpc"

Gen = Generator[Any, None, Any]
JUMP_LABEL_C = "kernel/jump_label.c"
ARCH_JUMP_LABEL_C = "arch/powerpc/kernel/jump_label.c"
NOP = 0x6000_0000
#: Jump-label sites (``static_branch_unlikely`` nops) and where they jump.
SITES_AT = PAGE_OFFSET + 0x0010_0400
#: Keys switched by ``static_key_enable``/``disable``: key ``i`` has site ``i``.
NSITES = 4
#: The counted key (``static_key_slow_inc``/``dec``) and its two sites.
COUNTED = 4
COUNTED_SITES = (4, 5)
ALL_SITES = NSITES + len(COUNTED_SITES)
TARGET_OFFSET = 0x40
#: Lines of the WARN_ON_ONCEs in kernel/jump_label.c.
LINES = {
    "v6.1": {"inc_warn": 177, "dec_negative": 273, "dec_zero": 279, "locked_minus_one": 303,
             "locked_zero": 308},
    "v6.12": {"inc_warn": 180, "dec_negative": 276, "dec_zero": 282, "locked_minus_one": 306,
              "locked_zero": 311},
}
LINES["next-20221215"] = LINES["v6.2"] = LINES["v6.1"]


def site(i: int) -> int:
    return SITES_AT + 4 * i


def branch_to_target(i: int) -> int:
    """``create_branch(addr, target, 0)``: ``b target``, a relative I-form branch."""
    return 0x4800_0000 | ((TARGET_OFFSET - 4 * i + 4 * NSITES) & 0x03FF_FFFC)


#: Bumped by every change to a key or to the references users hold (any machine's):
#: with ``Machine.stores``, what lets the check skip a step that changed nothing.
CHANGES = [0]


def _changed(inst: Any, attribute: Any, value: Any) -> Any:
    CHANGES[0] += 1
    return value


@attrs.define(eq=False, on_setattr=_changed)
class StaticKey:
    """A ``struct static_key`` and the jump entries of its sites."""

    name: str
    sites: tuple[int, ...]
    enabled: int = 0
    """``key->enabled``: 0 off, the number of users, -1 while the first enable patches."""
    words: tuple[tuple[int, int, int], ...] = attrs.field(init=False)
    """(site, physical address, branch) of each site: what the check reads."""

    def __attrs_post_init__(self) -> None:
        self.words = tuple((i, site(i) - PAGE_OFFSET, branch_to_target(i)) for i in self.sites)


@attrs.define(eq=False, on_setattr=_changed)
class JumpLabelState:
    """The keys, ``jump_label_mutex``, and the references users hold on the counted key."""

    mutex: Mutex = attrs.Factory(lambda: Mutex("jump_label_mutex"))
    keys: list[StaticKey] = attrs.Factory(
        lambda: [StaticKey(f"key{i}", (i,)) for i in range(NSITES)]
        + [StaticKey("counted_key", COUNTED_SITES)]
    )
    references: int = 0
    """Increments of the counted key that users completed and have not dropped yet."""
    checked: tuple[int, int] = attrs.field(default=(-1, -1), on_setattr=attrs.setters.NO_OP)
    """(``Machine.stores``, ``CHANGES``) when the check last found everything consistent."""


def jl_state(m: Machine) -> JumpLabelState:
    return m.state["jump_label"]


def _line(cpu: Cpu, what: str) -> str:
    return f"{JUMP_LABEL_C}:{cpu.m.version.lookup(LINES, 'jump_label.c lines')[what]}"


@hookimpl
def fuzzer_machine_setup(machine: Machine) -> None:
    machine.write_text(SITES_AT, [NOP] * ALL_SITES)
    machine.attach("jump_label", JumpLabelState())


@hookimpl
def fuzzer_routines(config: RunConfig) -> list[Any]:
    return [static_key_toggle, static_key_slow_inc, static_key_slow_inc_cpuslocked,
            static_key_slow_dec, static_key_slow_dec_cpuslocked, jump_label_update,
            arch_jump_label_transform]


@hookimpl
def fuzzer_operations(config: RunConfig) -> list[Operation]:
    keys = IntRange(0, NSITES - 1)
    return [
        Operation("jump_label.toggle", op_toggle, {"key": keys},
                  doc="static_key_enable()/disable(): patch a branch or a nop", comm="sysctl"),
        Operation("jump_label.inc", op_inc, {},
                  doc="static_key_slow_inc() of the counted key: the first user patches"
                      " its sites", comm="sysctl"),
        Operation("jump_label.dec", op_dec, {},
                  doc="static_key_slow_dec() of a reference a user holds: the last one"
                      " patches the nops back", comm="sysctl"),
        Operation("jump_label.run", op_run, {"key": IntRange(0, ALL_SITES - 1)},
                  doc="a CPU executes a jump-label site", comm="bash"),
    ]


@hookimpl
def fuzzer_invariants(config: RunConfig) -> list[Invariant]:
    return [Invariant("static keys match their sites", keys_match_sites,
                      doc="jump_label_mutex free: each key's count is >= 0 (and covers the"
                          " references users hold), and its sites hold the branch when it is"
                          " enabled, the nop when not")]


# ---------------------------------------------------------------------------
# kernel/jump_label.c
# ---------------------------------------------------------------------------


@routine("static_key_enable", JUMP_LABEL_C)
def static_key_toggle(cpu: Cpu, key: int) -> Gen:
    """``static_key_enable()``/``static_key_disable()`` (kernel/jump_label.c:194/225 v6.1).

    ``cpus_read_lock()``, ``jump_label_lock()``; an off key goes to -1,
    ``jump_label_update`` and 1 (``static_key_enable_cpuslocked``); an on
    one to 0 and ``jump_label_update`` (``static_key_disable_cpuslocked``).
    """
    m = cpu.m
    s = jl_state(m)
    k = s.keys[key]
    yield from down_read(cpu, m.state["cpu_hotplug_lock"])
    yield from mutex_lock(cpu, s.mutex)
    m.note_access(cpu, ("static key", k.name), True)
    if k.enabled == 0:
        k.enabled = -1
        yield from cpu.k.jump_label_update(cpu, k)
        k.enabled = 1
    else:
        k.enabled = 0
        yield from cpu.k.jump_label_update(cpu, k)
    yield from mutex_unlock(cpu, s.mutex)
    yield from up_read(cpu, m.state["cpu_hotplug_lock"])


@routine("static_key_slow_inc", JUMP_LABEL_C)
def static_key_slow_inc(cpu: Cpu, k: StaticKey) -> Gen:
    """``static_key_slow_inc()`` (kernel/jump_label.c:183 v6.1, :186 v6.12): under ``cpus_read_lock``."""
    m = cpu.m
    yield from down_read(cpu, m.state["cpu_hotplug_lock"])
    ret = yield from cpu.k.static_key_slow_inc_cpuslocked(cpu, k)
    yield from up_read(cpu, m.state["cpu_hotplug_lock"])
    return ret


@routine("static_key_slow_inc_cpuslocked", JUMP_LABEL_C)
def static_key_slow_inc_cpuslocked(cpu: Cpu, k: StaticKey) -> Gen:
    """``static_key_slow_inc_cpuslocked()`` (kernel/jump_label.c:148 v6.1, :151 v6.12).

    ``static_key_fast_inc_not_disabled``: an enabled key just counts one more
    (a cmpxchg, no lock). Else under ``jump_label_mutex``: 0 goes to -1,
    ``jump_label_update``, then 1; anything else must now be enabled and is
    incremented, else ``WARN_ON_ONCE`` (:177 v6.1, :180 v6.12) and false (the mutex is
    released on return: ``guard(mutex)``; ``static_branch_inc`` ignores the result).
    """
    s = jl_state(cpu.m)
    yield  # atomic_read + atomic_try_cmpxchg
    cpu.m.note_access(cpu, ("static key", k.name), True)
    if k.enabled > 0:
        k.enabled += 1
        return True
    yield from mutex_lock(cpu, s.mutex)
    if k.enabled == 0:
        k.enabled = -1
        yield from cpu.k.jump_label_update(cpu, k)
        k.enabled = 1  # atomic_set_release
    elif k.enabled > 0:
        k.enabled += 1
    else:
        warn(cpu, _line(cpu, "inc_warn"), function="static_key_slow_inc_cpuslocked",
             detail=f"{k.name}->enabled is {k.enabled} under jump_label_mutex")
        yield from mutex_unlock(cpu, s.mutex)
        return False
    yield from mutex_unlock(cpu, s.mutex)
    return True


@routine("static_key_slow_dec", JUMP_LABEL_C)
def static_key_slow_dec(cpu: Cpu, k: StaticKey) -> Gen:
    """``static_key_slow_dec()`` (kernel/jump_label.c:330 v6.1, :333 v6.12): under ``cpus_read_lock``."""
    m = cpu.m
    yield from down_read(cpu, m.state["cpu_hotplug_lock"])
    yield from cpu.k.__static_key_slow_dec_cpuslocked(cpu, k)
    yield from up_read(cpu, m.state["cpu_hotplug_lock"])


@routine("__static_key_slow_dec_cpuslocked", JUMP_LABEL_C)
def static_key_slow_dec_cpuslocked(cpu: Cpu, k: StaticKey) -> Gen:
    """``__static_key_slow_dec_cpuslocked()`` (kernel/jump_label.c:289 v6.1, :292 v6.12).

    ``static_key_dec_not_one`` (:250-285 v6.1): above one, just count one less. A negative
    count (a first increment still patching) is a ``WARN_ON_ONCE`` (:273) and goes to the
    slow path; zero is a ``WARN_ON_ONCE`` (:279) and returns as if done ("lie about
    success"). At one, under ``jump_label_mutex``: -1 or 0 is a ``WARN_ON_ONCE``
    (:303, :308) and a return, else ``atomic_dec_and_test`` and, at zero,
    ``jump_label_update``.
    """
    s = jl_state(cpu.m)
    yield  # atomic_read + atomic_try_cmpxchg
    cpu.m.note_access(cpu, ("static key", k.name), True)
    v = k.enabled
    if v < 0:
        warn(cpu, _line(cpu, "dec_negative"), function="static_key_dec_not_one",
             detail=f"{k.name}->enabled is {v}")
    elif v == 0:
        warn(cpu, _line(cpu, "dec_zero"), function="static_key_dec_not_one",
             detail=f"{k.name}: decrement of a disabled key")
        return
    elif v > 1:
        k.enabled = v - 1
        return
    yield from mutex_lock(cpu, s.mutex)
    if k.enabled <= 0:
        what = "locked_minus_one" if k.enabled < 0 else "locked_zero"
        warn(cpu, _line(cpu, what), function="__static_key_slow_dec_cpuslocked",
             detail=f"{k.name}->enabled is {k.enabled} under jump_label_mutex")
        yield from mutex_unlock(cpu, s.mutex)
        return
    k.enabled -= 1
    if k.enabled == 0:
        yield from cpu.k.jump_label_update(cpu, k)
    yield from mutex_unlock(cpu, s.mutex)


@routine("jump_label_update", JUMP_LABEL_C)
def jump_label_update(cpu: Cpu, k: StaticKey) -> Gen:
    """``jump_label_update()`` -> ``__jump_label_update()`` (kernel/jump_label.c): each site.

    With ``jump_label_mutex`` held, each of the key's entries gets
    ``jump_label_type()``: a jump while ``static_key_enabled()`` (a count
    other than 0, -1 included), else a nop.
    """
    for i in k.sites:
        yield from cpu.k.arch_jump_label_transform(cpu, i, k.enabled != 0)


@routine("arch_jump_label_transform", ARCH_JUMP_LABEL_C)
def arch_jump_label_transform(cpu: Cpu, key: int, enable: bool) -> Gen:
    """``arch_jump_label_transform()`` (arch/powerpc/kernel/jump_label.c:11, v6.1-v6.12).

    ``patch_branch(addr, target, 0)`` to enable, ``patch_instruction(addr, nop)``
    to disable, for the site ``key``; the return value is ignored.
    """
    instr = branch_to_target(key) if enable else NOP
    yield from cpu.k.patch_instruction(cpu, site(key), instr)


# ---------------------------------------------------------------------------
# The keys against their sites
# ---------------------------------------------------------------------------


def keys_match_sites(m: Machine) -> str | None:
    """Whenever ``jump_label_mutex`` is free, every key agrees with the text of its sites.

    Its count is not negative (-1 only while the first enable patches, under
    the mutex), the counted key's covers the references users hold, and each
    site holds the branch while the key is enabled and the nop while not.
    """
    s = m.state.get("jump_label")
    if s is None or s.mutex.owner is not None:
        return None
    seen = (m.stores, CHANGES[0])
    if seen == s.checked:
        return None  # nothing stored, no key changed: still consistent
    mem = m.mem
    for k in s.keys:
        if k.enabled < 0:
            return f"{k.name}->enabled is {k.enabled} with jump_label_mutex free"
        want = k.enabled > 0
        for i, pa, branch in k.words:
            word = mem.get(pa, NOP)
            if word != (branch if want else NOP):
                state = f"enabled ({k.enabled})" if want else "disabled"
                return f"{k.name} is {state} but its site {i} holds {word:#010x}"
    counted = s.keys[COUNTED]
    if counted.enabled < s.references:
        return f"{counted.name}->enabled is {counted.enabled}, below the {s.references} references users hold"
    s.checked = seen
    return None


# ---------------------------------------------------------------------------
# Operations
# ---------------------------------------------------------------------------


def op_toggle(cpu: Cpu, key: int) -> Gen:
    yield from cpu.k.static_key_enable(cpu, key)


def op_inc(cpu: Cpu) -> Gen:
    """A user takes a reference on the counted key (``static_branch_inc``)."""
    s = jl_state(cpu.m)
    yield from cpu.k.static_key_slow_inc(cpu, s.keys[COUNTED])
    s.references += 1


def op_dec(cpu: Cpu) -> Gen:
    """A user drops a reference it holds (``static_branch_dec``); none held: nothing to drop."""
    s = jl_state(cpu.m)
    if not s.references:
        return -EINVAL
    s.references -= 1
    yield from cpu.k.static_key_slow_dec(cpu, s.keys[COUNTED])
    return 0


def op_run(cpu: Cpu, key: int) -> Gen:
    """Execute a jump-label site: a nop or the branch, never anything else."""
    m = cpu.m
    yield  # instruction fetch
    word = m.fetch(cpu, site(key))
    if word not in (NOP, branch_to_target(key)):
        raise InvariantViolation(
            "text fetch atomic",
            f"CPU {cpu.n} fetched {word:#010x} at jump-label site {key}: neither nop nor its branch",
        )
