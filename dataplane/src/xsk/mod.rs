//! AF_XDP sockets: the one module of calxdp allowed `unsafe` code (rings shared with the kernel, UMEM,
//! the socket syscalls). Every `unsafe` block carries a `// SAFETY:` comment.
//!
//! So far: the ring logic, tested on ordinary memory. The mapping of a real socket's rings and UMEM comes
//! with the live node.

pub mod ring;
