//! The sizes every stage of a worker shares, kept apart from the worker so the stages it calls (the
//! pipeline, the held frames of the next hop) can size their buffers without depending on it.

/// Frames per batch.
pub const BATCH: usize = 64;
/// Largest frame the worker handles (a standard MTU plus Ethernet and VLAN headers).
pub const FRAME_MAX: usize = crate::sys::handoff::SLOT_BYTES;
