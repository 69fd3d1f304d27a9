//! Synthetic but realistic policy sets for the benchmarks: many policies with a mix of label selectors
//! (which resolve to pod address sets), CIDRs, port ranges, named ports, protocols and actions, and the
//! packets to classify against them.

// Syscalls live in `calxdp_dataplane::sys`, behind safe wrappers.
#![deny(unsafe_code)]

// Errors here are `String`s on purpose: the bench's harness (namespaces, generators, counters, the soak and
// churn drivers) has one caller, the bench binary, which prints the sentence and exits; no caller matches
// on a cause. The library's typed errors are turned into their messages where the harness calls it.

pub mod churn;
pub mod curves;
pub mod e2e;
pub mod soak;
pub mod synth;
