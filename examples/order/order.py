#!/usr/bin/env python3
"""Prints the functions that callgrind profiles saw run, hottest first.

Usage: order.py [--variants BINARY] PROFILE...
(callgrind output written with --demangle=no)

A function's cost is the instructions it ran itself (not its callees),
summed over the profiles; every function that ran at all is printed once,
by its mangled name, which is what the linker's --symbol-ordering-file wants.

With --variants, each of glibc's CPU-specific string functions that ran
(`__memcpy_avx_unaligned_erms`) is followed by its siblings in BINARY
(`__memcpy_evex_unaligned_erms`, ...): valgrind's CPU has no AVX-512, so
glibc picked other variants under callgrind than it picks on the machine
that runs the nodes.
"""
import collections
import re
import subprocess
import sys

FUNCTION = re.compile(r"(c?fn)=\((\d+)\)(?: (.*))?")
VARIANT = re.compile(r"^__([a-z0-9]+?)_(?:sse2|ssse3|sse4|sse42|avx|avx2|avx512|evex|erms)")


def self_costs(path, cost):
    names = {}  # callgrind names a function once, then by its number
    current = None
    call_line = False  # the line after `calls=` is the callee's cost
    with open(path, errors="replace") as lines:
        for line in lines:
            match = FUNCTION.match(line)
            if match:
                kind, number, name = match.groups()
                if name:
                    names[number] = name.strip()
                if kind == "fn":
                    current = names.get(number)
                continue
            if line.startswith("calls="):
                call_line = True
                continue
            if current and line[:1] and (line[0].isdigit() or line[0] in "+-*"):
                if call_line:
                    call_line = False
                    continue
                fields = line.split()
                if len(fields) >= 2:
                    cost[current] += int(fields[-1])


def variants_in(binary):
    """glibc's CPU-specific functions in BINARY, by the function they do."""
    by_base = collections.defaultdict(list)
    symbols = subprocess.run(["nm", binary], capture_output=True, text=True, check=True)
    for line in symbols.stdout.splitlines():
        name = line.split()[-1]
        match = VARIANT.match(name)
        if match:
            by_base[match.group(1)].append(name)
    return by_base


def main():
    args = sys.argv[1:]
    variants = {}
    if args[:1] == ["--variants"]:
        variants, args = variants_in(args[1]), args[2:]
    cost = collections.Counter()
    for path in args:
        self_costs(path, cost)
    printed = set()
    for name, instructions in cost.most_common():
        name = re.sub(r"'\d+$", "", name)  # callgrind's mark of a recursion level
        if instructions <= 0 or name.startswith(("0x", "(")):
            continue
        match = VARIANT.match(name)
        for each in [name] + (variants.get(match.group(1), []) if match else []):
            if each not in printed:
                printed.add(each)
                print(each)


if __name__ == "__main__":
    main()
