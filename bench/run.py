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


def row(label, seconds, rss_kib, base=None, floor=None):
    ratio = f"{seconds / base:6.2f}x" if base else "       "
    floor = floor or own_rss_kib()
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


def ntfs_volume_with_files(name, files, disk_mib):
    """A dynamic VHD holding one NTFS partition at 1 MiB with `files` small files in nested
    folders, built once with mkntfs and ntfs-3g (needs root for the FUSE mount)."""
    os.makedirs(WORK, exist_ok=True)
    vhd = os.path.join(WORK, f"{name}.vhd")
    raw = os.path.join(WORK, f"{name}.raw")
    part = os.path.join(WORK, f"{name}.part")
    if os.path.exists(vhd) and os.path.exists(part):
        return vhd, raw, part
    sectors = disk_mib * 2048 - 2048
    with open(part, "wb") as f:
        f.truncate(sectors * 512)
    subprocess.run(["mkntfs", "-q", "-F", "-f", "-p", "2048", "-H", "255", "-S", "63", part],
                   check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    mnt = os.path.join(WORK, "mnt")
    os.makedirs(mnt, exist_ok=True)
    subprocess.run(["ntfs-3g", part, mnt], check=True)
    try:
        for i in range(files):
            d = os.path.join(mnt, f"d{i // 1000:03d}", f"s{(i // 100) % 10}")
            os.makedirs(d, exist_ok=True)
            with open(os.path.join(d, f"file{i:06d}.txt"), "wb") as f:
                f.write((f"file {i} " * (1 + i % 400)).encode())
    finally:
        subprocess.run(["umount", mnt], check=True)
    with open(raw, "wb") as f:
        f.truncate(disk_mib << 20)
    subprocess.run(["sfdisk", "-q", "--no-reread", "--no-tell-kernel", raw], input=b"label: dos\nstart=2048, type=7\n", check=True)
    subprocess.run(["dd", f"if={part}", f"of={raw}", "bs=1M", "seek=1", "conv=notrunc", "status=none"], check=True)
    subprocess.run(["qemu-img", "convert", "-q", "-f", "raw", "-O", "vpc", "-o", "subformat=dynamic,force_size=on", raw, vhd], check=True)
    os.remove(raw)
    return vhd, raw, part


def bench_ntfs():
    """The full index (files + cluster owners) of a 50,000-file volume against Sleuth Kit's
    listing alone (goal: 5x faster) and ntfscluster over the whole volume; peak memory against
    256 MiB + 64 bytes per MFT record."""
    vhd, _, part = ntfs_volume_with_files("files50k", 50_000, 1024)
    floor = own_rss_kib()
    ours, ours_rss = measure([tool("vhdinspect"), "files", "--json", vhd], runs=5)
    table, table_rss = measure([tool("vhdinspect"), "files", vhd], runs=5)
    fls, fls_rss = measure(["fls", "-r", "-p", "-f", "ntfs", part], runs=5)
    # Parsed after the measurements: the bench's own memory is the floor of every peak RSS.
    info = subprocess.run([tool("vhdinspect"), "files", "--json", vhd], capture_output=True, check=True)
    import json
    volume = json.loads(info.stdout)["volumes"][0]
    del info
    records = volume["mft_records"]
    clusters = volume["total_clusters"]
    print(f"ntfs: {vhd}: {volume['files']} files, {records} MFT records, median of 5 runs")
    row("fls -r -p (listing only)", fls, fls_rss, floor=floor)
    row("vhdinspect files (index + listing)", table, table_rss, fls, floor)
    row("vhdinspect files --json (index + JSON)", ours, ours_rss, fls, floor)
    nc, nc_rss = measure(["ntfscluster", "-f", "-c", f"0-{clusters - 1}", part], runs=1)
    row("ntfscluster -c 0-N (whole volume)", nc, nc_rss, floor=floor)
    verdict = "OK" if fls / table >= 5 else "MISSED"
    print(f"  listing vs fls: {fls / table:.1f}x faster (goal >= 5x) -> {verdict}; with JSON output {fls / ours:.1f}x")
    print(f"  vhdinspect vs ntfscluster: {nc / table:.1f}x faster")
    budget = 256 * 1024 + records * 64 / 1024
    peak = max(ours_rss, table_rss)
    print(f"  peak RSS {peak / 1024:.1f} MiB, budget {budget / 1024:.1f} MiB -> {'OK' if peak <= budget else 'OVER'}")


SECTIONS = {"dump": bench_dump, "ntfs": bench_ntfs}


def main():
    names = sys.argv[1:] or list(SECTIONS)
    for name in names:
        if name not in SECTIONS:
            sys.exit(f"bench: unknown section {name}; choose from {', '.join(SECTIONS)}")
        SECTIONS[name]()
        print()


if __name__ == "__main__":
    main()
