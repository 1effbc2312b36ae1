//! Read-only inspection of VHD images (see `vhdkit::cli::inspect`).

fn main() -> std::process::ExitCode {
    vhdkit::cli::inspect::main()
}
