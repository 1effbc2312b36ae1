#!/usr/bin/env python3
"""vhdkit benchmarks: each runs vhdkit side by side with the peer tools an issue names, on a
generated image, and prints times, peak memory and ratios. Run with `make bench`; pass section
names (`python3 bench/run.py dump`) to run only some. Images are cached under target/bench/.
"""
import os
import statistics
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WORK = os.path.join(ROOT, "target", "bench")
RELEASE = os.path.join(ROOT, "target", "release")


def tool(name):
    return os.path.join(RELEASE, name)


def measure(cmd, runs=1, **kw):
    """Median wall time (s) and peak RSS (KiB) of `cmd` over `runs` runs."""
    times, rss = [], 0
    for _ in range(runs):
        start = time.perf_counter()
        p = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, **kw)
        _, status, usage = os.wait4(p.pid, 0)
        elapsed = time.perf_counter() - start
        err = p.stderr.read().decode(errors="replace")
        p.stderr.close()
        if os.waitstatus_to_exitcode(status) != 0:
            sys.exit(f"bench: {' '.join(cmd)} failed: {err.strip()}")
        times.append(elapsed)
        rss = max(rss, usage.ru_maxrss)
    return statistics.median(times), rss


def own_rss_kib():
    """This script's peak RSS: a forked child starts its ru_maxrss at this value, so peaks at
    or below it only mean "no more than this"."""
    import resource
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def row(label, seconds, rss_kib, base=None):
    ratio = f"{seconds / base:6.2f}x" if base else "       "
    floor = own_rss_kib()
    rss = f"<= {floor / 1024:.1f} MiB" if rss_kib <= floor else f"{rss_kib / 1024:.1f} MiB"
    print(f"  {label:<44} {seconds * 1000:10.1f} ms  {ratio}  peak RSS {rss}")


def bench_dump():
    """vhdinspect dump of a 2040 GiB empty dynamic VHD reads only metadata: it must take no
    longer than `qemu-img info` on the same file."""
    os.makedirs(WORK, exist_ok=True)
    img = os.path.join(WORK, "empty-2040g.vhd")
    if not os.path.exists(img):
        subprocess.run(["qemu-img", "create", "-q", "-f", "vpc", "-o", "subformat=dynamic,force_size=on", img, "2040G"], check=True)
    print(f"dump: {img} (2040 GiB virtual, {os.path.getsize(img) / 2**20:.1f} MiB file), median of 20 runs")
    q, q_rss = measure(["qemu-img", "info", img], runs=20)
    d, d_rss = measure([tool("vhdinspect"), "dump", img], runs=20)
    j, j_rss = measure([tool("vhdinspect"), "dump", "--json", img], runs=20)
    row("qemu-img info", q, q_rss)
    row("vhdinspect dump", d, d_rss, q)
    row("vhdinspect dump --json", j, j_rss, q)
    verdict = "OK" if max(d, j) <= q else "SLOWER than qemu-img info"
    print(f"  goal: dump no slower than qemu-img info -> {verdict}")


SECTIONS = {"dump": bench_dump}


def main():
    names = sys.argv[1:] or list(SECTIONS)
    for name in names:
        if name not in SECTIONS:
            sys.exit(f"bench: unknown section {name}; choose from {', '.join(SECTIONS)}")
        SECTIONS[name]()
        print()


if __name__ == "__main__":
    main()
