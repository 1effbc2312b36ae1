//! Offline registry editing in VHD images and hive files (see `vhdkit::cli::reg`).

fn main() -> std::process::ExitCode {
    vhdkit::cli::reg::main()
}
