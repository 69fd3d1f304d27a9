//! The calxdp dataplane: frames in, verdicts and frames out.

pub mod flow;
pub mod tables;
