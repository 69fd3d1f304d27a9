//! Calico policy for calxdp: resources as users write them, the selector language, the node model,
//! and the reference evaluator that every faster level is checked against.
#![forbid(unsafe_code)]

pub mod compile;
pub mod conntrack;
pub mod felix;
pub mod ids;
pub mod limit;
pub mod net;
pub mod node;
pub mod packet;
pub mod reference;
pub mod reject;
pub mod resolve;
pub mod resource;
pub mod selector;
pub mod service;
pub mod verdict;
pub mod walk_end;
pub mod yaml;
