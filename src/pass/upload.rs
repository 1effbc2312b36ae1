//! Uploading an image to an Azure page blob as the fixed VHD Azure wants (the disk rounded up
//! to a whole MiB, then the 512-byte footer as the last page), without writing it anywhere
//! first. The compaction plan (Azure output, free clusters zeroed) says which bytes are
//! needed; only pages that hold needed, non-zero bytes are sent, each Put Page at most 4 MiB
//! with its Content-MD5, over several connections, retried with backoff when the service is
//! busy or a connection fails. Stale data in free clusters is never sent.
//!
//! Resuming: before sending, a small state file beside the input names the blob, its size and
//! the plan's fingerprint. A run that finds the blob and a state file for the same plan asks
//! the service which pages it holds (Get Page Ranges) and sends only the others: a Put Page is
//! all or nothing, so a page the service lists was written whole. The state file is removed
//! once the upload is complete.
//!
//! The SAS token (the URL's query) is a secret: errors and reports name the blob without it.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use base64::Engine;
use md5::Digest;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result, Space};
use crate::host::{NewFile, OutputPolicy, Replace};
use crate::map::ImageMap;
use crate::pass::Event;
use crate::pass::compact::{CompactOptions, CompactionPlan, OutputFormat, StoredBlock, plan};
use crate::vhd::device::BlockDevice;
use crate::vhd::footer::{DiskType, FOOTER_SIZE, Footer};
use crate::vhd::image::{DiskImage, ImageFormat};

/// Azure's largest Put Page.
const MAX_PAGE_WRITE: u64 = 4 << 20;
/// A page.
const PAGE: u64 = 512;
/// The storage service version the requests speak.
const API_VERSION: &str = "2021-08-06";
/// Attempts of one request before the upload gives up.
const TRIES: u32 = 8;

/// How to upload.
#[derive(Clone, Debug)]
pub struct UploadOptions {
    /// Parallel connections.
    pub jobs: usize,
    /// Read the written pages back and compare them with what was meant.
    pub verify: bool,
    /// Replace a blob that exists and does not belong to an interrupted upload of this plan.
    pub replace: bool,
}

impl Default for UploadOptions {
    fn default() -> Self {
        UploadOptions { jobs: 8, verify: false, replace: false }
    }
}

/// What an upload did.
#[derive(Clone, Debug, Serialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct UploadReport {
    /// The input image.
    pub input: String,
    /// The blob, without its SAS token.
    pub blob: String,
    /// The disk's size in the blob (a whole number of MiB).
    pub disk_size: u64,
    /// The blob's size: the disk and the footer.
    pub blob_size: u64,
    /// Bytes sent in Put Page requests (the footer included).
    pub bytes_sent: u64,
    /// Put Page requests made.
    pub page_writes: u64,
    /// Bytes of the disk not needed (free clusters, unused space): never sent.
    pub skipped_free_bytes: u64,
    /// Needed bytes that are zeros: the blob reads zeros there without a write.
    pub skipped_zero_bytes: u64,
    /// Bytes an interrupted upload had already sent, not sent again.
    pub resumed_bytes: u64,
    /// Requests that were tried again (busy service, throttling, failed connections).
    pub retries: u64,
    /// With `verify`: bytes read back and the ranges that differ.
    pub verify: Option<UploadVerify>,
    /// Wall time of the run.
    pub elapsed_seconds: f64,
}

/// What reading the blob back found.
#[derive(Clone, Debug, Serialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct UploadVerify {
    /// Bytes read back and compared.
    pub checked_bytes: u64,
    /// `[offset, length]` of each write whose pages differ.
    pub mismatches: Vec<(u64, u64)>,
}

/// The state file of an upload in progress.
#[derive(Serialize, Deserialize, PartialEq, Eq)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
struct UploadState {
    blob: String,
    blob_size: u64,
    plan: String,
}

/// A page blob's address, its SAS token kept apart.
struct Blob {
    base: String,
    sas: String,
    agent: ureq::Agent,
    retries: AtomicU64,
}

/// One Put Page: `len` bytes at disk offset `offset`.
#[derive(Clone, Copy, Debug)]
struct Write {
    offset: u64,
    len: u64,
}

/// Uploads `image` to the page blob at `url` (with its SAS token) as an Azure fixed VHD,
/// compacted with `compact` (the output is always fixed, rounded to a whole MiB, free clusters
/// zeroed: those are never sent).
pub fn upload(
    image: &DiskImage,
    url: &str,
    compact: &CompactOptions,
    opts: &UploadOptions,
    events: &(dyn Fn(Event<'_>) + Sync),
) -> Result<UploadReport> {
    let started = Instant::now();
    let blob = Blob::parse(url)?;
    let compact = CompactOptions {
        to: Some(OutputFormat::Fixed),
        azure: true,
        zero_free: true,
        container: Some(ImageFormat::Vhd),
        verify: false,
        ..compact.clone()
    };
    let map = ImageMap::build_with(image, None, crate::pass::compact::index_detail(&compact))?;
    let plan = plan(&map, &compact)?;
    let disk_size = plan.disk_size;
    let blob_size = disk_size + FOOTER_SIZE as u64;
    let writes = needed_writes(&plan);
    let needed: u64 = writes.iter().map(|w| w.len).sum();
    let state_path = state_path(image.source());
    let state = UploadState { blob: blob.base.clone(), blob_size, plan: hex::encode(plan.fingerprint) };
    let present = blob.prepare(blob_size, &state, &state_path, opts.replace)?;
    save_state(&state_path, &state, image)?;
    events(Event::Writing { temp: None, units: needed + FOOTER_SIZE as u64 });
    let sent = AtomicU64::new(0);
    let requests = AtomicU64::new(0);
    let zero = AtomicU64::new(0);
    let resumed = AtomicU64::new(0);
    let done = AtomicU64::new(0);
    let queue = Mutex::new(writes.iter());
    let failure: Mutex<Option<Error>> = Mutex::new(None);
    std::thread::scope(|scope| {
        for _ in 0..opts.jobs.max(1) {
            scope.spawn(|| {
                let mut buf = Vec::new();
                loop {
                    if failure.lock().map_or(true, |f| f.is_some()) {
                        return;
                    }
                    let Some(w) = queue.lock().ok().and_then(|mut q| q.next().copied()) else { return };
                    let counters = Counters { sent: &sent, requests: &requests, zero: &zero, resumed: &resumed };
                    let result = send_write(&blob, &plan, w, &present, &mut buf, &counters);
                    if let Err(e) = result {
                        if let Ok(mut f) = failure.lock() {
                            f.get_or_insert(e);
                        }
                        return;
                    }
                    events(Event::Written(done.fetch_add(w.len, Ordering::Relaxed) + w.len));
                }
            });
        }
    });
    if let Some(e) = failure.into_inner().ok().flatten() {
        return Err(e);
    }
    let footer = Footer::new(DiskType::Fixed, disk_size, &plan.identity).encode();
    blob.put_page(disk_size, &footer)?;
    sent.fetch_add(footer.len() as u64, Ordering::Relaxed);
    requests.fetch_add(1, Ordering::Relaxed);
    events(Event::Written(needed + FOOTER_SIZE as u64));
    let verify = if opts.verify {
        events(Event::Verifying);
        Some(verify(&blob, &plan, &writes, &footer)?)
    } else {
        None
    };
    if verify.as_ref().is_none_or(|v| v.mismatches.is_empty()) {
        std::fs::remove_file(&state_path).map_err(|e| Error::open(&state_path, "remove", e))?;
    }
    Ok(UploadReport {
        input: image.source().display().to_string(),
        blob: blob.base.clone(),
        disk_size,
        blob_size,
        bytes_sent: sent.into_inner(),
        page_writes: requests.into_inner(),
        skipped_free_bytes: disk_size - needed,
        skipped_zero_bytes: zero.into_inner(),
        resumed_bytes: resumed.into_inner(),
        retries: blob.retries.load(Ordering::Relaxed),
        verify,
        elapsed_seconds: started.elapsed().as_secs_f64(),
    })
}

/// The writes that carry the plan's needed bytes: each stored block's needed ranges widened
/// to whole pages, merged, and cut at [`MAX_PAGE_WRITE`].
fn needed_writes(plan: &CompactionPlan<'_>) -> Vec<Write> {
    let bs = plan.block_size;
    let ranges = plan.stored.iter().flat_map(|s| {
        s.needed.iter().map(move |&(a, z)| {
            let (a, z) = (s.index * bs + a, s.index * bs + z);
            (a / PAGE * PAGE, z.div_ceil(PAGE) * PAGE)
        })
    });
    let mut out = Vec::new();
    for (a, z) in crate::vhd::device::merge_ranges(ranges) {
        let z = z.min(plan.disk_size);
        let mut at = a;
        while at < z {
            let len = MAX_PAGE_WRITE.min(z - at);
            out.push(Write { offset: at, len });
            at += len;
        }
    }
    out
}

/// Reads the output's bytes at `offset`: the planned source with free clusters zeroed.
fn read_output(plan: &CompactionPlan<'_>, offset: u64, buf: &mut [u8]) -> Result<()> {
    let readable = (offset + buf.len() as u64).min(plan.source.len()).saturating_sub(offset) as usize;
    if readable > 0 {
        plan.source.read_at(offset, &mut buf[..readable])?;
    }
    buf[readable..].fill(0);
    let bs = plan.block_size;
    let end = offset + buf.len() as u64;
    let first = plan.stored.partition_point(|s: &StoredBlock| (s.index + 1) * bs <= offset);
    for s in plan.stored[first..].iter().take_while(|s| s.index * bs < end) {
        for &(a, z) in &s.zero {
            let (a, z) = ((s.index * bs + a).max(offset), (s.index * bs + z).min(end));
            if a < z {
                buf[(a - offset) as usize..(z - offset) as usize].fill(0);
            }
        }
    }
    Ok(())
}

/// What the workers count.
struct Counters<'a> {
    sent: &'a AtomicU64,
    requests: &'a AtomicU64,
    zero: &'a AtomicU64,
    resumed: &'a AtomicU64,
}

/// Sends one write's non-zero pages, each run of them one Put Page, but the runs the blob
/// already holds whole (`present`, from an interrupted upload of the same plan).
fn send_write(
    blob: &Blob,
    plan: &CompactionPlan<'_>,
    w: Write,
    present: &[(u64, u64)],
    buf: &mut Vec<u8>,
    count: &Counters<'_>,
) -> Result<()> {
    buf.resize(w.len as usize, 0);
    read_output(plan, w.offset, buf)?;
    let pages: Vec<bool> = buf.chunks(PAGE as usize).map(|p| p.iter().any(|&b| b != 0)).collect();
    let mut i = 0;
    while i < pages.len() {
        if !pages[i] {
            count.zero.fetch_add(PAGE, Ordering::Relaxed);
            i += 1;
            continue;
        }
        let j = (i..pages.len()).find(|&j| !pages[j]).unwrap_or(pages.len());
        let (a, z) = (i * PAGE as usize, (j * PAGE as usize).min(buf.len()));
        let at = w.offset + a as u64;
        if covered(present, at, at + (z - a) as u64) {
            count.resumed.fetch_add((z - a) as u64, Ordering::Relaxed);
        } else {
            blob.put_page(at, &buf[a..z])?;
            count.sent.fetch_add((z - a) as u64, Ordering::Relaxed);
            count.requests.fetch_add(1, Ordering::Relaxed);
        }
        i = j;
    }
    Ok(())
}

/// Whether `[a, z)` lies inside one of the sorted, disjoint `ranges`.
fn covered(ranges: &[(u64, u64)], a: u64, z: u64) -> bool {
    let i = ranges.partition_point(|r| r.1 <= a);
    ranges.get(i).is_some_and(|r| r.0 <= a && z <= r.1)
}

/// Reads every write (non-zero pages and zero pages alike) and the footer back from the blob.
fn verify(blob: &Blob, plan: &CompactionPlan<'_>, writes: &[Write], footer: &[u8]) -> Result<UploadVerify> {
    let mut report = UploadVerify { checked_bytes: 0, mismatches: Vec::new() };
    let mut want = Vec::new();
    for w in writes {
        want.resize(w.len as usize, 0);
        read_output(plan, w.offset, &mut want)?;
        let got = blob.get_range(w.offset, w.len)?;
        report.checked_bytes += w.len;
        if got != want {
            report.mismatches.push((w.offset, w.len));
        }
    }
    let got = blob.get_range(plan.disk_size, footer.len() as u64)?;
    report.checked_bytes += footer.len() as u64;
    if got != footer {
        report.mismatches.push((plan.disk_size, footer.len() as u64));
    }
    Ok(report)
}

/// Where the state of an upload of `input` is kept.
fn state_path(input: &Path) -> PathBuf {
    let mut name = input.file_name().unwrap_or_default().to_os_string();
    name.push(".vhdkit-upload");
    input.with_file_name(name)
}

fn read_state(path: &Path) -> Option<UploadState> {
    let bytes = crate::host::read_limited(path, 1 << 16, "upload state", crate::host::LockWait::Fail).ok()?;
    serde_json::from_slice(&bytes).ok()
}

fn save_state(path: &Path, state: &UploadState, image: &DiskImage) -> Result<()> {
    let mut policy = OutputPolicy::new(Replace::Existing);
    image.add_inputs_to(&mut policy);
    let text = serde_json::to_vec(state).map_err(|e| Error::internal(e.to_string()))?;
    NewFile::create(path, &policy)?.write_all_and_commit(&text)
}

impl Blob {
    /// Splits `url` into the blob's address and its SAS token; plain http only to this machine.
    fn parse(url: &str) -> Result<Self> {
        let (base, sas) = url.split_once('?').unwrap_or((url, ""));
        let shown = Path::new(base);
        let uri: ureq::http::Uri = base.parse().map_err(|_| {
            Error::Usage(format!("{base}: not a blob URL (https://ACCOUNT.blob.core.windows.net/CONTAINER/BLOB?SAS)"))
        })?;
        let host = uri.host().unwrap_or("").trim_start_matches('[').trim_end_matches(']');
        let loopback = host == "localhost" || host.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback());
        match uri.scheme_str() {
            Some("https") => {}
            Some("http") if loopback => {}
            Some("http") => {
                return Err(Error::unsupported(
                    shown,
                    "plain http is allowed only to this machine (an emulator): use https",
                ));
            }
            _ => return Err(Error::Usage(format!("{base}: not an http(s) URL"))),
        }
        if uri.path().trim_matches('/').split('/').count() < 2 {
            return Err(Error::Usage(format!(
                "{base}: name a blob: https://ACCOUNT.blob.core.windows.net/CONTAINER/BLOB?SAS"
            )));
        }
        let config = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_per_call(Some(Duration::from_secs(300)))
            .max_idle_connections_per_host(64)
            .build();
        Ok(Blob {
            base: base.to_string(),
            sas: sas.to_string(),
            agent: ureq::Agent::new_with_config(config),
            retries: AtomicU64::new(0),
        })
    }

    /// The blob's URL with `query` and the SAS token.
    fn url(&self, query: &str) -> String {
        let sep = if query.is_empty() || self.sas.is_empty() { "" } else { "&" };
        match (query.is_empty(), self.sas.is_empty()) {
            (true, true) => self.base.clone(),
            _ => format!("{}?{query}{sep}{}", self.base, self.sas),
        }
    }

    /// An error about `what`, naming the blob without its token.
    fn error(&self, what: &'static str, problem: String) -> Error {
        let problem = if self.sas.is_empty() { problem } else { problem.replace(&self.sas, "<SAS>") };
        Error::io(Path::new(&self.base), what, Space::File, 0, std::io::Error::other(problem))
    }

    /// Runs `request` until it gets an answer that is not "busy" or a failed connection, with
    /// exponential backoff.
    fn call(
        &self,
        what: &'static str,
        request: impl Fn() -> std::result::Result<ureq::http::Response<ureq::Body>, ureq::Error>,
    ) -> Result<ureq::http::Response<ureq::Body>> {
        let mut delay = Duration::from_millis(100);
        for attempt in 1..=TRIES {
            let last = attempt == TRIES;
            match request() {
                Ok(r) if matches!(r.status().as_u16(), 408 | 429 | 500 | 502 | 503 | 504) && !last => {}
                Ok(r) => return Ok(r),
                Err(ureq::Error::Io(_) | ureq::Error::Timeout(_) | ureq::Error::ConnectionFailed) if !last => {}
                Err(e) => return Err(self.error(what, e.to_string())),
            }
            self.retries.fetch_add(1, Ordering::Relaxed);
            std::thread::sleep(delay);
            delay = (delay * 2).min(Duration::from_secs(8));
        }
        Err(self.error(what, format!("no answer after {TRIES} tries")))
    }

    /// Fails unless `r` succeeded, naming the service's error code.
    fn expect(
        &self,
        what: &'static str,
        r: ureq::http::Response<ureq::Body>,
        ok: &[u16],
    ) -> Result<ureq::http::Response<ureq::Body>> {
        let status = r.status().as_u16();
        if ok.contains(&status) {
            return Ok(r);
        }
        let code = r.headers().get("x-ms-error-code").and_then(|v| v.to_str().ok()).unwrap_or("").to_string();
        Err(self.error(what, format!("HTTP {status} {code}").trim().to_string()))
    }

    /// Makes sure the blob is a page blob of `size` bytes ready for this plan, creating it when
    /// absent; returns the page ranges it already holds from an interrupted upload of the same
    /// plan (none otherwise).
    fn prepare(&self, size: u64, state: &UploadState, state_path: &Path, replace: bool) -> Result<Vec<(u64, u64)>> {
        let r = self.call("read the properties of", || {
            self.agent.head(self.url("")).header("x-ms-version", API_VERSION).call()
        })?;
        if r.status().as_u16() == 404 {
            self.create(size)?;
            return Ok(Vec::new());
        }
        let r = self.expect("read the properties of", r, &[200])?;
        let kind = r.headers().get("x-ms-blob-type").and_then(|v| v.to_str().ok()).unwrap_or("").to_string();
        let length =
            r.headers().get("content-length").and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<u64>().ok());
        let ours = read_state(state_path).is_some_and(|s| s == *state) && kind == "PageBlob" && length == Some(size);
        if ours {
            return self.page_ranges();
        }
        if !replace {
            return Err(Error::Refused {
                file: PathBuf::from(&self.base),
                problem: format!(
                    "exists ({kind}, {} bytes) and holds no interrupted upload of this image: nothing was sent",
                    length.map_or("?".to_string(), |l| l.to_string())
                ),
                remedy: crate::error::Remedy::Force,
            });
        }
        let r = self.call("delete", || self.agent.delete(self.url("")).header("x-ms-version", API_VERSION).call())?;
        self.expect("delete", r, &[202])?;
        self.create(size)?;
        Ok(Vec::new())
    }

    fn create(&self, size: u64) -> Result<()> {
        let r = self.call("create", || {
            self.agent
                .put(self.url(""))
                .header("x-ms-version", API_VERSION)
                .header("x-ms-blob-type", "PageBlob")
                .header("x-ms-blob-content-length", size.to_string())
                .send_empty()
        })?;
        self.expect("create", r, &[201])?;
        Ok(())
    }

    /// Writes `data` (whole pages) at `offset`.
    fn put_page(&self, offset: u64, data: &[u8]) -> Result<()> {
        let md5 = base64::engine::general_purpose::STANDARD.encode(md5::Md5::digest(data));
        let range = format!("bytes={}-{}", offset, offset + data.len() as u64 - 1);
        let r = self.call("write pages of", || {
            self.agent
                .put(self.url("comp=page"))
                .header("x-ms-version", API_VERSION)
                .header("x-ms-page-write", "update")
                .header("x-ms-range", &range)
                .header("content-md5", &md5)
                .send(data)
        })?;
        self.expect("write pages of", r, &[201])?;
        Ok(())
    }

    /// The page ranges the blob holds, sorted.
    fn page_ranges(&self) -> Result<Vec<(u64, u64)>> {
        let r = self.call("list the pages of", || {
            self.agent.get(self.url("comp=pagelist")).header("x-ms-version", API_VERSION).call()
        })?;
        let mut r = self.expect("list the pages of", r, &[200])?;
        let text = r
            .body_mut()
            .with_config()
            .limit(64 << 20)
            .read_to_string()
            .map_err(|e| self.error("list the pages of", e.to_string()))?;
        let doc = roxmltree::Document::parse(&text)
            .map_err(|e| self.error("list the pages of", format!("not a page list: {e}")))?;
        let mut out = Vec::new();
        for range in doc.descendants().filter(|n| n.has_tag_name("PageRange")) {
            let field = |name: &str| {
                range
                    .children()
                    .find(|c| c.has_tag_name(name))
                    .and_then(|c| c.text())
                    .and_then(|t| t.parse::<u64>().ok())
            };
            if let (Some(a), Some(z)) = (field("Start"), field("End")) {
                out.push((a, z + 1));
            }
        }
        out.sort_unstable();
        Ok(crate::vhd::device::merge_ranges(out))
    }

    /// Reads `len` bytes at `offset` of the blob.
    fn get_range(&self, offset: u64, len: u64) -> Result<Vec<u8>> {
        let range = format!("bytes={}-{}", offset, offset + len - 1);
        let r = self.call("read", || {
            self.agent.get(self.url("")).header("x-ms-version", API_VERSION).header("x-ms-range", &range).call()
        })?;
        let mut r = self.expect("read", r, &[200, 206])?;
        let mut out = Vec::with_capacity(len as usize);
        r.body_mut()
            .with_config()
            .limit(len)
            .reader()
            .read_to_end(&mut out)
            .map_err(|e| self.error("read", e.to_string()))?;
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_http_only_to_this_machine_and_the_token_stays_secret() {
        assert!(Blob::parse("http://127.0.0.1:10000/devstoreaccount1/c/b.vhd?sig=x").is_ok());
        assert!(Blob::parse("http://[::1]:10000/a/c/b.vhd").is_ok());
        assert!(Blob::parse("http://example.com/c/b.vhd?sig=x").is_err());
        assert!(Blob::parse("https://acct.blob.core.windows.net/c").is_err(), "a container is not a blob");
        let b = Blob::parse("https://acct.blob.core.windows.net/c/b.vhd?sv=1&sig=SECRET").unwrap();
        assert_eq!(b.url("comp=page"), "https://acct.blob.core.windows.net/c/b.vhd?comp=page&sv=1&sig=SECRET");
        let e = b.error("write", "failed at https://acct.blob.core.windows.net/c/b.vhd?sv=1&sig=SECRET".into());
        assert!(!e.to_string().contains("SECRET"), "{e}");
    }

    #[test]
    fn resumed_pages_must_be_wholly_present() {
        let present = [(0, 4096), (8192, 16384)];
        assert!(covered(&present, 0, 4096));
        assert!(!covered(&present, 0, 8192));
        assert!(covered(&present, 9000, 10000));
        assert!(!covered(&present, 16000, 17000));
    }
}
