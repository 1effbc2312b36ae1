//! `vhdcompact IN URL`: uploads to a page blob of Azurite (the Azure Storage emulator, started
//! here on a free port), checked with the Azure SDK for Python as the independent client: the
//! blob equals the fixed VHD vhdcompact writes to a file, its page ranges hold no more than the
//! needed bytes and the footer, a busy service (503 to every tenth request, through a proxy)
//! does not stop it, and an upload killed half-way resumes without resending what is there.

mod common;

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

/// A child process killed when dropped.
struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// Waits until something listens on `port`.
fn wait_listening(port: u16, what: &str) {
    let start = Instant::now();
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(start.elapsed() < Duration::from_secs(60), "{what} did not start on port {port}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn helper() -> PathBuf {
    root().join("tests/support/blob_helper.py")
}

/// Azurite's blob service on a free port, in memory.
fn azurite(dir: &Path) -> (Killed, u16) {
    let port = free_port();
    let child = Command::new("azurite-blob")
        .args([
            "--blobHost",
            "127.0.0.1",
            "--blobPort",
            &port.to_string(),
            "--inMemoryPersistence",
            "--loose",
            "--skipApiVersionCheck",
        ])
        .current_dir(dir)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("azurite is needed (make test installs it: npm install -g azurite)");
    let guard = Killed(child);
    wait_listening(port, "azurite");
    (guard, port)
}

fn sas_url(port: u16, blob: &str) -> String {
    let out = run_ok(Command::new("python3").arg(helper()).args(["sas", &port.to_string(), blob]));
    String::from_utf8(out).unwrap().trim().to_string()
}

/// Downloads the blob at `url`; returns its bytes and (bytes in page ranges, ranges, end).
fn download(url: &str, dir: &Path) -> (Vec<u8>, (u64, u64, u64)) {
    let out = dir.join("downloaded.vhd");
    let text = String::from_utf8(run_ok(Command::new("python3").arg(helper()).arg("get").arg(url).arg(&out))).unwrap();
    let n: Vec<u64> = text.split_whitespace().map(|x| x.parse().unwrap()).collect();
    (std::fs::read(&out).unwrap(), (n[0], n[1], n[2]))
}

fn upload(input: &Path, url: &str, args: &[&str]) -> std::process::Output {
    run(bin("vhdcompact").arg(input).arg(url).args(args).args(["--json"]).env("SOURCE_DATE_EPOCH", "1700000000"))
}

fn report(out: &std::process::Output) -> serde_json::Value {
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap()
}

#[test]
fn uploads_only_needed_pages_and_resumes() {
    let dir = tempdir();
    let d = dir.path();
    let (_azurite, port) = azurite(d);
    let input = d.join("xp.vhd");
    std::fs::copy(corpus("xp-fixed.vhd"), &input).unwrap();
    // What the blob must hold: the Azure fixed VHD written to a file, free clusters zeroed.
    let want = {
        let file = d.join("azure.vhd");
        run_ok(
            bin("vhdcompact")
                .arg(&input)
                .arg(&file)
                .args(["--azure", "--zero-free"])
                .env("SOURCE_DATE_EPOCH", "1700000000"),
        );
        std::fs::read(&file).unwrap()
    };
    let url = sas_url(port, "xp.vhd");
    let r = report(&upload(&input, &url, &["--verify"]));
    let (blob, (in_ranges, _, end)) = download(&url, d);
    assert!(blob == want, "the blob differs from the fixed VHD written to a file");
    assert_eq!(r["blob_size"].as_u64().unwrap(), want.len() as u64);
    assert_eq!(r["bytes_sent"].as_u64().unwrap(), in_ranges, "page ranges hold exactly what was sent");
    assert_eq!(end, want.len() as u64, "the footer is the last page");
    assert!(in_ranges < want.len() as u64 / 4, "{in_ranges} bytes in page ranges: free space was sent");
    assert!(r["skipped_free_bytes"].as_u64().unwrap() > 40 << 20, "{r}");
    assert!(r["verify"]["mismatches"].as_array().unwrap().is_empty());
    let secret = url.split_once('?').unwrap().1;
    assert!(!r.to_string().contains(secret), "the SAS token shows in the report");
    assert!(!input.with_file_name("xp.vhd.vhdkit-upload").exists(), "the state file of a finished upload stays");

    // A blob that exists is not replaced without --force, and the token is never shown.
    let again = upload(&input, &url, &[]);
    assert_eq!(again.status.code(), Some(1));
    assert!(!String::from_utf8_lossy(&again.stderr).contains(secret));
    report(&upload(&input, &url, &["--force"]));
    assert!(download(&url, d).0 == want);

    // A busy service: every tenth request answers 503 ServerBusy.
    let state = d.join("proxy");
    std::fs::create_dir(&state).unwrap();
    std::fs::write(state.join("fail-every-10"), "").unwrap();
    let proxy_port = free_port();
    let _proxy = Killed(
        Command::new("python3")
            .arg(helper())
            .args(["proxy", &proxy_port.to_string(), &port.to_string()])
            .arg(&state)
            .spawn()
            .unwrap(),
    );
    wait_listening(proxy_port, "the proxy");
    let direct = sas_url(port, "busy.vhd");
    let through = direct.replace(&format!(":{port}/"), &format!(":{proxy_port}/"));
    let r = report(&upload(&input, &through, &["--jobs", "4"]));
    assert!(r["retries"].as_u64().unwrap() > 0, "{r}");
    assert!(download(&direct, d).0 == want);

    // Killed half-way: the pages sent stay, the state file names the plan, and the next run
    // sends only the rest.
    std::fs::remove_file(state.join("fail-every-10")).unwrap();
    let pages_seen =
        || std::fs::read_to_string(state.join("count")).ok().and_then(|c| c.parse::<u64>().ok()).unwrap_or(0);
    let stall_after = pages_seen() + 30;
    std::fs::write(state.join("stall-after"), stall_after.to_string()).unwrap();
    let direct = sas_url(port, "resumed.vhd");
    let through = direct.replace(&format!(":{port}/"), &format!(":{proxy_port}/"));
    let mut child = Killed(
        bin("vhdcompact")
            .arg(&input)
            .arg(&through)
            .args(["--jobs", "1"])
            .env("SOURCE_DATE_EPOCH", "1700000000")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let start = Instant::now();
    while pages_seen() <= stall_after {
        assert!(start.elapsed() < Duration::from_secs(60), "the upload did not reach its 31st page write");
        std::thread::sleep(Duration::from_millis(20));
    }
    child.0.kill().unwrap();
    child.0.wait().unwrap();
    assert!(input.with_file_name("xp.vhd.vhdkit-upload").exists(), "an interrupted upload keeps its state");
    std::fs::remove_file(state.join("stall-after")).unwrap();
    let r = report(&upload(&input, &through, &["--verify"]));
    assert!(r["resumed_bytes"].as_u64().unwrap() > 0, "{r}");
    assert!(r["bytes_sent"].as_u64().unwrap() < in_ranges, "{r}");
    assert!(download(&direct, d).0 == want);
    // Plain http goes only to this machine.
    let out = run(bin("vhdcompact").arg(&input).arg("http://example.com/c/b.vhd?sig=x"));
    assert_eq!(out.status.code(), Some(1));
}
