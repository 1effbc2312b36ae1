//! Layer 6 (input half): argument parsing and the command runners behind the thin binaries in
//! src/bin/.

pub mod compact;
pub mod inspect;
pub mod reg;

use std::io::Write;
use std::process::ExitCode;

use serde::Serialize;

use crate::error::Result;

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

/// Turns a command's outcome into the process exit code: 0 success, 1 for an error (printed
/// as one line on stderr, prefixed with the tool's name) or for problems the command found.
pub fn finish(tool: &str, outcome: Result<bool>) -> ExitCode {
    match outcome {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(e) => {
            eprintln!("{tool}: {e}");
            ExitCode::from(1)
        }
    }
}
