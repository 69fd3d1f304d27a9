//! Synthetic but realistic policy sets for the benchmarks: many policies with a mix of label selectors
//! (which resolve to pod address sets), CIDRs, port ranges, named ports, protocols and actions, and the
//! packets to classify against them.

// Syscalls live in `calxdp_dataplane::sys`, behind safe wrappers.
#![deny(unsafe_code)]

pub mod churn;
pub mod curves;
pub mod e2e;
pub mod soak;
pub mod synth;
