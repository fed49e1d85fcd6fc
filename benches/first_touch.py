#!/usr/bin/env python3
"""Times the first touch of fresh anonymous memory: how much a process pays
in page faults for each GiB it uses, on the machine it runs on.

Usage: python3 benches/first_touch.py MIB [--huge]

Writes one byte per 4 KiB page of a new MIB-MiB mapping (with --huge,
advised MADV_HUGEPAGE first) and prints the seconds; run it under
`/usr/bin/time -f "%e s wall %S s sys"` to see the kernel's share.
"""
import mmap
import sys
import time


def main():
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    n = int(sys.argv[1]) << 20
    t = time.time()
    m = mmap.mmap(-1, n)
    if "--huge" in sys.argv[2:]:
        m.madvise(mmap.MADV_HUGEPAGE)
    for i in range(0, n, 4096):
        m[i] = 1
    print(f"{sys.argv[1]} MiB touched in {time.time() - t:.3f} s")


if __name__ == "__main__":
    main()
