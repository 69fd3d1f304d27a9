//! Kernel interfaces by raw syscall: the one module of calxdp allowed `unsafe` code. AF_XDP sockets (rings
//! shared with the kernel, the UMEM, the socket options) and the TAP device to the host stack. Every
//! `unsafe` block carries a `// SAFETY:` comment. Test and tooling helpers that need raw syscalls (network
//! namespaces, AF_PACKET sockets) live here too, so `unsafe` stays in one place.

pub mod handoff;
pub mod netns;
pub mod packet;
pub mod ring;
pub mod socket;
pub mod tap;
