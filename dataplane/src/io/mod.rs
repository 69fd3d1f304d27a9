//! Frame I/O backends. The pipeline is the same on all of them: in-memory batches (tests, parity),
//! pcap files (offline replay), and AF_XDP sockets (the live node).

pub mod pcap;
