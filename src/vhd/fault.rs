//! Fault injection for crash-safety tests.
//!
//! When the environment variable `VHDKIT_FAULT_AFTER_WRITES=N` is set, the process aborts just
//! before its (N+1)-th write to any image file, as a power cut or `kill -9` would stop it. Tests
//! loop N over every write an operation makes and check that the image reads back either as
//! before or as after. Unset (the normal case) it costs one relaxed atomic load per write.

use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};

/// The environment variable that arms the hook.
pub const FAULT_ENV: &str = "VHDKIT_FAULT_AFTER_WRITES";

static LIMIT: OnceLock<Option<u64>> = OnceLock::new();
static WRITES: AtomicU64 = AtomicU64::new(0);

/// Called before every write; aborts the process when the armed write count is reached.
pub fn before_write() {
    let limit = LIMIT.get_or_init(|| std::env::var(FAULT_ENV).ok().and_then(|v| v.parse().ok()));
    if let Some(limit) = *limit
        && WRITES.fetch_add(1, Ordering::SeqCst) >= limit {
            eprintln!("{FAULT_ENV}: aborting before write {}", limit + 1);
            std::process::abort();
        }
}
