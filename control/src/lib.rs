//! The calxdp node agent: command line, policy sources, the control thread, and the parity runner.

// Syscalls live in `calxdp_dataplane::sys`, behind safe wrappers.
#![deny(unsafe_code)]

pub mod admin;
pub mod check;
pub mod demo;
pub mod felix;
pub mod live;
pub mod netlink;
pub mod offline;
pub mod parity;
pub mod publisher;
pub mod render;
pub mod replay;
pub mod run;
pub mod wire_hosts;
