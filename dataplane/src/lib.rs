//! The calxdp dataplane: frames in, verdicts and frames out.

#![deny(unsafe_code)]

pub mod arp;
pub mod batch;
pub mod decision;
pub mod flow;
pub mod frames;
pub mod io;
pub mod log;
pub mod ndp;
pub mod nexthop;
pub mod owner;
pub mod path;
pub mod pipeline;
pub mod port_drops;
pub mod ports;
pub mod reassembly;
pub mod reject;
pub mod routes;
pub mod services;
// std's atomics and cell, or loom's under `--cfg loom` (the model-checked structures use these).
pub(crate) mod sync;
// The one module allowed `unsafe`: syscalls and memory shared with the kernel, behind safe wrappers.
#[allow(unsafe_code)]
pub mod sys;
pub mod tables;
pub mod walk_cache;
pub mod wire;
pub mod worker;
pub mod xdp;
