//! Layer 6 (input half): argument parsing and the command runners behind the thin binaries in
//! src/bin/.

pub mod args;
pub mod compact;
pub mod disk;
pub mod inspect;
pub mod reg;

use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::{Mutex, PoisonError};

use serde::Serialize;

use crate::error::{Error, Remedy, Result};

/// What a command prints: a serde report, and how to render it as tables.
pub fn emit<T: Serialize>(json: bool, report: &T, render: impl Fn(&T) -> String) -> Result<()> {
    write_output(|w| {
        if json {
            serde_json::to_writer_pretty(&mut *w, &crate::report::versioned(report))?;
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

/// Progress on stderr when it is a terminal (and not `--quiet`): a spinner while the image is
/// indexed and planned, then a bar of the bytes to write with its phase, rate and time left.
pub struct Progress {
    pub bar: indicatif::ProgressBar,
}

impl Progress {
    /// Shown unless `quiet` or stderr is not a terminal.
    pub fn new(quiet: bool) -> Self {
        if quiet || !std::io::stderr().is_terminal() {
            return Progress { bar: indicatif::ProgressBar::hidden() };
        }
        let bar = indicatif::ProgressBar::new_spinner().with_message("indexing the image");
        // Drawn at once: a quick phase must still show, not only after the first tick.
        bar.tick();
        bar.enable_steady_tick(std::time::Duration::from_millis(120));
        Progress { bar }
    }

    /// The phase `label` over `units` of work.
    pub fn phase(&self, label: &'static str, units: u64) {
        let template = "{msg:>14} {bar:40} {bytes}/{total_bytes} {bytes_per_sec} eta {eta}";
        if let Ok(style) = indicatif::ProgressStyle::with_template(template) {
            self.bar.set_style(style);
        }
        self.bar.set_message(label);
        self.bar.set_length(units);
        self.bar.set_position(0);
    }

    /// A phase of unknown length.
    pub fn spin(&self, label: &'static str) {
        self.bar.set_style(indicatif::ProgressStyle::default_spinner());
        self.bar.set_message(label);
    }

    /// What `tool` shows of a pass's event: stale temporaries it removed, the temporary output
    /// to remove on interruption, and the writing (as `label`) and verifying phases.
    pub fn event(&self, tool: &str, label: &'static str, e: crate::pass::Event<'_>) {
        match e {
            crate::pass::Event::RemovedStale(removed) => report_stale(tool, removed),
            crate::pass::Event::Writing { temp, units } => {
                if let Some(temp) = temp {
                    track_temp(temp);
                }
                self.phase(label, units);
            }
            crate::pass::Event::Written(done) => self.bar.set_position(done),
            crate::pass::Event::Verifying => self.spin("verifying"),
        }
    }
}

/// What to do about a parent found by its identity somewhere the child does not look.
const RELINK_HINT: &str = " (vhddisk set-parent CHILD PARENT points the child at it)";

/// What the user can do about an error, in the command line's words.
fn hint(tool: &str, e: &Error) -> Option<&'static str> {
    match e {
        Error::NotADisk { .. } if tool == "vhdcompact" => Some(" (--input-format raw reads it as a raw disk anyway)"),
        Error::NotADisk { .. } if tool == "vhddisk" => Some(" (a create's --from-format raw reads it as a raw disk)"),
        Error::InUse { .. } => Some(" (--wait waits for it)"),
        Error::KeyWithoutHive { .. } => Some(" (--hive PATH names any other hive)"),
        Error::NotADisk { .. } => Some(" (--format raw reads it as a raw disk anyway)"),
        Error::OutputExists { .. } => Some(" (--force replaces it)"),
        Error::UntrustedVolume { .. } => Some(" (--force writes anyway)"),
        Error::Refused { remedy: Remedy::Force, .. } => Some(" (--force goes on anyway)"),
        Error::Refused { remedy: Remedy::Merge, .. } => Some(" (--merge writes a standalone image of the chain)"),
        Error::Refused { remedy: Remedy::ChoosePartition, .. } => Some(" (--partition N chooses one)"),
        Error::JournalPending { .. } => Some(" (vhdreg IMAGE recover rolls it back)"),
        Error::ParentNotFound { search, .. } if !search.same_identity.is_empty() => Some(RELINK_HINT),
        _ => None,
    }
}

/// What `--generate` writes to standard output.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Generate {
    /// The man page (roff).
    Man,
    /// A bash completion script.
    CompleteBash,
    /// A zsh completion script.
    CompleteZsh,
    /// A fish completion script.
    CompleteFish,
    /// A PowerShell completion script.
    CompletePowershell,
}

/// The end of a tool's `--help`: its examples, then the exit codes every tool shares.
macro_rules! after_help {
    ($examples:literal) => {
        concat!(
            "Examples:\n",
            $examples,
            "\n\nExit codes: 0 success; 1 a problem found, a request refused or an error (one line on\n",
            "stderr naming the file, the structure and the offset); 2 a usage error; 130, 143 or 129\n",
            "stopped by SIGINT, SIGTERM or SIGHUP (128 + the signal's number)."
        )
    };
}
pub(crate) use after_help;

/// Writes what `--generate WHAT` asks for, when it is asked (before any other argument is
/// checked, so it works without an image); `None` otherwise.
pub fn generate_if_asked(mut cmd: clap::Command) -> Option<ExitCode> {
    // Arguments need not be UTF-8 (paths): only this option's are read as text.
    let args: Vec<String> = std::env::args_os().skip(1).map(|a| a.to_string_lossy().into_owned()).collect();
    let what = args.iter().enumerate().find_map(|(i, a)| match a.strip_prefix("--generate") {
        Some("") => args.get(i + 1).cloned(),
        Some(v) => v.strip_prefix('=').map(str::to_string),
        None => None,
    })?;
    let Ok(what) = <Generate as clap::ValueEnum>::from_str(&what, false) else {
        let name = cmd.get_name().to_string();
        eprintln!(
            "{name}: --generate takes man, complete-bash, complete-zsh, complete-fish or complete-powershell, not {what:?}"
        );
        return Some(ExitCode::from(2));
    };
    let name = cmd.get_name().to_string();
    // Only `--generate WHAT`: anything else would be silently ignored.
    if args.len() > 2 || (args.len() == 2 && args[0].contains('=')) {
        eprintln!("{name}: --generate takes no other argument (the man page covers every command)");
        return Some(ExitCode::from(2));
    }
    let mut out = std::io::stdout().lock();
    let shell = match what {
        Generate::Man => None,
        Generate::CompleteBash => Some(clap_complete::Shell::Bash),
        Generate::CompleteZsh => Some(clap_complete::Shell::Zsh),
        Generate::CompleteFish => Some(clap_complete::Shell::Fish),
        Generate::CompletePowershell => Some(clap_complete::Shell::PowerShell),
    };
    let written = match shell {
        None => man_page(cmd, &mut out),
        Some(shell) => {
            clap_complete::generate(shell, &mut cmd, &name, &mut out);
            Ok(())
        }
    };
    Some(match written.and_then(|()| out.flush()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("{name}: standard output: {e}");
            ExitCode::from(1)
        }
    })
}

/// `args` parsed by `cmd` (a tool's command line, its help adjusted) into `C`; a usage error
/// or `--help` ends the process as clap does.
pub fn parse<C: clap::FromArgMatches>(cmd: clap::Command, args: Vec<std::ffi::OsString>) -> C {
    C::from_arg_matches(&cmd.get_matches_from(args)).unwrap_or_else(|e| e.exit())
}

/// The tool's one man page: its options, then every command in full under COMMANDS (no page
/// of a command's own is installed to refer to), the examples as written and the exit codes.
fn man_page(mut cmd: clap::Command, out: &mut dyn Write) -> std::io::Result<()> {
    cmd.build();
    let man = clap_mangen::Man::new(cmd.clone());
    man.render_title(out)?;
    man.render_name_section(out)?;
    man.render_synopsis_section(out)?;
    man.render_description_section(out)?;
    man.render_options_section(out)?;
    let commands: Vec<&clap::Command> = cmd.get_subcommands().filter(|s| s.get_name() != "help").collect();
    if !commands.is_empty() {
        writeln!(out, ".SH COMMANDS")?;
    }
    for sub in commands {
        let mut part = Vec::new();
        let man = clap_mangen::Man::new(sub.clone());
        man.render_synopsis_section(&mut part)?;
        man.render_description_section(&mut part)?;
        man.render_options_section(&mut part)?;
        let title = sub.get_bin_name().unwrap_or(sub.get_name()).to_string();
        for line in String::from_utf8_lossy(&part).lines() {
            match line {
                ".SH SYNOPSIS" => writeln!(out, ".SS \"{title}\"")?,
                ".SH DESCRIPTION" => writeln!(out, ".PP")?,
                l if l.starts_with(".SH ") => writeln!(out, ".PP\n{}:", roff_text(&l[4..].to_lowercase()))?,
                l => writeln!(out, "{l}")?,
            }
        }
    }
    if let Some(extra) = cmd.get_after_help() {
        writeln!(out, ".SH \"EXAMPLES AND EXIT STATUS\"\n.nf")?;
        for line in extra.to_string().lines() {
            writeln!(out, "{}", roff_text(line))?;
        }
        writeln!(out, ".fi")?;
    }
    if let Some(version) = cmd.get_version() {
        writeln!(out, ".SH VERSION\nv{}", roff_text(version))?;
    }
    Ok(())
}

/// `text` as a line of roff: backslashes escaped, and a leading `.` or `'` kept as text.
fn roff_text(text: &str) -> String {
    let escaped = text.replace('\\', "\\e");
    match escaped.starts_with(['.', '\'']) {
        true => format!("\\&{escaped}"),
        false => escaped,
    }
}

/// Turns a command's outcome into the process exit code: 0 success, 1 for an error (printed
/// as one line on stderr, prefixed with the tool's name) or for problems the command found, 2
/// for a usage error (as clap's own).
pub fn finish(tool: &str, outcome: Result<bool>) -> ExitCode {
    match outcome {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(e) => {
            eprintln!("{tool}: {e}{}", hint(tool, &e).unwrap_or(""));
            ExitCode::from(if matches!(e, Error::Usage(_) | Error::KeyWithoutHive { .. }) { 2 } else { 1 })
        }
    }
}

/// Temporary outputs to remove when the process is interrupted.
static TEMP_OUTPUTS: Mutex<Vec<PathBuf>> = Mutex::new(Vec::new());
/// Held while an in-place write that must not be cut short runs: a signal waits for it.
static SECTION: Mutex<()> = Mutex::new(());

/// Stops the process on SIGINT, SIGTERM or SIGHUP without leaving a temporary output behind:
/// registered temporary files are removed first, and the exit code is 128 + the signal's
/// number, as a shell reports a process the signal ended. A signal during a deferred section
/// (a short journaled write) waits for the section to finish, then stops the process.
pub fn handle_signals(tool: &'static str) {
    on_interrupt(move |signal| {
        let _section = SECTION.lock().unwrap_or_else(PoisonError::into_inner);
        stop(tool, signal);
    });
}

/// Calls `f` with the signal's number on SIGINT, SIGTERM or SIGHUP, from a thread that waits
/// for them.
#[cfg(unix)]
fn on_interrupt(f: impl Fn(i32) + Send + 'static) {
    use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
    if let Ok(mut signals) = signal_hook::iterator::Signals::new([SIGINT, SIGTERM, SIGHUP]) {
        std::thread::spawn(move || signals.forever().for_each(f));
    }
}

/// Calls `f` on Ctrl-C, as SIGINT.
#[cfg(windows)]
fn on_interrupt(f: impl Fn(i32) + Send + 'static) {
    let _ = ctrlc::set_handler(move || f(2));
}

fn stop(tool: &str, signal: i32) -> ! {
    let temps = TEMP_OUTPUTS.lock().map(|t| t.clone()).unwrap_or_default();
    for t in &temps {
        if t.is_dir() {
            let _ = std::fs::remove_dir_all(t);
        } else {
            let _ = std::fs::remove_file(t);
        }
    }
    // Not eprintln: after a SIGHUP stderr may be gone, and a panic here would leave the
    // process running with every later signal swallowed.
    let _ = writeln!(std::io::stderr(), "{tool}: interrupted; no partial output left behind");
    std::process::exit(128 + signal)
}

/// Registers a temporary output for removal on interruption (until it is committed).
pub fn track_temp(path: &Path) {
    if let Ok(mut t) = TEMP_OUTPUTS.lock() {
        t.push(path.to_path_buf());
    }
}

/// Runs `f` (a short write that is best not cut short) with interruption deferred: a signal
/// that arrives meanwhile stops the process once `f` has finished.
pub fn deferring_signals<T>(f: impl FnOnce() -> T) -> T {
    let _section = SECTION.lock().unwrap_or_else(PoisonError::into_inner);
    f()
}

/// Says which temporary files of killed runs were removed before a new output was made.
pub fn report_stale(tool: &str, removed: &[PathBuf]) {
    for r in removed {
        eprintln!("{tool}: removed {}, left by an interrupted run", r.display());
    }
}

#[cfg(test)]
mod help_tests {
    use clap::CommandFactory;

    /// Names of the arguments of `cmd` and its subcommands that have no help text.
    fn undescribed(cmd: &clap::Command, path: &str, out: &mut Vec<String>) {
        for arg in cmd.get_arguments() {
            let builtin = matches!(arg.get_id().as_str(), "help" | "version");
            if !builtin && arg.get_help().is_none() && arg.get_long_help().is_none() {
                out.push(format!("{path} {}", arg.get_id()));
            }
        }
        for sub in cmd.get_subcommands() {
            if sub.get_about().is_none() {
                out.push(format!("{path} {} (the command)", sub.get_name()));
            }
            undescribed(sub, &format!("{path} {}", sub.get_name()), out);
        }
    }

    #[test]
    fn every_command_and_argument_is_described() {
        let mut missing = Vec::new();
        for cmd in [super::compact::Cli::command(), super::inspect::Cli::command(), super::reg::Cli::command()] {
            cmd.clone().debug_assert();
            assert!(cmd.get_about().is_some(), "{} has no about text", cmd.get_name());
            undescribed(&cmd, cmd.get_name(), &mut missing);
        }
        assert!(missing.is_empty(), "without help text: {missing:?}");
    }
}
