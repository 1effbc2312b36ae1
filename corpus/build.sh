#!/usr/bin/env bash
# Builds the test corpus: small disk images made with sfdisk, mkntfs, ntfs-3g and qemu-img,
# stored gzip-compressed (gzip is on every Debian system, so `make demo` needs nothing more) beside a manifest (manifest.json) of what each holds.
#
# Needs root (ntfs-3g mounts through FUSE) and: qemu-img sfdisk mkntfs ntfs-3g setfattr gzip
# python3. Run it as `make corpus`. Output: corpus/*.vhd.gz, corpus/manifest.json.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
work="$here/build"
rm -rf "$work"
mkdir -p "$work/mnt"
cd "$work"

for tool in qemu-img sfdisk mkntfs ntfs-3g setfattr gzip python3; do
  command -v "$tool" >/dev/null || { echo "build.sh: $tool is missing" >&2; exit 1; }
done

# Deterministic, compressible content: `pattern NAME BYTES` writes BYTES bytes of numbered lines.
pattern() {
  python3 - "$1" "$2" <<'PY'
import sys
name, size = sys.argv[1], int(sys.argv[2])
out = bytearray()
n = 0
while len(out) < size:
    out += f"{name} line {n:08d} abcdefghijklmnopqrstuvwxyz0123456789\n".encode()
    n += 1
sys.stdout.buffer.write(bytes(out[:size]))
PY
}

# `mkdisk FILE MIB SFDISK_SCRIPT` creates a raw disk and partitions it.
mkdisk() {
  rm -f "$1"
  truncate -s "$2M" "$1"
  printf '%b' "$3" | sfdisk --quiet --no-reread --no-tell-kernel "$1" >/dev/null
}

# `part_at DISK N` prints "START_SECTOR SECTORS" of partition N.
part_at() {
  sfdisk --json "$1" | python3 -c "
import json,sys
t=json.load(sys.stdin)['partitiontable']
p=[p for p in t['partitions'] if p['node'].endswith(sys.argv[1])][0]
print(p['start'], p['size'])" "$2"
}

# `format DISK N CLUSTER LABEL` makes an NTFS volume in partition N of DISK through a loop-free
# offset: the volume is built in a scratch file and copied in, so no block device is needed.
format() {
  local disk=$1 n=$2 cluster=$3 label=$4
  read -r start size < <(part_at "$disk" "$n")
  rm -f vol.img
  truncate -s $((size * 512)) vol.img
  mkntfs --quiet --force --fast --cluster-size "$cluster" --label "$label" \
    --partition-start "$start" --heads 255 --sectors-per-track 63 vol.img >/dev/null 2>&1
  dd if=vol.img of="$disk" bs=512 seek="$start" conv=notrunc status=none
}

# `with_volume DISK N FUNCTION` mounts partition N of DISK read-write, runs FUNCTION MOUNTPOINT,
# then unmounts and writes the volume back.
with_volume() {
  local disk=$1 n=$2 fn=$3
  read -r start size < <(part_at "$disk" "$n")
  dd if="$disk" of=vol.img bs=512 skip="$start" count="$size" status=none
  # In the foreground (no_detach), so its exit, not only the unmount, says the volume is written.
  ntfs-3g -o streams_interface=xattr,no_detach vol.img mnt &
  local pid=$!
  local tries=0
  until mountpoint -q mnt; do
    kill -0 "$pid" 2>/dev/null || { echo "ntfs-3g failed to mount vol.img" >&2; exit 1; }
    tries=$((tries + 1)); [ "$tries" -lt 600 ] || { echo "ntfs-3g did not mount vol.img" >&2; exit 1; }
    sleep 0.1
  done
  "$fn" mnt
  sync
  tries=0
  until umount mnt 2>/dev/null; do
    tries=$((tries + 1)); [ "$tries" -lt 600 ] || { echo "umount mnt kept failing" >&2; exit 1; }
    sleep 0.1
  done
  wait "$pid" || { echo "ntfs-3g exited with status $? for vol.img" >&2; exit 1; }
  dd if=vol.img of="$disk" bs=512 seek="$start" conv=notrunc status=none
}

# The rich file set: nested directories, resident and large files, a fragmented file with an
# $ATTRIBUTE_LIST, alternate data streams, a hard link, a sparse file, a compressed directory
# and deleted files whose stale data stays in free clusters.
populate_rich() {
  local m=$1
  mkdir -p "$m/Dir One/Sub/Deeper/Deepest" "$m/docs"
  echo "tiny resident file" > "$m/tiny.txt"
  pattern nested 3000 > "$m/Dir One/Sub/Deeper/Deepest/nested.txt"
  pattern large 3145728 > "$m/docs/large.bin"
  pattern "linked" 5000 > "$m/docs/original.txt"
  ln "$m/docs/original.txt" "$m/Dir One/hardlink.txt"
  setfattr -n user.Zone.Identifier -v "[ZoneTransfer] ZoneId=3" "$m/tiny.txt"
  setfattr -n user.bigstream -v "$(pattern ads 20000)" "$m/docs/original.txt"
  truncate -s 8M "$m/sparse.bin"
  printf 'sparse-start' | dd of="$m/sparse.bin" conv=notrunc status=none
  printf 'sparse-middle' | dd of="$m/sparse.bin" bs=1 seek=4194304 conv=notrunc status=none
  mkdir "$m/compressed"
  setfattr -h -v 0x00000800 -n system.ntfs_attrib_be "$m/compressed"
  pattern compressible 200000 > "$m/compressed/squeezed.txt"
  # Fragmentation: small files, a ballast file taking all other free space, then every other
  # small file deleted: the holes are the only free space, so the next file gets one run per
  # hole, too many for one MFT record ($ATTRIBUTE_LIST and extension records).
  mkdir "$m/filler"
  for i in $(seq 1 700); do pattern "filler$i" 8192 > "$m/filler/f$i"; done
  dd if=/dev/zero of="$m/ballast" bs=64k status=none 2>/dev/null || true
  sync
  for i in $(seq 1 2 700); do rm "$m/filler/f$i"; done
  sync
  pattern fragmented 2400000 > "$m/docs/fragmented.bin"
  rm "$m/ballast"
  # Stale data: written, then deleted; the clusters are free but not zero.
  for i in 1 2 3; do pattern "STALE-DELETED-$i" 1048576 > "$m/stale$i.tmp"; done
  sync
  rm "$m"/stale*.tmp
}

populate_small() {
  local m=$1
  mkdir -p "$m/data/nested"
  echo "hello from $(basename "$m")" > "$m/data/hello.txt"
  pattern small 300000 > "$m/data/nested/small.bin"
  setfattr -n user.note -v "stream on a small volume" "$m/data/hello.txt"
  pattern "STALE-SMALL" 1048576 > "$m/gone.tmp"
  sync
  rm "$m/gone.tmp"
}

# 1. XP layout: one active NTFS partition at sector 63, 4 KiB clusters, the rich file set.
mkdisk xp.raw 64 'label: dos\nlabel-id: 0x1e2d3c4b\nstart=63, type=7, bootable\n'
format xp.raw 1 4096 XP
with_volume xp.raw 1 populate_rich
qemu-img convert -q -f raw -O vpc -o subformat=fixed,force_size=on xp.raw xp-fixed.vhd

# 2. Modern layout: NTFS at 1 MiB, 512-byte clusters, as a dynamic VHD.
mkdisk aligned.raw 64 'label: dos\nlabel-id: 0x5a5a0001\nstart=2048, type=7\n'
format aligned.raw 1 512 Aligned
with_volume aligned.raw 1 populate_small
qemu-img convert -q -f raw -O vpc -o subformat=dynamic,force_size=on aligned.raw aligned-dynamic.vhd

# 3. Logical partitions: a primary and an extended partition holding two misaligned logical
#    NTFS volumes (1 KiB and 64 KiB clusters).
mkdisk logical.raw 96 'label: dos\nlabel-id: 0x0badcafe\nstart=63, size=40897, type=7\nstart=40960, type=5\nstart=41023, size=24513, type=7\nstart=65599, type=7\n'
format logical.raw 1 4096 Primary
format logical.raw 5 1024 LogicalOne
format logical.raw 6 65536 LogicalTwo
with_volume logical.raw 5 populate_small
with_volume logical.raw 6 populate_small
qemu-img convert -q -f raw -O vpc -o subformat=dynamic,force_size=on logical.raw logical-dynamic.vhd

# 4. GPT: a Microsoft reserved partition and an NTFS basic data partition with 8 KiB clusters.
mkdisk gpt.raw 64 'label: gpt\nlabel-id: 2C6AE1F0-5D0E-4C8B-9E0A-6F1D2C3B4A59\nstart=2048, size=32768, type=E3C9E316-0B5C-4DB8-817D-F92DF00215AE, name="Microsoft reserved partition"\nstart=34816, type=EBD0A0A2-B9E5-4433-87C0-68B6B72699C7, name="Basic data partition"\n'
format gpt.raw 2 8192 GptData
with_volume gpt.raw 2 populate_small
qemu-img convert -q -f raw -O vpc -o subformat=dynamic,force_size=on gpt.raw gpt-dynamic.vhd

# 5. No NTFS at all: a Linux-type partition holding patterned data and zero gaps.
mkdisk nofs.raw 16 'label: dos\nlabel-id: 0x00c0ffee\nstart=2048, type=83\n'
pattern "not-ntfs" 3000000 | dd of=nofs.raw bs=512 seek=4096 conv=notrunc status=none
pattern "tail-data" 500000 | dd of=nofs.raw bs=512 seek=28000 conv=notrunc status=none
qemu-img convert -q -f raw -O vpc -o subformat=dynamic,force_size=on nofs.raw nofs-dynamic.vhd

for img in xp-fixed aligned-dynamic logical-dynamic gpt-dynamic nofs-dynamic; do
  gzip -9 -n -c "$img.vhd" > "$here/$img.vhd.gz"
done

python3 - "$here" <<'PY'
import json, os, sys, hashlib
here = sys.argv[1]
def sha(p):
    h = hashlib.sha256()
    with open(p, 'rb') as f:
        for chunk in iter(lambda: f.read(1 << 20), b''):
            h.update(chunk)
    return h.hexdigest()
images = {
  "xp-fixed.vhd": {"format": "fixed", "raw": "xp.raw", "scheme": "mbr",
    "partitions": [{"index": 1, "start_lba": 63, "filesystem": "ntfs", "cluster_size": 4096, "bootable": True}],
    "contents": "rich file set: nested dirs, resident file, 3 MiB file, fragmented file with $ATTRIBUTE_LIST, ADS, hard link, sparse file, compressed dir, deleted stale data"},
  "aligned-dynamic.vhd": {"format": "dynamic", "raw": "aligned.raw", "scheme": "mbr",
    "partitions": [{"index": 1, "start_lba": 2048, "filesystem": "ntfs", "cluster_size": 512}],
    "contents": "small file set with ADS and deleted stale data"},
  "logical-dynamic.vhd": {"format": "dynamic", "raw": "logical.raw", "scheme": "mbr",
    "partitions": [{"index": 1, "start_lba": 63, "filesystem": "ntfs", "cluster_size": 4096},
                   {"index": 5, "start_lba": 41023, "filesystem": "ntfs", "cluster_size": 1024},
                   {"index": 6, "start_lba": 65599, "filesystem": "ntfs", "cluster_size": 65536}],
    "contents": "extended partition at 40960 with two misaligned logical NTFS volumes"},
  "gpt-dynamic.vhd": {"format": "dynamic", "raw": "gpt.raw", "scheme": "gpt",
    "partitions": [{"index": 1, "start_lba": 2048, "filesystem": None},
                   {"index": 2, "start_lba": 34816, "filesystem": "ntfs", "cluster_size": 8192}],
    "contents": "Microsoft reserved + basic data NTFS"},
  "nofs-dynamic.vhd": {"format": "dynamic", "raw": "nofs.raw", "scheme": "mbr",
    "partitions": [{"index": 1, "start_lba": 2048, "filesystem": None}],
    "contents": "Linux-type partition with patterned data, no NTFS"},
}
for name, meta in images.items():
    meta["disk_size"] = os.path.getsize(os.path.join(here, "build", meta["raw"]))
    meta["raw_sha256"] = sha(os.path.join(here, "build", meta["raw"]))
    meta["vhd_sha256"] = sha(os.path.join(here, "build", name))
    del meta["raw"]
with open(os.path.join(here, "manifest.json"), "w") as f:
    json.dump({"generator": "corpus/build.sh", "images": images}, f, indent=2)
    f.write("\n")
PY
echo "corpus: built $(ls "$here"/*.vhd.gz | wc -l) images"
