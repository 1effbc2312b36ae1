//! Layer 6 (input half): argument parsing and the command runners behind the thin binaries in
//! src/bin/.

pub mod args;
pub mod compact;
pub mod inspect;
pub mod reg;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};

use serde::Serialize;

use crate::error::{Error, Remedy, Result};

/// What a command prints: a serde report, and how to render it as tables.
pub fn emit<T: Serialize>(json: bool, report: &T, render: impl Fn(&T) -> String) -> Result<()> {
    write_output(|w| {
        if json {
            serde_json::to_writer_pretty(&mut *w, report)?;
            writeln!(w)
        } else {
            w.write_all(render(report).as_bytes())
        }
    })
}

/// Runs `f` on buffered standard output. A closed pipe (`| head`) ends the output quietly.
pub fn write_output(f: impl FnOnce(&mut dyn Write) -> std::io::Result<()>) -> Result<()> {
    let mut out = std::io::BufWriter::with_capacity(1 << 16, std::io::stdout().lock());
    match f(&mut out).and_then(|()| out.flush()) {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => {
            Err(crate::Error::io(std::path::Path::new("<stdout>"), "write", crate::Space::File, 0, e))
        }
        _ => Ok(()),
    }
}

/// What the user can do about an error, in the command line's words.
fn hint(tool: &str, e: &Error) -> Option<&'static str> {
    match e {
        Error::NotADisk { .. } if tool == "vhdcompact" => Some(" (--input-format raw reads it as a raw disk anyway)"),
        Error::InUse { .. } => Some(" (--wait waits for it)"),
        Error::NotADisk { .. } => Some(" (--format raw reads it as a raw disk anyway)"),
        Error::OutputExists { .. } => Some(" (--force replaces it)"),
        Error::UntrustedVolume { .. } => Some(" (--force writes anyway)"),
        Error::Refused { remedy: Remedy::Force, .. } => Some(" (--force goes on anyway)"),
        Error::Refused { remedy: Remedy::Merge, .. } => Some(" (--merge writes a standalone image of the chain)"),
        Error::Refused { remedy: Remedy::ChoosePartition, .. } => Some(" (--partition N chooses one)"),
        Error::JournalPending { .. } => Some(" (vhdreg IMAGE recover rolls it back)"),
        _ => None,
    }
}

/// Turns a command's outcome into the process exit code: 0 success, 1 for an error (printed
/// as one line on stderr, prefixed with the tool's name) or for problems the command found.
pub fn finish(tool: &str, outcome: Result<bool>) -> ExitCode {
    match outcome {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(e) => {
            eprintln!("{tool}: {e}{}", hint(tool, &e).unwrap_or(""));
            ExitCode::from(1)
        }
    }
}

/// Temporary outputs to remove when the process is interrupted.
static TEMP_OUTPUTS: Mutex<Vec<PathBuf>> = Mutex::new(Vec::new());
/// Set while an in-place write that must not be cut short runs.
static DEFERRING: AtomicBool = AtomicBool::new(false);
/// Set when a signal arrived while deferring.
static INTERRUPTED: AtomicBool = AtomicBool::new(false);

/// Stops the process on SIGINT, SIGTERM or SIGHUP without leaving a temporary output behind:
/// registered temporary files are removed first. A signal during a deferred section (a short
/// journaled write) lets the section finish; it stops the process at the start of the next
/// one, or the command simply ends.
pub fn handle_signals(tool: &'static str) {
    let _ = ctrlc::set_handler(move || {
        if DEFERRING.load(Ordering::SeqCst) {
            INTERRUPTED.store(true, Ordering::SeqCst);
            return;
        }
        stop(tool);
    });
}

fn stop(tool: &str) -> ! {
    let temps = TEMP_OUTPUTS.lock().map(|t| t.clone()).unwrap_or_default();
    for t in &temps {
        if t.is_dir() {
            let _ = std::fs::remove_dir_all(t);
        } else {
            let _ = std::fs::remove_file(t);
        }
    }
    eprintln!("{tool}: interrupted; no partial output left behind");
    std::process::exit(130)
}

/// Registers a temporary output for removal on interruption (until it is committed).
pub fn track_temp(path: &Path) {
    if let Ok(mut t) = TEMP_OUTPUTS.lock() {
        t.push(path.to_path_buf());
    }
}

/// Runs `f` (a short write that is best not cut short) with interruption deferred: a signal
/// that arrives meanwhile lets `f` finish and stops the process before the next such section.
pub fn deferring_signals<T>(tool: &'static str, f: impl FnOnce() -> T) -> T {
    DEFERRING.store(true, Ordering::SeqCst);
    if INTERRUPTED.load(Ordering::SeqCst) {
        stop(tool);
    }
    let out = f();
    DEFERRING.store(false, Ordering::SeqCst);
    out
}

/// Says which temporary files of killed runs were removed before a new output was made.
pub fn report_stale(tool: &str, removed: &[PathBuf]) {
    for r in removed {
        eprintln!("{tool}: removed {}, left by an interrupted run", r.display());
    }
}
