#!/usr/bin/python3
"""Time to hello's first line: Kiln's VMM (`kiln run`) next to its PVH export under QEMU TCG, microvm and q35.

Usage: bench/pvh_first_output.py KILN HELLO IMAGE, with IMAGE from `kiln export -o IMAGE HELLO`. Prints five rounds,
each the three in turn: seconds to the first line, and to the end."""
import subprocess
import sys
import time

MARKER = b"hello from kiln"


def timed(cmd):
    start = time.monotonic()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    first, seen = None, b""
    while chunk := proc.stdout.read1(4096):
        seen += chunk
        if first is None and MARKER in seen:
            first = time.monotonic() - start
    proc.wait()
    return first or float("nan"), time.monotonic() - start


def qemu(machine, image):
    return ["qemu-system-x86_64", "-M", machine, "-cpu", "max", "-m", "128M", "-display", "none", "-nodefaults",
            "-serial", "stdio", "-no-reboot", "-device", "isa-debug-exit,iobase=0xf4,iosize=0x04", "-kernel", image]


def main():
    kiln, hello, image = sys.argv[1:4]
    for _ in range(5):
        runs = [timed([kiln, "run", "--net", "none", hello]), timed(qemu("microvm", image)), timed(qemu("q35", image))]
        print(" | ".join(f"{name} first {f:.3f} total {t:.3f}" for name, (f, t) in zip(["kiln", "microvm", "q35"], runs)))


main()
