"""Plausible mistakes in the v6.2 code-patching logic, one plugin each.

Each module overrides one modelled routine with a variant that changes one
step, the way a developer might while refactoring. Load one with
``-p fuzzer_plugins.mistakes.<name>`` to see whether (and how fast) the
fuzzer finds it; the test suite and the benchmarks use them as injected
bugs. None is loaded by default.
"""

#: Module names of the mistakes, for tests and benchmarks.
MISTAKES = (
    "irqs_early",
    "no_local_flush",
    "missing_ptesync",
    "shared_patching_mm",
    "leak_on_offline",
    "pmi_in_patch_window",
    "skip_suspend_breakpoints",
    "skip_restore_breakpoints",
    "hash_no_hpte_flush",
    "unsafe_sequence_order",
    "cached_pte",
    "alias_on_radix",
    "optprobe_branch_first",
    "null_patching_context",
    "aggr_disarm_early",
    "static_key_dec_no_update",
    "local_kernel_tlb_flush",
    "hash_local_kernel_flush",
    "percpu_context_preemptible",
    "disarm_lock_order",
    "enomem_leaks_mm",
    "pmi_locks_user_pte",
    "finish_gather_early",
    "lazy_switch_after_disable",
)

#: The deep set: mistakes that need two or more CPUs and three or more events in a
#: particular cross-CPU order (issue 14). Not in MISTAKES: a default campaign is not
#: expected to find each of them within its budget; bench/deep.py measures them.
DEEP = (
    "kprobe_trap_recheck",
    "kprobe_slot_before_rcu",
    "kprobe_irqs_on_in_handler",
    "kprobe_unhash_first",
    "kprobe_arm_before_hash",
    "kprobe_rcu_too_early",
    "static_key_inc_enabling",
    "static_key_dec_stale_count",
    "kprobe_aggr_publish_early",
)

#: Mistakes that show only at an extreme value of a kernel random draw.
DRAWS = ("patching_addr_zero",)
