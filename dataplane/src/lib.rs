//! The calxdp dataplane: frames in, verdicts and frames out.

pub mod tables;
