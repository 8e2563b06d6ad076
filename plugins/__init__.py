"""The fuzzer's built-in plugins, installed as ``fuzzer_plugins``.

radix, hash, kprobes, optprobes, jump_label, fixups, ftrace, interrupts, breakpoints; and
mistakes/, plugins that inject bugs.
"""
