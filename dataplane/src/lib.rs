//! The calxdp dataplane: frames in, verdicts and frames out.

pub mod arp;
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
pub mod tables;
pub mod walk_cache;
pub mod wire;
pub mod worker;
pub mod xdp;
pub mod xsk;
