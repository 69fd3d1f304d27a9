//! Large tables on transparent huge pages. The flow table's index and entries are read at random, one
//! line per packet: on 4 KiB pages nearly every read also misses the TLB, and the page walk costs as much
//! as the cache miss. Backed by 2 MiB pages, the TLB covers the whole table.

/// `len` copies of `value` in memory the kernel is asked (madvise `MADV_HUGEPAGE`) to back with huge pages
/// before anything touches it. Only advice: where the kernel has none to give (THP `never`, fragmented
/// memory) the vector is an ordinary one.
pub fn huge_vec<T: Clone>(len: usize, value: T) -> Vec<T> {
    const HUGE: usize = 2 << 20;
    let mut v: Vec<T> = Vec::with_capacity(len);
    let bytes = len.saturating_mul(std::mem::size_of::<T>());
    // A fresh allocation this large comes from mmap and is untouched: advised now, its first faults can
    // take whole huge pages. Only the 2 MiB-aligned middle can be huge.
    let start = (v.as_ptr() as usize).next_multiple_of(HUGE);
    let end = (v.as_ptr() as usize + bytes) & !(HUGE - 1);
    if bytes >= 2 * HUGE && end > start {
        // SAFETY: [start, end) lies inside the vector's own allocation; MADV_HUGEPAGE changes how the kernel
        // backs those pages, never their contents, and the memory is not yet initialised anyway.
        let _ = unsafe { libc::madvise(start as *mut libc::c_void, end - start, libc::MADV_HUGEPAGE) };
    }
    v.resize(len, value);
    v
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_huge_vector_holds_what_an_ordinary_one_would() {
        let v = super::huge_vec(3 << 20, 7u32);
        assert_eq!(v.len(), 3 << 20);
        assert!(v.iter().all(|&x| x == 7));
        assert_eq!(super::huge_vec(5, 1u8), vec![1u8; 5]);
    }
}
