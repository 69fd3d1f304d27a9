//! The atomics and the cell that the lock-free structures (the SPSC rings of `sys::ring` and
//! `sys::handoff`, the neighbour table's seqlock in `arp`) are built on: std's in every ordinary build,
//! loom's under `RUSTFLAGS="--cfg loom"`, so that loom can model-check those structures under every
//! interleaving and every weak-memory reordering the C++ model allows. Nothing else changes between the
//! two builds.
//!
//! loom's `UnsafeCell` hands out its pointer only inside `with` / `with_mut` (so it can tell a read from a
//! write and check each against the happens-before order); [`UnsafeCell`] here is std's cell with that
//! same API and the same layout (`repr(transparent)`: the AF_XDP rings point one at kernel memory).

#[cfg(loom)]
pub use loom::cell::UnsafeCell;
#[cfg(loom)]
pub use loom::hint::spin_loop;
#[cfg(loom)]
pub use loom::sync::atomic::{fence, AtomicU32, AtomicU64, Ordering};

#[cfg(not(loom))]
pub use std::hint::spin_loop;
#[cfg(not(loom))]
pub use std::sync::atomic::{fence, AtomicU32, AtomicU64, Ordering};

/// std's `UnsafeCell` with loom's access API: the pointer is lent to a closure.
#[cfg(not(loom))]
#[derive(Debug)]
#[repr(transparent)]
pub struct UnsafeCell<T>(std::cell::UnsafeCell<T>);

#[cfg(not(loom))]
impl<T> UnsafeCell<T> {
    pub const fn new(value: T) -> UnsafeCell<T> {
        UnsafeCell(std::cell::UnsafeCell::new(value))
    }

    /// Lends the cell's pointer for reading.
    #[inline(always)]
    pub fn with<R>(&self, f: impl FnOnce(*const T) -> R) -> R {
        f(self.0.get())
    }

    /// Lends the cell's pointer for writing.
    #[inline(always)]
    pub fn with_mut<R>(&self, f: impl FnOnce(*mut T) -> R) -> R {
        f(self.0.get())
    }
}
