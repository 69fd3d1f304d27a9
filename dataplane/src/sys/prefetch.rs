//! A cache prefetch hint. The flow table's batched lookup asks for the lines its next lookups will read
//! so that the misses of a batch overlap instead of queueing one after another.

/// Asks the CPU to bring the cache line holding `value` into L1. A hint only: it neither faults nor changes
/// what any read returns, and it does nothing on targets without an instruction for it.
#[inline(always)]
pub fn prefetch<T>(value: &T) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: PREFETCHT0 reads nothing architecturally and cannot fault, whatever the address; SSE (which
    // it needs) is part of the x86_64 baseline. `value` is a live reference anyway.
    unsafe {
        std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>((value as *const T).cast())
    };
    #[cfg(not(target_arch = "x86_64"))]
    let _ = value;
}
