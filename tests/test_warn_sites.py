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

#: (mistake, kernel, config, seed, the function of the WARNING it reaches). From seeds 1, 2
#: and 4 shared_patching_mm is first caught by the patch-window invariant instead.
SITES = [
    # start_using_temp_mm's WARN_ON(!mm_is_thread_local(temp_mm)), code-patching.c:88 v6.2
    ("shared_patching_mm", "v6.2", (), 3, "start_using_temp_mm"),
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
