//! NTFS-aware compaction and conversion of VHD images (see `vhdkit::cli::compact`).

fn main() -> std::process::ExitCode {
    vhdkit::cli::compact::main()
}
