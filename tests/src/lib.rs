//! Shared helpers for the integration tests in `tests/tests/`.

use std::path::PathBuf;

/// The shared parity cases, beside the checkout (`../shared/parity/cases`), or where `CALXDP_SHARED` points.
pub fn shared_cases() -> PathBuf {
    let shared = std::env::var_os("CALXDP_SHARED")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../shared"));
    shared.join("parity/cases")
}

/// This project's own scenarios.
pub fn own_scenarios() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("scenarios")
}
pub mod gen;
