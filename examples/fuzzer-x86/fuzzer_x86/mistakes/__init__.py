"""Injected mistakes for the x86 model, each a plugin the fuzzer must find.

Load one with ``-p fuzzer_x86.mistakes.NAME``.
"""
