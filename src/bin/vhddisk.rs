//! The life of a VHD or VHDX container: create, expand, shrink, set-parent, commit (see
//! `vhdkit::cli::disk`).

fn main() -> std::process::ExitCode {
    vhdkit::cli::disk::main()
}
