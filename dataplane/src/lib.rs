//! The calxdp dataplane: frames in, verdicts and frames out.
