//! Integrity beyond one process on a trusted file: locks between tools, journals that only
//! their owner may roll back, power loss at any point, structurally broken and hostile inputs,
//! and permissions. Long variants run under `make torture` (VHDKIT_TORTURE=1).

mod common;

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::*;

const NAME_KEY: &str = r"HKLM\SYSTEM\CurrentControlSet\Control\ComputerName\ComputerName";

/// Prints a figure for docs/integrity.md (shown with --nocapture, as `make torture` runs).
fn figure(text: String) {
    eprintln!("FIGURE: {text}");
}

/// More trials under `make torture`.
fn trials(quick: usize, torture: usize) -> usize {
    if std::env::var_os("VHDKIT_TORTURE").is_some() { torture } else { quick }
}

fn vhdreg(args: &[&str]) -> Output {
    run(bin("vhdreg").args(args))
}

fn get_value(image: &Path, name: &str) -> Option<String> {
    let out = run(bin("vhdreg").arg(image).args(["get", NAME_KEY, name, "--json", "--wait"]));
    out.status.success().then(|| {
        let j: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        j["data"].as_str().unwrap().to_string()
    })
}

/// A dynamic Windows-like image with real hives, or `None` without real data.
fn windows(dir: &Path) -> Option<PathBuf> {
    let h = hives(dir)?;
    Some(dynamic_windows_image(dir, &h))
}

#[test]
fn a_locked_image_is_refused_at_once_or_waited_for() {
    let dir = tempdir();
    let img = dir.path().join("img.vhd");
    std::fs::copy(corpus("aligned-dynamic.vhd"), &img).unwrap();
    let holder = std::fs::OpenOptions::new().read(true).write(true).open(&img).unwrap();
    holder.lock().unwrap();
    let out_vhd = dir.path().join("out.vhd");
    for cmd in [
        bin("vhdinspect").arg("dump").arg(&img),
        bin("vhdinspect").arg("files").arg(&img),
        bin("vhdcompact").arg(&img).arg(&out_vhd),
        bin("vhdcompact").arg(&img).arg("--in-place"),
        bin("vhdreg").arg(&img).args(["set", r"HKLM\SYSTEM\x", "y", "--type", "REG_DWORD", "--data", "1"]),
        bin("vhdreg").arg(&img).arg("recover"),
    ] {
        let started = Instant::now();
        let o = run(cmd);
        assert_one_line_error(&o, "img.vhd", &["in use by another vhdkit process", "--wait"]);
        assert!(started.elapsed() < Duration::from_secs(10), "{cmd:?} waited");
    }
    assert!(!out_vhd.exists());
    // A shared lock lets readers in and keeps writers out.
    holder.unlock().unwrap();
    holder.lock_shared().unwrap();
    run_ok(bin("vhdinspect").arg("dump").arg(&img));
    let o = run(bin("vhdcompact").arg(&img).args(["--in-place", "--zero-free"]));
    assert_one_line_error(&o, "img.vhd", &["in use"]);
    // With --wait, a writer waits for the lock and then runs.
    let mut child = bin("vhdcompact")
        .arg(&img)
        .args(["--in-place", "--zero-free", "--wait"])
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(700));
    assert!(child.try_wait().unwrap().is_none(), "the writer did not wait for the lock");
    holder.unlock().unwrap();
    let out = child.wait_with_output().unwrap();
    // It ran (it either zeroed free space or found none to zero), after the lock was released.
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success() || err.contains("nothing to do"), "{err}");
}

#[test]
fn writers_side_by_side_lose_no_change() {
    let dir = tempdir();
    let Some(img) = windows(dir.path()) else { return };
    let path = img.to_str().unwrap();
    let (mut committed, mut refused) = (0, 0);
    let n = trials(6, 30);
    for trial in 0..n {
        let names = [format!("A{trial}"), format!("B{trial}")];
        let spawn = |name: &str, wait: bool| {
            let mut c = bin("vhdreg");
            c.arg(path).args(["set", NAME_KEY, name, "--type", "REG_SZ", "--data", name]);
            if wait {
                c.arg("--wait");
            }
            c.stdout(Stdio::null()).stderr(Stdio::piped()).spawn().unwrap()
        };
        let wait = trial % 2 == 0;
        let (a, b) = (spawn(&names[0], wait), spawn(&names[1], wait));
        let outs = [a.wait_with_output().unwrap(), b.wait_with_output().unwrap()];
        for (name, out) in names.iter().zip(outs) {
            let err = String::from_utf8_lossy(&out.stderr);
            if out.status.success() {
                assert_eq!(
                    get_value(&img, name).as_deref(),
                    Some(name.as_str()),
                    "trial {trial}: a committed change is gone"
                );
                committed += 1;
            } else {
                assert!(!wait && err.contains("in use"), "trial {trial}: {err}");
                refused += 1;
            }
        }
        assert!(run(bin("vhdinspect").arg("check").arg(&img)).status.success());
    }
    figure(format!(
        "two vhdreg set at once: {n} trials, {committed} changes committed and all present (0 lost), {refused} refused as in use"
    ));
}

#[test]
fn a_write_beside_in_place_compaction_is_kept_and_the_image_stays_whole() {
    let dir = tempdir();
    let Some(img) = windows(dir.path()) else { return };
    let path = img.to_str().unwrap();
    let files_before = image_file_hashes(&img);
    let pristine = std::fs::read(&img).unwrap();
    let n = trials(3, 15);
    for trial in 0..n {
        // Every trial starts with blocks to drop, so the compaction has work to do.
        std::fs::write(&img, &pristine).unwrap();
        let value = format!("V{trial}");
        let compact = bin("vhdcompact")
            .arg(path)
            .args(["--in-place", "--zero-free", "--wait"])
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let set = vhdreg(&[path, "set", NAME_KEY, &value, "--type", "REG_SZ", "--data", &value, "--wait"]);
        assert!(set.status.success(), "{}", String::from_utf8_lossy(&set.stderr));
        let c = compact.wait_with_output().unwrap();
        assert!(c.status.success(), "trial {trial}: {}", String::from_utf8_lossy(&c.stderr));
        assert_eq!(get_value(&img, &value).as_deref(), Some(value.as_str()), "trial {trial}");
        let check = run(bin("vhdinspect").arg("check").arg(&img));
        assert!(check.status.success(), "{}", String::from_utf8_lossy(&check.stdout));
    }
    let mut files_after = image_file_hashes(&img);
    let mut before = files_before;
    for m in [&mut before, &mut files_after] {
        m.get_mut(&1).unwrap().remove(SYSTEM);
    }
    assert_eq!(files_after, before, "a file other than the hive changed");
    figure(format!("vhdreg set beside vhdcompact --in-place: {n} trials, 0 lost writes, 0 broken images"));
}

/// Crashes a `vhdreg set` before write `n` and returns the journal it left.
fn crashed_write(img: &Path, n: u32) -> PathBuf {
    let o = run(bin("vhdreg")
        .arg(img)
        .args(["set", NAME_KEY, "Crash", "--type", "REG_SZ", "--data", "CRASHED"])
        .env("VHDKIT_FAULT_AFTER_WRITES", n.to_string()));
    assert!(!o.status.success());
    let journal = vhdkit::host::journal::journal_path(img);
    assert!(journal.exists(), "no journal after a crash at write {n}");
    journal
}

#[test]
fn a_journal_is_applied_only_to_the_image_it_belongs_to() {
    let dir = tempdir();
    let Some(img) = windows(dir.path()) else { return };
    let pristine = std::fs::read(&img).unwrap();
    let journal = vhdkit::host::journal::journal_path(&img);
    let refused = |why: &str| {
        for cmd in [vec!["recover"], vec!["set", NAME_KEY, "x", "--type", "REG_DWORD", "--data", "1"]] {
            let o = run(bin("vhdreg").arg(&img).args(&cmd));
            assert_one_line_error(&o, "vhdkit-journal", &["refusing to apply this journal", why]);
        }
        // Readers refuse to look at the image, and touch nothing.
        let o = run(bin("vhdinspect").arg("dump").arg(&img));
        assert_one_line_error(&o, "win-dynamic.vhd", &["interrupted"]);
        assert_eq!(std::fs::read(&img).unwrap(), pristine, "the image changed");
    };
    // A planted file that is no journal at all.
    std::fs::write(&journal, b"#!/bin/sh\nthis would wipe the partition table\n..........................").unwrap();
    refused("not a vhdkit journal");
    std::fs::remove_file(&journal).unwrap();
    // A real journal, but of another image.
    let other = dir.path().join("other.vhd");
    std::fs::write(&other, &pristine).unwrap();
    let other_journal = crashed_write(&other, 3);
    std::fs::copy(&other_journal, &journal).unwrap();
    refused("was written for device");
    // Its own journal, made writable by others or owned by someone else, or a symlink or a
    // FIFO in its place.
    std::fs::remove_file(&journal).unwrap();
    let own = crashed_write(&img, 3);
    let crashed = std::fs::read(&img).unwrap();
    std::fs::set_permissions(&own, std::fs::Permissions::from_mode(0o666)).unwrap();
    let refused_crashed = |why: &str| {
        let o = run(bin("vhdreg").arg(&img).arg("recover"));
        assert_one_line_error(&o, "vhdkit-journal", &[why]);
        assert_eq!(std::fs::read(&img).unwrap(), crashed);
    };
    refused_crashed("others than its owner may write it");
    std::fs::set_permissions(&own, std::fs::Permissions::from_mode(0o600)).unwrap();
    std::os::unix::fs::chown(&own, Some(65534), None).unwrap();
    refused_crashed("owned by user 65534");
    std::os::unix::fs::chown(&own, Some(std::fs::metadata(&img).unwrap().uid()), None).unwrap();
    let kept = dir.path().join("kept-journal");
    std::fs::rename(&own, &kept).unwrap();
    std::os::unix::fs::symlink(&kept, &journal).unwrap();
    refused_crashed("symlink");
    std::fs::remove_file(&journal).unwrap();
    assert!(Command::new("mkfifo").arg(&journal).status().unwrap().success());
    refused_crashed("FIFO");
    std::fs::remove_file(&journal).unwrap();
    // The image changed after the crash (another tool wrote it): the journal is refused.
    std::fs::rename(&kept, &journal).unwrap();
    let mut tampered = crashed.clone();
    tampered[5] ^= 0xFF;
    std::fs::write(&img, &tampered).unwrap();
    let o = run(bin("vhdreg").arg(&img).arg("recover"));
    assert_one_line_error(&o, "vhdkit-journal", &["neither its old value", "nor one the interrupted run wrote"]);
    // Put back as the crash left it, the journal is honoured: the file is what it was.
    std::fs::write(&img, &crashed).unwrap();
    run_ok(bin("vhdreg").arg(&img).arg("recover"));
    assert_eq!(std::fs::read(&img).unwrap(), pristine);
    assert!(!journal.exists());
    // A journal of an older vhdkit is never applied.
    std::fs::write(vhdkit_legacy_journal(&img), b"VHDKJRNL").unwrap();
    let o = run(bin("vhdreg").arg(&img).arg("recover"));
    assert_one_line_error(&o, "vhdreg-journal", &["older vhdkit"]);
}

fn vhdkit_legacy_journal(img: &Path) -> PathBuf {
    let mut p = img.as_os_str().to_os_string();
    p.push(".vhdreg-journal");
    PathBuf::from(p)
}

/// One operation of a write trace (see src/host/fault.rs).
#[derive(Clone, Debug)]
enum Op {
    Write { path: PathBuf, offset: u64, bytes: Vec<u8> },
    SetLen { path: PathBuf, len: u64 },
    Sync { path: PathBuf },
    Remove { path: PathBuf },
}

fn parse_trace(bytes: &[u8]) -> Vec<Op> {
    let mut out = Vec::new();
    let mut at = 0;
    let u32_at = |b: &[u8], a: usize| u32::from_le_bytes(b[a..a + 4].try_into().unwrap()) as usize;
    let u64_at = |b: &[u8], a: usize| u64::from_le_bytes(b[a..a + 8].try_into().unwrap());
    while at < bytes.len() {
        let kind = bytes[at];
        let name_len = u32_at(bytes, at + 1);
        let path = PathBuf::from(String::from_utf8(bytes[at + 5..at + 5 + name_len].to_vec()).unwrap());
        let p = at + 5 + name_len;
        let (offset, len) = (u64_at(bytes, p), u64_at(bytes, p + 8) as usize);
        let data = bytes[p + 16..p + 16 + len].to_vec();
        out.push(match kind {
            b'W' => Op::Write { path, offset, bytes: data },
            b'T' => Op::SetLen { path, len: offset },
            b'S' => Op::Sync { path },
            _ => Op::Remove { path },
        });
        at = p + 16 + len;
    }
    out
}

/// A small deterministic generator for the sampled states.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

/// Applies `op` to the in-memory file `data`.
fn apply(data: &mut Vec<u8>, op: &Op) {
    match op {
        Op::Write { offset, bytes, .. } => {
            let end = *offset as usize + bytes.len();
            if data.len() < end {
                data.resize(end, 0);
            }
            data[*offset as usize..end].copy_from_slice(bytes);
        }
        Op::SetLen { len, .. } => data.resize(*len as usize, 0),
        _ => {}
    }
}

/// Checks the states a power cut during the traced journaled write of `work` (from
/// `original`) could leave: any subset of the image writes after the journal was flushed.
/// Each is rolled back by `vhdreg recover` to the old bytes exactly and checks clean. Returns
/// the number of states and of image writes, and the journal as written.
fn power_cut_states(work: &Path, original: &[u8], trace: &Path, min_writes: usize) -> (usize, usize, Vec<u8>) {
    let ops = parse_trace(&std::fs::read(trace).unwrap());
    let journal_path = vhdkit::host::journal::journal_path(work);
    let is_image = |p: &Path| p == work;
    // The journal is whole and flushed before the first write to the image.
    let first_image_write = ops.iter().position(|o| matches!(o, Op::Write { path, .. } if is_image(path))).unwrap();
    assert!(
        ops[..first_image_write].iter().any(|o| matches!(o, Op::Sync { path } if *path == journal_path)),
        "the image is written before the journal is flushed"
    );
    let mut journal = Vec::new();
    for op in &ops[..first_image_write] {
        if let Op::Write { path, .. } = op
            && *path == journal_path
        {
            apply(&mut journal, op);
        }
    }
    let image_ops: Vec<&Op> = ops[first_image_write..]
        .iter()
        .filter(|o| matches!(o, Op::Write { path, .. } | Op::SetLen { path, .. } if is_image(path)))
        .collect();
    assert!(image_ops.len() >= min_writes, "{} image writes", image_ops.len());
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    let states = trials(60, 400);
    // The states are written into the traced file itself: the journal names its inode.
    let state_img = work.to_path_buf();
    let state_journal = journal_path.clone();
    for s in 0..states {
        // Any subset of the writes since the journal was flushed may have reached the disk.
        let mut data = original.to_vec();
        let mask = rng.next();
        for (i, op) in image_ops.iter().enumerate() {
            let keep = match s {
                0 => false,
                1 => true,
                _ => (mask.rotate_left(i as u32) ^ rng.next()) & 1 == 1,
            };
            if keep {
                apply(&mut data, op);
            }
        }
        std::fs::write(&state_img, &data).unwrap();
        std::fs::write(&state_journal, &journal).unwrap();
        std::fs::set_permissions(&state_journal, std::fs::Permissions::from_mode(0o600)).unwrap();
        let o = run(bin("vhdreg").arg(&state_img).arg("recover"));
        assert!(o.status.success(), "state {s}: {}", String::from_utf8_lossy(&o.stderr));
        assert!(std::fs::read(&state_img).unwrap() == original, "state {s}: not the old content");
        let check = run(bin("vhdinspect").arg("check").arg(&state_img));
        assert!(check.status.success(), "state {s}: {}", String::from_utf8_lossy(&check.stdout));
    }
    (states, image_ops.len(), journal)
}

#[test]
fn after_a_power_cut_at_any_point_the_image_recovers_to_its_old_content() {
    // A write that allocates blocks in a dynamic image and grows the hive in NTFS: footer
    // moves, block data, BAT entries, bitmap, MFT record, hive sectors.
    let dir = tempdir();
    let Some(img) = windows(dir.path()) else { return };
    let original = std::fs::read(&img).unwrap();
    let blob = dir.path().join("blob.bin");
    std::fs::write(&blob, (0..2_500_000u32).map(|i| (i % 241) as u8).collect::<Vec<u8>>()).unwrap();
    let trace = dir.path().join("trace");
    let work = dir.path().join("traced.vhd");
    std::fs::write(&work, &original).unwrap();
    let o = run(bin("vhdreg")
        .arg(&work)
        .args(["set", r"HKLM\SYSTEM\vhdkit", "Blob", "--type", "REG_BINARY", "--data-file", blob.to_str().unwrap()])
        .env("VHDKIT_TRACE_WRITES", &trace));
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let (states, writes, journal) = power_cut_states(&work, &original, &trace, 6);
    let state_img = work.clone();
    let state_journal = vhdkit::host::journal::journal_path(&work);
    figure(format!(
        "power cut during vhdreg set ({writes} image writes after the journal flush): {states} states, all recovered to the old bytes"
    ));
    // A journal cut short while being written: the image was never touched.
    for cut in [0, 7, journal.len() / 2, journal.len() - 1] {
        std::fs::write(&state_img, &original).unwrap();
        std::fs::write(&state_journal, &journal[..cut]).unwrap();
        let o = run(bin("vhdreg").arg(&state_img).arg("recover"));
        assert!(o.status.success(), "cut at {cut}: {}", String::from_utf8_lossy(&o.stderr));
        assert!(String::from_utf8_lossy(&o.stdout).contains("before it touched the image"));
        assert!(std::fs::read(&state_img).unwrap() == original);
    }
}

#[test]
fn in_place_compaction_survives_a_power_cut_between_any_two_flushes() {
    let dir = tempdir();
    // A dynamic copy of the XP image: blocks with stale data to drop, blocks to move.
    let img = dir.path().join("xp.vhd");
    run_ok(
        Command::new("qemu-img")
            .args(["convert", "-f", "vpc", "-O", "vpc", "-o", "subformat=dynamic"])
            .arg(corpus("xp-fixed.vhd"))
            .arg(&img),
    );
    power_cut_in_place(&img, "VHD");
}

#[test]
fn in_place_compaction_of_a_vhdx_survives_a_power_cut_between_any_two_flushes() {
    let dir = tempdir();
    let img = dir.path().join("xp.vhdx");
    run_ok(
        Command::new("qemu-img")
            .args(["convert", "-f", "vpc", "-O", "vhdx", "-o", "subformat=dynamic,block_size=1M"])
            .arg(corpus("xp-fixed.vhd"))
            .arg(&img),
    );
    power_cut_in_place(&img, "VHDX");
}

/// Runs `vhdcompact --in-place --zero-free` on a copy of `img` with every write traced, then
/// checks sampled states a power cut could leave (any subset of the writes since the last
/// flush): each opens (a VHDX's log replayed), reads the needed bytes unchanged and checks
/// clean; for a VHDX, qemu-img replays each epoch's complete state to the same bytes too.
fn power_cut_in_place(img: &Path, what: &str) {
    let dir = tempdir();
    let original = std::fs::read(img).unwrap();
    let reference = vhdkit::DiskImage::open(img, &Default::default()).unwrap();
    let map = vhdkit::ImageMap::build(&reference, None).unwrap();
    let needed: Vec<(u64, u64)> = map
        .needs(0, vhdkit::BlockDevice::len(&reference))
        .into_iter()
        .filter(|n| n.kind != vhdkit::map::blocks::NeedKind::Unneeded)
        .map(|n| (n.start, n.end))
        .collect();
    let needed_bytes = |bytes: &[u8]| -> Vec<u8> {
        let mut out = Vec::new();
        for &(a, b) in &needed {
            out.extend_from_slice(&bytes[a as usize..b as usize]);
        }
        out
    };
    let want = needed_bytes(&read_all(&reference));
    drop(map);
    drop(reference);
    let trace = dir.path().join("trace");
    let work = dir.path().join(format!("traced.{}", what.to_lowercase()));
    std::fs::write(&work, &original).unwrap();
    let o = run(bin("vhdcompact").arg(&work).args(["--in-place", "--zero-free"]).env("VHDKIT_TRACE_WRITES", &trace));
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let ops: Vec<Op> = parse_trace(&std::fs::read(&trace).unwrap())
        .into_iter()
        .filter(|o| match o {
            Op::Write { path, .. } | Op::SetLen { path, .. } | Op::Sync { path } | Op::Remove { path } => *path == work,
        })
        .collect();
    // Epochs: the operations between two flushes.
    let mut epochs: Vec<Vec<&Op>> = vec![Vec::new()];
    for op in &ops {
        match op {
            Op::Sync { .. } => epochs.push(Vec::new()),
            _ => epochs.last_mut().unwrap().push(op),
        }
    }
    assert!(epochs.len() >= 4, "{} flushes", epochs.len() - 1);
    let mut rng = Rng(0xD1B5_4A32_D192_ED03);
    let per_epoch = trials(4, 25);
    let state = dir.path().join(format!("state.{}", what.to_lowercase()));
    let mut base = original.clone();
    for (e, epoch) in epochs.iter().enumerate() {
        for s in 0..per_epoch {
            let mut data = base.clone();
            for op in epoch {
                if s == 1 || (s > 1 && rng.next() & 1 == 1) {
                    apply(&mut data, op);
                }
            }
            std::fs::write(&state, &data).unwrap();
            let image = vhdkit::DiskImage::open(&state, &Default::default())
                .unwrap_or_else(|err| panic!("{what} epoch {e} state {s}: the image does not open: {err}"));
            assert!(needed_bytes(&read_all(&image)) == want, "{what} epoch {e} state {s}: needed content changed");
            drop(image);
            let check = run(bin("vhdinspect").arg("check").arg(&state));
            assert!(check.status.success(), "{what} epoch {e} state {s}: {}", String::from_utf8_lossy(&check.stdout));
            if what == "VHDX" && s == 1 {
                run_ok(Command::new("qemu-img").args(["check", "-q", "-r", "all", "-f", "vhdx"]).arg(&state));
                assert!(needed_bytes(&qemu_raw(&state, dir.path())) == want, "{what} epoch {e}: qemu's replay differs");
            }
        }
        for op in epoch {
            apply(&mut base, op);
        }
    }
    assert!(base == std::fs::read(&work).unwrap(), "the trace does not replay to the result");
    figure(format!(
        "power cut during vhdcompact --in-place of a {what}: {} flushes, {} states, all with the needed content and check clean",
        epochs.len() - 1,
        epochs.len() * per_epoch
    ));
}

#[test]
fn a_structurally_broken_image_is_not_rewritten_in_place() {
    let dir = tempdir();
    let img = dir.path().join("cross.vhd");
    std::fs::copy(corpus("aligned-dynamic.vhd"), &img).unwrap();
    // Cross-link: the second allocated BAT entry points at the first one's block.
    let data = std::fs::read(&img).unwrap();
    let table = u64::from_be_bytes(data[512 + 16..512 + 24].try_into().unwrap()) as usize;
    let entries: Vec<usize> = (0..64)
        .filter(|i| u32::from_be_bytes(data[table + 4 * i..table + 4 * i + 4].try_into().unwrap()) != u32::MAX)
        .collect();
    let mut broken = data.clone();
    let (a, b) = (entries[0], entries[1]);
    let first = broken[table + 4 * a..table + 4 * a + 4].to_vec();
    broken[table + 4 * b..table + 4 * b + 4].copy_from_slice(&first);
    std::fs::write(&img, &broken).unwrap();
    let o = run(bin("vhdcompact").arg(&img).arg("--in-place"));
    assert_one_line_error(&o, "cross.vhd", &["structurally broken", "overlaps"]);
    assert_eq!(std::fs::read(&img).unwrap(), broken);
    let o = run(bin("vhdreg").arg(&img).args(["set", r"HKLM\SYSTEM\x", "y", "--type", "REG_DWORD", "--data", "1"]));
    assert_one_line_error(&o, "cross.vhd", &["structurally broken"]);
    // Every vhddisk writer too: a resize, a grown partition, a relink.
    for args in [&["expand", "--size", "100M"][..], &["expand", "--size", "100M", "--grow-partition"], &["shrink"]] {
        let o = run(bin("vhddisk").args(&args[..1]).arg(&img).args(&args[1..]));
        assert_one_line_error(&o, "cross.vhd", &["structurally broken"]);
        assert_eq!(std::fs::read(&img).unwrap(), broken, "{args:?}");
    }
    // A copy to a new file goes on and says what is wrong.
    let out = run_ok(bin("vhdcompact").arg(&img).arg(dir.path().join("out.vhd")).arg("--json"));
    let r: serde_json::Value = serde_json::from_slice(&out).unwrap();
    assert!(
        r["input_problems"].as_array().unwrap().iter().any(|p| p["problem"].as_str().unwrap().contains("overlaps"))
    );
}

/// Runs `cmd` with a time limit; a run past it is a hang.
fn bounded(cmd: &mut Command, secs: u64) -> Output {
    let mut child = cmd.stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    let deadline = Instant::now() + Duration::from_secs(secs);
    while Instant::now() < deadline {
        if child.try_wait().unwrap().is_some() {
            return child.wait_with_output().unwrap();
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    let _ = child.wait();
    panic!("{cmd:?} hung for {secs} s");
}

#[test]
fn fifos_and_devices_in_every_input_slot_are_refused_at_once() {
    let dir = tempdir();
    let fifo = dir.path().join("fifo");
    assert!(Command::new("mkfifo").arg(&fifo).status().unwrap().success());
    let (f, zero) = (fifo.to_str().unwrap(), "/dev/zero");
    let img = dir.path().join("img.vhd");
    std::fs::copy(corpus("aligned-dynamic.vhd"), &img).unwrap();
    let i = img.to_str().unwrap();
    let Some(sam) = realdata("Registry/Registry.Test/Hives/SAM") else { return };
    let hive = dir.path().join("SAM");
    std::fs::copy(&sam, &hive).unwrap();
    make_writable(&hive);
    let h = hive.to_str().unwrap();
    let (mut cases_run, mut slowest) = (0, Duration::ZERO);
    for bad in [f, zero] {
        let cases: Vec<Vec<&str>> = vec![
            vec!["vhdinspect", "dump", bad],
            vec!["vhdinspect", "check", bad],
            vec!["vhdcompact", bad, "out.vhd"],
            vec!["vhdreg", "--hive-file", bad, "get", "SAM", "x"],
            vec!["vhdreg", "--hive-file", h, "set", "SAM", "x", "--type", "REG_BINARY", "--data-file", bad],
            vec!["vhdreg", "--hive-file", h, "import", bad],
        ];
        for case in cases {
            let started = Instant::now();
            let o = bounded(bin(case[0]).current_dir(dir.path()).args(&case[1..]), 20);
            slowest = slowest.max(started.elapsed());
            cases_run += 1;
            let err = String::from_utf8_lossy(&o.stderr);
            assert_eq!(o.status.code(), Some(1), "{case:?}: {err}");
            assert!(
                err.contains("not a regular file") || err.contains("not a regular file or a block device"),
                "{case:?}: {err}"
            );
        }
    }
    // A log beside a bare hive, and a journal beside an image, that are FIFOs.
    let log = dir.path().join("SAM.LOG1");
    assert!(Command::new("mkfifo").arg(&log).status().unwrap().success());
    let o = bounded(bin("vhdreg").args(["--hive-file", h, "get", "SAM\\Domains"]), 20);
    assert!(o.status.success(), "a FIFO log is skipped: {}", String::from_utf8_lossy(&o.stderr));
    let journal = vhdkit::host::journal::journal_path(&img);
    assert!(Command::new("mkfifo").arg(&journal).status().unwrap().success());
    let o = bounded(bin("vhdreg").args([i, "recover"]), 20);
    assert_one_line_error(&o, "vhdkit-journal", &["FIFO"]);
    // A differencing child whose parent locator names a FIFO.
    std::fs::remove_file(&journal).unwrap();
    let parent = dir.path().join("parent.vhd");
    std::fs::copy(corpus("aligned-dynamic.vhd"), &parent).unwrap();
    let child = dir.path().join("child.vhd");
    {
        let p = vhdkit::DiskImage::open(&parent, &Default::default()).unwrap();
        let link = vhdkit::ParentLink { image: &p, path: &parent };
        vhdkit::SparseVhd::create(&child, 0, 2 << 20, Some(link)).unwrap();
    }
    std::fs::remove_file(&parent).unwrap();
    assert!(Command::new("mkfifo").arg(&parent).status().unwrap().success());
    for cmd in ["dump", "check", "files"] {
        let o = bounded(bin("vhdinspect").arg(cmd).arg(&child), 20);
        let err = String::from_utf8_lossy(&o.stderr) + String::from_utf8_lossy(&o.stdout);
        assert!(err.contains("FIFO"), "{cmd}: {err}");
    }
    figure(format!(
        "FIFOs and /dev/zero as image, hive, data file, .reg file, log, journal and parent: {} cases, 0 hangs, slowest {:.2} s",
        cases_run + 5,
        slowest.as_secs_f64()
    ));
}

/// Peak memory of a run, in KiB (GNU time).
fn peak_kib(cmd: &mut Command) -> (Output, u64) {
    let program = cmd.get_program().to_os_string();
    let args: Vec<_> = cmd.get_args().map(|a| a.to_os_string()).collect();
    let out = run(Command::new("/usr/bin/time").args(["-f", "%M"]).arg(program).args(args));
    let err = String::from_utf8_lossy(&out.stderr);
    let kib = err.lines().last().and_then(|l| l.trim().parse().ok()).unwrap_or(u64::MAX);
    (out, kib)
}

#[test]
fn hostile_sizes_cannot_exhaust_memory_or_time() {
    let dir = tempdir();
    // 256 MiB blocks: block copies stay a fixed number of bytes.
    let big_blocks = dir.path().join("big-blocks.vhd");
    run_ok(bin("vhdcompact").arg(corpus("xp-fixed.vhd")).arg(&big_blocks).args(["--block-size", "256M"]));
    let (out, kib) = peak_kib(bin("vhdcompact").arg(&big_blocks).arg(dir.path().join("o1.vhd")).arg("--verify"));
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(kib < 200 << 10, "compacting 256 MiB blocks peaked at {kib} KiB");
    figure(format!("vhdcompact --verify of a VHD with 256 MiB blocks: peak RSS {} MiB", kib >> 10));
    // An empty 2040 GiB dynamic VHD with 2^24-ish BAT entries (128 KiB blocks).
    let empty = dir.path().join("empty.vhd");
    vhdkit::SparseVhd::create(&empty, 2040 << 30, 128 << 10, None).unwrap();
    let started = Instant::now();
    let (out, kib) =
        peak_kib(bin("vhdcompact").arg(&empty).arg(dir.path().join("o2.vhd")).arg("--input-format").arg("vhd"));
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(started.elapsed() < Duration::from_secs(60), "took {:?}", started.elapsed());
    assert!(kib < 600 << 10, "peaked at {kib} KiB for a 64 MiB BAT");
    figure(format!(
        "vhdcompact of an empty 2040 GiB VHD with 16.7 million BAT entries: {:.2} s, peak RSS {} MiB",
        started.elapsed().as_secs_f64(),
        kib >> 10
    ));
    // A 1 TiB sparse raw disk is not read as a terabyte of zeros.
    let sparse = dir.path().join("sparse.raw");
    std::fs::File::create(&sparse).unwrap().set_len(1 << 40).unwrap();
    {
        use std::os::unix::fs::FileExt;
        std::fs::OpenOptions::new().write(true).open(&sparse).unwrap().write_all_at(&[0x55, 0xAA], 510).unwrap();
    }
    for cmd in [
        bin("vhdinspect").args(["ranges"]).arg(&sparse),
        bin("vhdcompact").arg(&sparse).arg(dir.path().join("o3.vhd")),
        bin("vhddisk").args(["create", "--size", "1T"]).arg(dir.path().join("o4.vhd")).arg("--from").arg(&sparse),
    ] {
        let started = Instant::now();
        let o = bounded(cmd, 120);
        assert!(o.status.success(), "{cmd:?}: {}", String::from_utf8_lossy(&o.stderr));
        assert!(started.elapsed() < Duration::from_secs(60), "{cmd:?} took {:?}", started.elapsed());
        figure(format!("{:?} on a 1 TiB sparse raw disk: {:.2} s", cmd.get_program(), started.elapsed().as_secs_f64()));
    }
    // Its holes are not counted as blocks it held, and every block counted is accounted for.
    let r: serde_json::Value =
        serde_json::from_slice(&run_ok(bin("vhdcompact").arg(&sparse).arg(dir.path().join("o5.vhd")).arg("--json")))
            .unwrap();
    let n = |k: &str| r[k].as_u64().unwrap();
    assert_eq!(n("blocks_before"), 1, "{r}");
    assert_eq!(n("blocks_before") - n("blocks_after"), n("dropped_blocks") + n("dropped_zero_blocks"), "{r}");
}

#[test]
fn a_copy_salvages_an_image_whose_bad_entry_lies_in_free_space() {
    let dir = tempdir();
    let source = corpus("aligned-dynamic.vhd");
    let json = |cmd: &mut Command| -> serde_json::Value { serde_json::from_slice(&run_ok(cmd)).unwrap() };
    let map = json(bin("vhdinspect").args(["map", "--json"]).arg(&source));
    let blocks = map["blocks"].as_array().unwrap();
    let free =
        blocks.iter().find(|b| b["allocated"] == true && b["droppable"] == true).unwrap()["block"].as_u64().unwrap();
    assert_eq!(blocks[0]["droppable"], false, "block 0 holds the partition table");
    // A BAT entry pointing far past the file's end.
    let broken = |block: u64| -> PathBuf {
        let mut b = std::fs::read(&source).unwrap();
        let header = u64::from_be_bytes(b[16..24].try_into().unwrap()) as usize;
        let table = u64::from_be_bytes(b[header + 16..header + 24].try_into().unwrap()) as usize;
        let at = table + 4 * block as usize;
        b[at..at + 4].copy_from_slice(&0x00ff_ff00u32.to_be_bytes());
        let path = dir.path().join(format!("bad-entry-{block}.vhd"));
        std::fs::write(&path, b).unwrap();
        path
    };
    // The bad block holds nothing the volume needs: it is dropped unread and named.
    let out = dir.path().join("salvaged.vhd");
    let r = json(bin("vhdcompact").arg("--json").arg(broken(free)).arg(&out));
    let problems = r["input_problems"].to_string();
    assert!(problems.contains(&format!("BAT entry {free}")) && problems.contains("past the data end"), "{r}");
    assert_eq!(image_file_hashes(&out), image_file_hashes(&source), "every file as it was");
    // A needed block that cannot be read stops the copy: no output.
    let out = dir.path().join("not-salvaged.vhd");
    let o = run(bin("vhdcompact").arg(broken(0)).arg(&out));
    assert_one_line_error(&o, "bad-entry-0.vhd", &["BAT entry 0", "past the data end"]);
    assert!(!out.exists());
}

#[test]
fn a_table_of_a_million_bad_entries_gives_a_bounded_report() {
    let dir = tempdir();
    // A 14 MiB dynamic VHD that claims 2040 GiB in 2 MiB blocks, its BAT 4 MiB of noise:
    // about a million entries point past the file or at each other.
    let mut b = std::fs::read(corpus("aligned-dynamic.vhd")).unwrap();
    let footer = b.split_off(b.len() - 512);
    b.extend(noise(0x2545_f491_4f6c_dd1d, 4 << 20));
    b.extend(footer);
    let size = 2040u64 << 30;
    let end = b.len() - 512;
    for at in [0, end] {
        b[at + 40..at + 56].copy_from_slice(&[size.to_be_bytes(), size.to_be_bytes()].concat());
        vhd_checksum(&mut b[at..at + 512], 64);
    }
    let header = u64::from_be_bytes(b[16..24].try_into().unwrap()) as usize;
    b[header + 28..header + 36]
        .copy_from_slice(&[((size >> 21) as u32).to_be_bytes(), (2u32 << 20).to_be_bytes()].concat());
    vhd_checksum(&mut b[header..header + 1024], 36);
    let hostile = dir.path().join("hostile.vhd");
    std::fs::write(&hostile, &b).unwrap();
    for cmd in ["check", "dump"] {
        let (out, kib) = peak_kib(bin("vhdinspect").arg(cmd).arg(&hostile));
        assert!(out.status.code() == Some(1) || cmd == "dump", "{cmd}: {}", String::from_utf8_lossy(&out.stderr));
        assert!(kib < 200 << 10, "{cmd} peaked at {kib} KiB");
        assert!(out.stdout.len() < 1 << 20, "{cmd} wrote {} bytes", out.stdout.len());
        figure(format!("vhdinspect {cmd} of a BAT with a million bad entries: peak RSS {} MiB", kib >> 10));
    }
    // Copies fail on the first unreadable block before planning a million: no output left.
    let (compacted, created) = (dir.path().join("compacted.vhd"), dir.path().join("created.vhd"));
    for cmd in [
        bin("vhdcompact").arg(&hostile).arg(&compacted),
        bin("vhddisk").arg("create").arg(&created).arg("--from").arg(&hostile),
    ] {
        assert_one_line_error(&run(cmd), "hostile.vhd", &["BAT entry", "past the data end"]);
        let (_, kib) = peak_kib(cmd);
        assert!(kib < 100 << 10, "{cmd:?} peaked at {kib} KiB");
        let tool = Path::new(cmd.get_program()).file_name().unwrap().to_string_lossy().into_owned();
        figure(format!("{tool} of a BAT with a million bad entries: refused, peak RSS {} MiB", kib >> 10));
    }
    assert!(!compacted.exists() && !created.exists(), "no output is left");
    let report = run(bin("vhdinspect").args(["check", "--json"]).arg(&hostile));
    let json: serde_json::Value = serde_json::from_slice(&report.stdout).unwrap();
    let findings = json["findings"].as_array().unwrap();
    assert!(findings.len() < 1000, "{} findings", findings.len());
    assert!(
        findings.iter().any(|f| f["problem"].as_str().unwrap().contains("more")),
        "the findings past the first ones are counted"
    );
}

#[test]
fn large_inputs_are_judged_before_they_are_read() {
    let dir = tempdir();
    let sparse = |name: &str, len: u64| {
        let p = dir.path().join(name);
        std::fs::File::create(&p).unwrap().set_len(len).unwrap();
        p
    };
    // Not a hive: refused on its first block, not after reading a gigabyte.
    let not_hive = sparse("NOTAHIVE", 1 << 30);
    let (o, kib) = peak_kib(bin("vhdinspect").args(["reg", "--hive-file"]).arg(&not_hive).args(["list", "x"]));
    let refused = |o: &Output, words: &[&str]| {
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(!o.status.success() && words.iter().all(|w| err.contains(w)), "{err}");
    };
    refused(&o, &["NOTAHIVE", "regf"]);
    assert!(kib < 100 << 10, "a 1 GiB non-hive peaked at {kib} KiB");
    // A data file larger than any value: refused by its length.
    let Some(sam) = realdata("Registry/Registry.Test/Hives/SAM") else { return };
    let hive = dir.path().join("SAM");
    std::fs::copy(&sam, &hive).unwrap();
    let big = sparse("big.bin", 10 << 30);
    let h = hive.to_str().unwrap();
    let (o, kib) = peak_kib(
        bin("vhdreg")
            .args(["--hive-file", h, "set", r"SAM\Domains", "v", "--type", "REG_BINARY", "--data-file"])
            .arg(&big),
    );
    refused(&o, &["big.bin", "too large"]);
    assert!(kib < 100 << 10, "a 10 GiB data file peaked at {kib} KiB");
    // A clean hive's 2 GiB log is not read at all.
    sparse("SAM.LOG1", 2 << 30);
    let (o, kib) = peak_kib(bin("vhdreg").args(["--hive-file", h, "list", r"SAM\Domains"]));
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(kib < 100 << 10, "a clean hive beside a 2 GiB log peaked at {kib} KiB");
    figure(format!("a clean hive beside a 2 GiB log: peak RSS {} MiB", kib >> 10));
}

#[test]
fn a_rewritten_hive_keeps_its_mode_and_owner_and_a_read_only_one_is_refused() {
    let dir = tempdir();
    let Some(sam) = realdata("Registry/Registry.Test/Hives/SAM") else { return };
    let hive = dir.path().join("SAM");
    std::fs::copy(&sam, &hive).unwrap();
    std::fs::set_permissions(&hive, std::fs::Permissions::from_mode(0o640)).unwrap();
    std::os::unix::fs::chown(&hive, Some(65534), Some(65534)).unwrap();
    let h = hive.to_str().unwrap();
    run_ok(bin("vhdreg").args(["--hive-file", h, "set", r"SAM\Domains", "v", "--type", "REG_DWORD", "--data", "1"]));
    let m = std::fs::metadata(&hive).unwrap();
    assert_eq!((m.permissions().mode() & 0o7777, m.uid(), m.gid()), (0o640, 65534, 65534));
    // A file made read-only was made so on purpose, even for root.
    std::fs::set_permissions(&hive, std::fs::Permissions::from_mode(0o444)).unwrap();
    let before = std::fs::read(&hive).unwrap();
    let o =
        run(bin("vhdreg").args(["--hive-file", h, "set", r"SAM\Domains", "v", "--type", "REG_DWORD", "--data", "2"]));
    assert_one_line_error(&o, "SAM", &["read-only"]);
    assert_eq!(std::fs::read(&hive).unwrap(), before);
    // The journal of an interrupted write is no more open than its image.
    let Some(img) = windows(dir.path()) else { return };
    std::fs::set_permissions(&img, std::fs::Permissions::from_mode(0o600)).unwrap();
    let journal = crashed_write(&img, 3);
    assert_eq!(std::fs::metadata(&journal).unwrap().permissions().mode() & 0o777, 0o600);
}

/// Starts `cmd` paused just before its write `n` (returns None when it finished first, having
/// made fewer writes), with the pause file to remove to let it go on.
fn paused_at(cmd: &mut Command, n: u32, dir: &Path) -> Option<(std::process::Child, PathBuf)> {
    let pause = dir.join(format!("pause-{n}"));
    std::fs::write(&pause, b"").unwrap();
    let marker = dir.join(format!("pause-{n}.paused"));
    let _ = std::fs::remove_file(&marker);
    let mut child = cmd
        .env("VHDKIT_PAUSE_AFTER_WRITES", n.to_string())
        .env("VHDKIT_PAUSE_FILE", &pause)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    while Instant::now() < deadline {
        if marker.exists() {
            return Some((child, pause));
        }
        if child.try_wait().unwrap().is_some() {
            let _ = std::fs::remove_file(&pause);
            return None;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let _ = child.kill();
    let _ = child.wait();
    panic!("{cmd:?} never paused");
}

#[test]
fn other_tools_stopped_at_each_write_of_a_writer_cannot_get_in() {
    let dir = tempdir();
    let Some(img) = windows(dir.path()) else { return };
    let path = img.to_str().unwrap();
    let out = dir.path().join("copy.vhd");
    let mut points = 0;
    let pristine = std::fs::read(&img).unwrap();
    // A registry write stopped at each of its writes, and in-place compaction too.
    for (writer, args) in [
        ("vhdreg", vec![path, "set", NAME_KEY, "Paused", "--type", "REG_SZ", "--data", "P"]),
        ("vhdcompact", vec![path, "--in-place", "--zero-free"]),
    ] {
        for n in 0..400 {
            // Each run starts from the same image (written in place: the inode stays).
            std::fs::write(&img, &pristine).unwrap();
            let Some((child, pause)) = paused_at(bin(writer).args(&args), n, dir.path()) else { break };
            points += 1;
            // Nobody else gets in while the writer is between two writes...
            for other in [
                bin("vhdinspect").args(["files", path]),
                bin("vhdreg").args([path, "get", NAME_KEY, "ComputerName"]),
                bin("vhdreg").args([path, "set", NAME_KEY, "Other", "--type", "REG_SZ", "--data", "O"]),
                bin("vhdcompact").arg(path).arg(&out),
            ] {
                let o = run(other);
                assert_one_line_error(&o, "win-dynamic.vhd", &["in use"]);
            }
            assert!(!out.exists());
            // ...and one that waits runs after it, on what it left.
            let waiter = bin("vhdreg")
                .args([path, "set", NAME_KEY, "Waiter", "--type", "REG_SZ", "--data", "W", "--wait"])
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap();
            std::thread::sleep(Duration::from_millis(50));
            std::fs::remove_file(&pause).unwrap();
            let done = child.wait_with_output().unwrap();
            let err = String::from_utf8_lossy(&done.stderr);
            assert!(done.status.success() || err.contains("nothing to do"), "{writer} at write {n}: {err}");
            let w = waiter.wait_with_output().unwrap();
            assert!(w.status.success(), "{}", String::from_utf8_lossy(&w.stderr));
            assert_eq!(get_value(&img, "Waiter").as_deref(), Some("W"));
            if writer == "vhdreg" {
                assert_eq!(get_value(&img, "Paused").as_deref(), Some("P"));
            }
            let check = run(bin("vhdinspect").arg("check").arg(&img));
            assert!(check.status.success(), "{}", String::from_utf8_lossy(&check.stdout));
        }
    }
    assert!(points > 5, "only {points} stopping points");
    figure(format!(
        "other tools at each stopping point of vhdreg set and vhdcompact --in-place: {points} points, every one refused or waited"
    ));
}

#[test]
fn a_journal_is_found_under_every_name_of_its_image() {
    let dir = tempdir();
    let Some(img) = windows(dir.path()) else { return };
    let pristine = std::fs::read(&img).unwrap();
    // A write through a symlink leaves the journal beside the real file.
    let link = dir.path().join("link.vhd");
    std::os::unix::fs::symlink(&img, &link).unwrap();
    let journal = crashed_write(&link, 3);
    assert_eq!(journal, vhdkit::host::journal::journal_path(&img));
    for reader in
        [bin("vhdreg").arg(&img).args(["get", NAME_KEY, "ComputerName"]), bin("vhdinspect").arg("files").arg(&img)]
    {
        assert_one_line_error(&run(reader), "win-dynamic.vhd", &["interrupted"]);
    }
    let o = run(bin("vhdreg").arg(&img).args(["set", NAME_KEY, "Second", "--type", "REG_SZ", "--data", "2"]));
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(String::from_utf8_lossy(&o.stdout).contains("rolled back an interrupted write"));
    assert_eq!(get_value(&img, "Crash"), None, "the interrupted change is not half there");
    // An image with hard links is not written in place: its journal could be missed.
    std::fs::write(&img, &pristine).unwrap();
    let hard = dir.path().join("hard.vhd");
    std::fs::hard_link(&img, &hard).unwrap();
    let o = run(bin("vhdreg").arg(&img).args(["set", NAME_KEY, "x", "--type", "REG_SZ", "--data", "x"]));
    assert_one_line_error(&o, "win-dynamic.vhd", &["hard links"]);
    assert_eq!(std::fs::read(&img).unwrap(), pristine);
    // Restored from a copy (a new inode) with its journal, the image recovers with --force,
    // every journaled byte still checked.
    std::fs::remove_file(&hard).unwrap();
    let journal = crashed_write(&img, 3);
    let crashed = std::fs::read(&img).unwrap();
    // The copy is made while the original exists, so it gets another inode.
    let copy = dir.path().join("restored.vhd");
    std::fs::write(&copy, &crashed).unwrap();
    std::fs::rename(&copy, &img).unwrap();
    let o = run(bin("vhdreg").arg(&img).arg("recover"));
    assert_one_line_error(&o, "vhdkit-journal", &["inode", "forcing"]);
    run_ok(bin("vhdreg").arg(&img).args(["recover", "--force"]));
    assert_eq!(std::fs::read(&img).unwrap(), pristine);
    assert!(!journal.exists());
}

#[test]
fn links_devices_and_loops_cannot_turn_a_write_against_its_target() {
    let dir = tempdir();
    let Some(sam) = realdata("Registry/Registry.Test/Hives/SAM") else { return };
    // A bare hive edited through a symlink: the real file changes, the link stays a link.
    let real = dir.path().join("SAM.real");
    std::fs::copy(&sam, &real).unwrap();
    make_writable(&real);
    let link = dir.path().join("SAM");
    std::os::unix::fs::symlink(&real, &link).unwrap();
    run_ok(bin("vhdreg").args([
        "--hive-file",
        link.to_str().unwrap(),
        "set",
        r"SAM\Domains",
        "Via",
        "--type",
        "REG_DWORD",
        "--data",
        "5",
    ]));
    assert!(std::fs::symlink_metadata(&link).unwrap().file_type().is_symlink());
    assert_eq!(hivexget(&real, "\\SAM\\Domains", "Via"), "5");
    // A hive with another name is not split by a rewrite.
    let other = dir.path().join("SAM.other");
    std::fs::hard_link(&real, &other).unwrap();
    let o = run(bin("vhdreg").args([
        "--hive-file",
        real.to_str().unwrap(),
        "set",
        r"SAM\Domains",
        "X",
        "--type",
        "REG_DWORD",
        "--data",
        "1",
    ]));
    assert_one_line_error(&o, "SAM.real", &["hard links"]);
    // --force does not replace an output another process is writing.
    let img = corpus("aligned-dynamic.vhd");
    let busy = dir.path().join("busy.vhd");
    std::fs::write(&busy, b"in use").unwrap();
    let holder = std::fs::File::open(&busy).unwrap();
    holder.lock().unwrap();
    let o = run(bin("vhdcompact").arg(&img).arg(&busy).arg("--force"));
    assert_one_line_error(&o, "busy.vhd", &["in use"]);
    assert_eq!(std::fs::read(&busy).unwrap(), b"in use");
    drop(holder);
    // A journal's name is not an output name.
    let o = run(bin("vhdcompact").arg(&img).arg(dir.path().join("x.vhd.vhdkit-journal")));
    assert_one_line_error(&o, "vhdkit-journal", &["journal"]);
    // A parent that is the image itself: no waiting for its own lock, no loop.
    let child = dir.path().join("child.vhd");
    {
        let parent = dir.path().join("parent.vhd");
        std::fs::copy(&img, &parent).unwrap();
        let p = vhdkit::DiskImage::open(&parent, &Default::default()).unwrap();
        let link = vhdkit::ParentLink { image: &p, path: &parent };
        vhdkit::SparseVhd::create(&child, 0, 2 << 20, Some(link)).unwrap();
    }
    let o = bounded(bin("vhdcompact").arg(&child).args(["--in-place", "--wait", "--parent"]).arg(&child), 20);
    assert_one_line_error(&o, "child.vhd", &["this very chain"]);
    let o = bounded(bin("vhdinspect").arg("dump").arg("--parent").arg(&child).arg(&child), 20);
    assert!(!o.status.success() || String::from_utf8_lossy(&o.stdout).contains("this very chain"));
}

#[test]
fn outputs_land_in_folders_whatever_their_names() {
    use std::os::unix::ffi::OsStrExt;
    let dir = tempdir();
    let img = corpus("aligned-dynamic.vhd");
    for folder in [
        dir.path().join(std::ffi::OsStr::from_bytes(b"bad\xff")),
        dir.path().join("a.vhdkit-new-b"),
        dir.path().join("x.partial"),
    ] {
        std::fs::create_dir(&folder).unwrap();
        let out = folder.join("out.vhd");
        let o = run(bin("vhdcompact").arg(&img).arg(&out));
        assert!(o.status.success(), "{}: {}", folder.display(), String::from_utf8_lossy(&o.stderr));
        assert!(out.exists());
        let left: Vec<_> = std::fs::read_dir(&folder).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(left.len(), 1, "{left:?}");
    }
    // `--realign block` without '=' would name the output "block".
    let o = run(bin("vhdcompact").current_dir(dir.path()).arg(&img).args(["--realign", "block"]));
    assert_usage_error(&o, "block", &["--realign=block"]);
}

#[test]
fn block_devices_are_read_but_not_written_in_place() {
    let dir = tempdir();
    let raw = dir.path().join("disk.raw");
    std::fs::write(&raw, read_all(&open(&corpus("aligned-dynamic.vhd")))).unwrap();
    let attach = Command::new("losetup").args(["--find", "--show"]).arg(&raw).output();
    let Some(attach) = attach.ok().filter(|o| o.status.success()) else {
        eprintln!("skipped: no loop device can be attached here (losetup needs root and /dev/loop*)");
        return;
    };
    let dev = String::from_utf8(attach.stdout).unwrap().trim().to_string();
    let result = std::panic::catch_unwind(|| {
        run_ok(bin("vhdinspect").args(["check", &dev]));
        run_ok(bin("vhdinspect").args(["files", &dev]));
        let o =
            run(bin("vhdreg").args([dev.as_str(), "set", r"HKLM\SYSTEM\x", "y", "--type", "REG_DWORD", "--data", "1"]));
        assert_eq!(o.status.code(), Some(1));
        assert!(!Path::new(&format!("{dev}.vhdkit-journal")).exists());
    });
    assert!(Command::new("losetup").args(["-d", &dev]).status().unwrap().success());
    result.unwrap();
}

#[test]
fn a_power_cut_during_an_expand_a_relink_or_a_commit_recovers_to_the_old_bytes() {
    let dir = tempdir();
    // An expand that moves the BAT, footers and header; a relink that rewrites the header and
    // its locators; a commit that appends blocks to an empty parent (their data written past
    // the end, only the BAT, bitmaps and footer journaled).
    let image = dir.path().join("disk.vhd");
    std::fs::copy(corpus("aligned-dynamic.vhd"), &image).unwrap();
    make_writable(&image);
    let child = dir.path().join("child.vhd");
    run_ok(bin("vhddisk").arg("create").arg(&child).arg("--parent").arg(&image));
    let empty = dir.path().join("empty.vhd");
    run_ok(bin("vhddisk").args(["create", "--size", "64M"]).arg(&empty));
    let changed = dir.path().join("changed.vhd");
    run_ok(bin("vhddisk").arg("create").arg(&changed).arg("--parent").arg(&empty));
    {
        use vhdkit::WritableDevice;
        let (mut c, _) = vhdkit::DiskImage::open_writable(&changed, &Default::default()).unwrap();
        for (i, at) in [0u64, 3 << 20, 9 << 20, 30 << 20].into_iter().enumerate() {
            c.write_at(at + 4096, &vec![0x40 + i as u8; 1 << 20]).unwrap();
        }
        c.flush().unwrap();
    }
    // The relink first: the expand changes the parent's time, which the child names.
    let cases: [(&Path, Vec<String>); 3] = [
        (&child, vec!["set-parent".into(), child.display().to_string(), image.display().to_string()]),
        (&image, vec!["expand".into(), image.display().to_string(), "--size".into(), "3G".into(), "--force".into()]),
        (&empty, vec!["commit".into(), changed.display().to_string()]),
    ];
    for (work, args) in cases {
        let original = std::fs::read(work).unwrap();
        let trace = dir.path().join(format!("{}.trace", args[0]));
        let o = run(bin("vhddisk").args(&args).env("VHDKIT_TRACE_WRITES", &trace));
        assert!(o.status.success(), "{args:?}: {}", String::from_utf8_lossy(&o.stderr));
        std::fs::write(work, &original).unwrap();
        let (states, writes, _) = power_cut_states(work, &original, &trace, 3);
        figure(format!("power cut during vhddisk {} ({writes} image writes): {states} states, all recovered", args[0]));
    }
}

#[test]
fn an_append_whose_source_fails_leaves_the_image_as_it_was() {
    // A commit reads its source while appending blocks past the target's end: a read error
    // there must not leave a longer file, block data where the footer was, or a journal.
    let dir = tempdir();
    let image = dir.path().join("empty.vhd");
    run_ok(bin("vhddisk").args(["create", "--size", "64M"]).arg(&image));
    let before = std::fs::read(&image).unwrap();
    let (mut disk, _) = vhdkit::DiskImage::open_writable(&image, &Default::default()).unwrap();
    let vhdkit::vhd::image::DiskImage::Sparse(sparse) = &mut disk else { panic!("a dynamic VHD") };
    let full = vhdkit::vhd::bitmap::SectorBitmap::full(4096);
    let blocks = [(3, full.clone()), (7, full)];
    let mut calls = 0;
    let err = sparse
        .append_blocks(&blocks, |_, data| {
            calls += 1;
            data.fill(0x11);
            if calls == 2 { Err(vhdkit::Error::internal("the source failed")) } else { Ok(()) }
        })
        .unwrap_err();
    assert!(err.to_string().contains("the source failed"), "{err}");
    drop(disk);
    assert!(vhdkit::host::journal::pending(&image).is_none(), "no journal left");
    assert!(std::fs::read(&image).unwrap() == before, "the image is byte for byte as it was");
    assert!(run(bin("vhdinspect").arg("check").arg(&image)).status.success());
}
