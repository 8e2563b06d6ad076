"""Kernel versions and MMUs per architecture: another arch's versions coexist with powerpc's."""

from __future__ import annotations

import pytest

import fuzzer
from fuzzer import KernelVersion, MmuSpec, UsageError
from fuzzer.testing import make_model, plugin_module
from fuzzer_plugins.radix import RadixMmu


def toy_arch() -> object:
    """A throw-away architecture: two versions and an MMU (radix hardware, arch "toy")."""
    return plugin_module(
        "toy_arch",
        fuzzer_kernel_versions=lambda: [KernelVersion("toy-1", 1, "old", arch="toy"),
                                        KernelVersion("toy-2", 2, "new", arch="toy")],
        fuzzer_mmus=lambda: [MmuSpec("toymmu", RadixMmu, "toy MMU", arch="toy")],
    )


def test_default_kernel_is_the_newest_of_the_mmus_architecture():
    assert make_model(extra=[toy_arch()]).run.kernel == "v6.12"
    model = make_model(mmu="toymmu", extra=[toy_arch()])
    assert (model.run.kernel, model.run.arch, model.run.page_shift) == ("toy-2", "toy", 12)
    assert "CONFIG_PPC_64K_PAGES" not in model.run.config.values
    assert "CONFIG_PPC_64K_PAGES" in make_model(extra=[toy_arch()]).run.config.values


def test_a_version_of_another_architecture_is_a_one_line_usage_error():
    with pytest.raises(UsageError) as info:
        make_model("v6.12", mmu="toymmu", extra=[toy_arch()])
    assert str(info.value) == (
        "kernel version 'v6.12' is a powerpc version; --mmu toymmu (toy) runs: toy-1, toy-2")
    with pytest.raises(UsageError) as info:
        make_model("toy-1", mmu="radix", extra=[toy_arch()])
    assert str(info.value).endswith("(powerpc) runs: v6.1, next-20221215, v6.2, v6.12-fixed, v6.12")


def test_cli_offers_each_mmu_its_own_versions(cli, make_plugin, capsys):
    name = make_plugin("toy_cli", """
        from fuzzer import KernelVersion, MmuSpec
        from fuzzer_plugins.radix import RadixMmu

        def fuzzer_kernel_versions():
            return [KernelVersion("toy-1", 1, "the toy kernel", arch="toy")]

        def fuzzer_mmus():
            return [MmuSpec("toymmu", RadixMmu, "toy MMU", arch="toy")]
    """)
    res = cli("-p", name, "run", "--mmu", "toymmu", "--kernel", "v6.2", "--seed", "1")
    assert res.rc == 4
    assert "kernel version 'v6.2' is a powerpc version; --mmu toymmu (toy) runs: toy-1" in res.err
    res = cli("-p", name, "plugins")
    assert res.rc == 0
    assert "    toy-1            [toy] the toy kernel\n" in res.out
    assert "    toymmu           [toy] toy MMU\n" in res.out
    capsys.readouterr()
    cli("-p", name, "run", "--help")
    help_text = " ".join(capsys.readouterr().out.split())
    assert "powerpc: v6.1, next-20221215, v6.2, v6.12-fixed, v6.12; toy: toy-1" in help_text


def test_a_kthread_operation_runs_without_an_mm_of_its_own():
    seen = []

    def body(cpu):
        seen.append((cpu.current.mm, cpu.current.active_mm, cpu.loaded_mm))
        yield

    op = fuzzer.Operation("probe.kthread", body, kthread=True)
    model = make_model("v6.2", extra=[plugin_module("probe", fuzzer_operations=lambda config: [op])])
    from fuzzer import Step
    from fuzzer.testing import boot_steps, replay

    _, failure = replay(model, [*boot_steps(), Step("start", cpu=0, name="probe.kthread", args={}),
                                Step("run", cpus=[0, 0])])
    assert failure is None
    mm, active, loaded = seen[0]
    # The default MMU has no lazy TLB: a kernel thread runs on init_mm.
    assert mm is None and active is loaded and loaded.is_init


def test_a_plugin_declaring_another_architecture_takes_no_part_in_the_run():
    def setup(machine):
        machine.state["toy_setup_ran"] = True

    toy_ops = plugin_module(
        "toy_ops",
        FUZZER_ARCH="toy",
        fuzzer_operations=lambda config: [fuzzer.Operation("toy.op", lambda cpu: iter(()))],
        fuzzer_machine_setup=setup,
    )
    powerpc = make_model("v6.12", extra=[toy_arch(), toy_ops])
    assert "toy.op" not in [o.name for o in powerpc.operations]
    assert "toy_ops" not in powerpc.machine_setup_plugins
    toy = make_model(mmu="toymmu", extra=[toy_arch(), toy_ops])
    assert "toy.op" in [o.name for o in toy.operations]
    assert "toy_ops" in toy.machine_setup_plugins
    # The powerpc built-ins declare theirs: none of their operations reaches a toy run.
    assert not any(o.name.startswith(("kprobes.", "jump_label.", "fixups.")) for o in toy.operations)
