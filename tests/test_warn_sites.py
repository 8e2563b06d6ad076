"""The kernel's WARN_ON sites after which the kernel goes on go on in the model too.

``--panic-on-warn 0`` is a kernel booted without ``panic_on_warn``: the WARNING is
printed and the code after it runs. Each mistake here reaches such a site; its shrunk
reproduction, found by search with the default ``known`` (an unknown WARNING ends the
example at once), is replayed with ``0``: the WARNING is printed, the example runs on to
its end, and the same WARNING is its finding (or is printed above a later failure).
"""

from __future__ import annotations

import pytest

from fuzzer.testing import make_model, replay, search

#: (mistake, kernel, config, seed, the function of the WARNING it reaches). Seed found by
#: search on the merged code (kprobes/enabled and sysctl operations, stop_machine offline, the
#: boot's optimizer run): from seeds 1-10 and 12 shared_patching_mm is first caught by the
#: patch-window invariant or lockdep instead.
SITES = [
    # start_using_temp_mm's WARN_ON(!mm_is_thread_local(temp_mm)), code-patching.c:88 v6.2
    ("shared_patching_mm", "v6.2", (), 11, "start_using_temp_mm"),
    # smp_call_function_many_cond's lockdep_assert_irqs_enabled (WARN_ON_ONCE), smp.c:915 v6.2
    ("alias_on_radix", "v6.2", ("CONFIG_CMDLINE=disable_tlbie",), 1, "smp_call_function_many_cond"),
]


@pytest.mark.parametrize("mistake, kernel, config, seed, function", SITES)
def test_the_kernel_goes_on_after_the_warning_without_panic_on_warn(mistake, kernel, config, seed,
                                                                    function):
    plugins = [f"fuzzer_plugins.mistakes.{mistake}"]
    found = search(make_model(kernel, plugins=plugins, config=config), seed=seed, max_examples=300,
                   time_budget=0)
    assert found.status == "failed", found
    warning = found.failure.signature
    assert (warning.kind, warning.function) == ("WARNING", function)
    steps = found.failure.steps

    m, failure = replay(make_model(kernel, plugins=plugins, config=config,
                                   options={"panic_on_warn": "1"}), steps)
    assert failure is not None and failure.signature == warning and not failure.warned
    assert m is not None and not any("the kernel goes on" in line for line in m.log)

    m, failure = replay(make_model(kernel, plugins=plugins, config=config,
                                   options={"panic_on_warn": "0"}), steps)
    assert m is not None and failure is not None
    assert warning in [w.signature for w in m.warnings]
    assert any("the kernel goes on" in line for line in m.log), m.log[-5:]
    # Reported when the example ends, or printed above a failure further on.
    assert failure.signature == warning or warning in [w.signature for w in failure.warned]


# -- Each WARN site driven directly: the state that trips it, then what the kernel does next. --
# The routine runs alone on a booted machine (no step checks: the state that reaches a WARN
# may break an invariant first); with --panic-on-warn 0 it prints the WARNING and returns
# what the kernel code after the WARN returns; with 1 the WARNING ends it.


def _booted(kernel, *, panic="0", mmu="radix", plugins=(), config=()):
    from fuzzer._machine import Machine

    m = Machine(make_model(kernel, mmu=mmu, plugins=list(plugins), config=list(config),
                           options={"panic_on_warn": panic}))
    m.boot(1)
    return m


def _drive(gen):
    """Run a routine's generator to its end, alone; its return value."""
    try:
        while True:
            next(gen)
    except StopIteration as done:
        return done.value


def _warned(m, function):
    return [w for w in m.warnings if w.signature.function == function]


def _panics(kernel, run, function, **kw):
    """With --panic-on-warn 1 the same WARN ends the routine: the KernelWarning propagates."""
    from fuzzer import KernelWarning

    m = _booted(kernel, panic="1", **kw)
    with pytest.raises(KernelWarning) as raised:
        run(m)
    assert raised.value.signature.function == function


@pytest.mark.parametrize("kernel", ["v6.1", "v6.12"])
def test_static_key_slow_inc_goes_on_after_its_warn(kernel):
    """jump_label.c:177 v6.1: a count that is neither 0 nor positive under the mutex is
    WARN_ON_ONCE, then ``return false`` -- the mutex released (guard(mutex))."""
    from fuzzer_plugins.jump_label import COUNTED, jl_state

    def run(m):
        s = jl_state(m)
        s.keys[COUNTED].enabled = -1
        return s, _drive(m.k.static_key_slow_inc_cpuslocked(m.cpus[0], s.keys[COUNTED]))

    m = _booted(kernel)
    s, ret = run(m)
    assert ret is False and s.mutex.owner is None and s.keys[COUNTED].enabled == -1
    assert _warned(m, "static_key_slow_inc_cpuslocked")
    _panics(kernel, run, "static_key_slow_inc_cpuslocked")


@pytest.mark.parametrize("kernel", ["v6.1", "v6.12"])
def test_static_key_slow_dec_goes_on_after_its_warns(kernel):
    """static_key_dec_not_one: 0 is WARN_ON_ONCE and returns as if done (:279 v6.1); -1 is
    WARN_ON_ONCE (:273) and takes the slow path, where -1 under the mutex is WARN_ON_ONCE and
    a return (:303); 1 read, 0 under the mutex is WARN_ON_ONCE and a return (:308)."""
    from fuzzer_plugins.jump_label import COUNTED, jl_state

    m = _booted(kernel)
    s = jl_state(m)
    key, cpu = s.keys[COUNTED], m.cpus[0]
    key.enabled = 0
    _drive(m.k.__static_key_slow_dec_cpuslocked(cpu, key))
    assert key.enabled == 0 and [w.at for w in _warned(m, "static_key_dec_not_one")]
    key.enabled = -1
    _drive(m.k.__static_key_slow_dec_cpuslocked(cpu, key))
    assert key.enabled == -1 and s.mutex.owner is None
    assert len(_warned(m, "static_key_dec_not_one")) == 2  # :279, then :273
    assert len(_warned(m, "__static_key_slow_dec_cpuslocked")) == 1  # :303
    key.enabled = 1
    gen = m.k.__static_key_slow_dec_cpuslocked(cpu, key)
    next(gen)  # atomic_read: 1, the slow path
    next(gen)  # in mutex_lock
    key.enabled = 0  # someone else dropped it meanwhile (a broken user)
    _drive(gen)
    assert key.enabled == 0 and s.mutex.owner is None
    assert len(_warned(m, "__static_key_slow_dec_cpuslocked")) == 2  # and :308

    def run(m):
        jl_state(m).keys[COUNTED].enabled = 0
        _drive(m.k.__static_key_slow_dec_cpuslocked(m.cpus[0], jl_state(m).keys[COUNTED]))

    _panics(kernel, run, "static_key_dec_not_one")


@pytest.mark.parametrize("kernel", ["v6.1", "v6.12"])
def test_unregister_kprobe_top_goes_on_after_its_warn(kernel):
    """WARN_ON(!kprobe_aggrprobe(ap)) (kernel/kprobes.c:1774 v6.1, :1784 v6.12), then on: a
    list that is not singular -- list_del_rcu(&p->list) takes p off its list, nothing is
    unhashed, 0 returned."""
    from fuzzer_plugins.kprobes import Kprobe, ProbeList, kstate, site_addr

    def run(m):
        k, cpu = m.k, m.cpus[0]
        plain = Kprobe(site_addr(9), owner="plain")  # hashed, not an aggregator
        kstate(m).table[plain.addr] = plain
        other = Kprobe(site_addr(0), owner="other")
        p = Kprobe(site_addr(0), owner="p")
        other.children = ProbeList([p, Kprobe(site_addr(0), owner="q")])
        p.parent = other

        def broken_disable(cpu, p):  # a __disable_kprobe that returns the wrong probe
            yield
            return plain

        k.__disable_kprobe = broken_disable
        try:
            return plain, other, p, _drive(k.__unregister_kprobe_top(cpu, p))
        finally:
            del k.__disable_kprobe

    m = _booted(kernel)
    plain, other, p, ret = run(m)
    assert ret == 0 and kstate(m).table[plain.addr] is plain and p not in other.children
    assert _warned(m, "__unregister_kprobe_top")
    _panics(kernel, run, "__unregister_kprobe_top")


@pytest.mark.parametrize("kernel", ["v6.1", "v6.12"])
def test_unmap_patch_area_goes_on_after_its_warn(kernel):
    """WARN_ON(pte_none(*ptep)) then return (code-patching.c:140 v6.1): nothing cleared or
    flushed, and the caller goes on."""
    from fuzzer import VMALLOC_END

    def run(m):
        return _drive(m.k.unmap_patch_area(m.cpus[0], VMALLOC_END - 16 * m.run.page_size))

    m = _booted(kernel)
    stores = m.stores
    assert run(m) is None and m.stores == stores
    assert [w for w in m.warnings if w.at.startswith("arch/powerpc/lib/code-patching.c")]
    from fuzzer import KernelWarning

    with pytest.raises(KernelWarning):
        run(_booted(kernel, panic="1"))


@pytest.mark.parametrize("kernel", ["v6.1", "v6.12"])
def test_ftrace_bug_goes_on_and_kills_ftrace(kernel):
    """ftrace_bug: FTRACE_WARN_ON_ONCE(1) -- WARN_ON_ONCE, then ftrace_kill(): the update stops
    at the site that failed (ftrace_replace_code returns), and ftrace_startup/shutdown return
    -ENODEV from then on (kernel/trace/ftrace.c:2981-2982 v6.1)."""
    from fuzzer import PAGE_OFFSET
    from fuzzer_plugins.ftrace import BL_FTRACE_CALLER, NOP, op_ftrace, site

    def run(m):
        bad = site(2) - PAGE_OFFSET
        m.mem[bad] = 0x7C00_0008  # not the nop ftrace_modify_code expects
        first = _drive(op_ftrace(m.cpus[0], True))
        return bad, first, _drive(op_ftrace(m.cpus[0], False))

    m = _booted(kernel)
    bad, first, second = run(m)
    assert first == 0 and second == -19 and m.state["ftrace"]["disabled"]
    words = [m.mem[site(i) - PAGE_OFFSET] for i in range(6)]
    assert words[:2] == [BL_FTRACE_CALLER] * 2 and words[3:] == [NOP] * 3  # stopped at site 2
    assert len(_warned(m, "ftrace_bug")) == 1 and m.mem[bad] == 0x7C00_0008
    _panics(kernel, run, "ftrace_bug")


def test_an_unbalanced_percpu_up_write_goes_on_past_rcu_sync_exits_warns():
    """percpu_up_write has no owner check: rcu_sync_exit WARN_ON_ONCEs gp_state == GP_IDLE and
    gp_count == 0 (kernel/rcu/sync.c:170-171 v6.1) and goes on; percpu_up_read has no check
    at all: the reader count goes negative and a writer waits for it to come back to 0."""
    from fuzzer.kernel import down_write, up_read, up_write

    m = _booted("v6.1")
    sem, cpu = m.state["cpu_hotplug_lock"], m.cpus[0]
    _drive(up_write(cpu, sem))
    assert [w.at for w in _warned(m, "rcu_sync_exit")] == ["kernel/rcu/sync.c:170",
                                                          "kernel/rcu/sync.c:171"]
    assert sem.writer is None and sem.gp_count == -1
    sem.gp_count = 0
    _drive(up_read(cpu, sem))
    assert sem.readers == -1 and sem.write_busy()  # readers_active_check: the sum is not 0
    gen = down_write(cpu, sem)
    next(gen)
    assert next(gen) == sem.write_busy  # it waits
    gen.close()


@pytest.mark.parametrize("site", ["text_poke", "switch_mm_irqs_off", "leave_mm",
                                  "flush_tlb_mm_range", "smp_call_function_many_cond"])
def test_the_x86_plugins_warns_go_on(site):
    """The x86 example plugin's WARNs: lockdep_assert_held in text_poke (alternative.c:2210,
    then __text_poke), WARN_ON_ONCE(!irqs_disabled()) in switch_mm_irqs_off (tlb.c:513, then
    the switch), WARN_ON(!is_lazy) in leave_mm (:316, then switch_mm), and the
    lockdep_assert_irqs_enabled of flush_tlb_mm_range (:1075: then local_irq_disable, the
    flush, local_irq_enable -- IRQs end up on) and smp_call_function_many_cond (smp.c:807:
    then the calls)."""
    pytest.importorskip("fuzzer_x86")
    from fuzzer_x86 import FlushInfo

    m = _booted("x86-v6.12", mmu="x86", plugins=["fuzzer_x86"])
    cpu, k = m.cpus[0], m.k
    if site == "text_poke":
        from fuzzer import PAGE_OFFSET

        addr = PAGE_OFFSET + 0x1000
        _drive(k.text_poke(cpu, addr, 0x90))
        assert m.fetch(cpu, addr) == 0x90  # __text_poke ran
    elif site == "switch_mm_irqs_off":
        mm = m.new_mm("user")
        assert cpu.irqs_enabled
        _drive(k.switch_mm_irqs_off(cpu, mm))
        assert cpu.loaded_mm is mm
    elif site == "leave_mm":
        mm = m.new_mm("user")
        cpu.local_irq_save()
        _drive(k.switch_mm_irqs_off(cpu, mm))
        cpu.hw.is_lazy = False
        _drive(k.leave_mm(cpu))
        assert cpu.loaded_mm is m.init_mm
    elif site == "flush_tlb_mm_range":
        mm = m.new_mm("user")
        cpu.local_irq_save()
        _drive(k.switch_mm_irqs_off(cpu, mm))
        mm.cpumask = {cpu.n}
        _drive(k.flush_tlb_mm_range(cpu, mm, 0, 4096))
        assert cpu.irqs_enabled  # local_irq_enable after the flush
    else:
        cpu.local_irq_save()
        info = FlushInfo(m.init_mm, 0, 4096, 0, cpu.n)
        _drive(k.smp_call_function_many_cond(cpu, [0], info))
    assert _warned(m, site), [w.signature for w in m.warnings]
    assert any("the kernel goes on" in line for line in m.log)
