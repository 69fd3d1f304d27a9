//! AF_XDP rings: single-producer / single-consumer queues of descriptors shared with the kernel
//! (Documentation/networking/af_xdp.rst). Each ring is a power-of-two array of entries plus two 32-bit
//! cursors that only ever increase (wrapping): the producer's and the consumer's.
//!
//! The side this process plays differs per ring: we *produce* into FILL and TX, and *consume* from RX and
//! COMPLETION. Both sides keep a cached copy of the other side's cursor and refresh it only when the cache
//! says the ring looks full (producer) or empty (consumer), so most batches touch no shared cache line but
//! their own. Batches are exposed as two slices (the part before the wrap and the part after).
//!
//! The memory is abstracted by [`RingMemory`]: the live socket maps it from the kernel (an `unsafe`
//! constructor that lives with the socket code), and [`OwnedRing`] backs it with ordinary memory so the
//! ring logic runs in plain unit tests, and under loom (`--cfg loom`, the atomics and cells of
//! `crate::sync`) in model-checked ones.

use std::sync::Arc;

use crate::sync::{AtomicU32, Ordering, UnsafeCell};

/// The shared parts of one ring.
pub trait RingMemory<T: Copy> {
    fn producer(&self) -> &AtomicU32;
    fn consumer(&self) -> &AtomicU32;
    /// The entries, shared with the other side: written only by the producer, between its cursor
    /// reservation and its release store.
    fn entries(&self) -> &[UnsafeCell<T>];
}

/// A ring in ordinary memory: the "kernel" side is played by the test through the same cursors.
#[derive(Debug)]
pub struct OwnedRing<T> {
    producer: AtomicU32,
    consumer: AtomicU32,
    entries: Box<[UnsafeCell<T>]>,
}

impl<T: Copy + Default> OwnedRing<T> {
    /// A ring of `size` entries (a power of two, as the kernel requires).
    pub fn new(size: u32) -> OwnedRing<T> {
        assert!(size.is_power_of_two(), "ring sizes are powers of two");
        OwnedRing {
            producer: AtomicU32::new(0),
            consumer: AtomicU32::new(0),
            entries: (0..size).map(|_| UnsafeCell::new(T::default())).collect(),
        }
    }
}

impl<T: Copy> RingMemory<T> for OwnedRing<T> {
    fn producer(&self) -> &AtomicU32 {
        &self.producer
    }
    fn consumer(&self) -> &AtomicU32 {
        &self.consumer
    }
    fn entries(&self) -> &[UnsafeCell<T>] {
        &self.entries
    }
}

/// A ring in ordinary memory shared by exactly one producer and one consumer on two threads (the
/// workers' handoff rings). Only [`spsc`] makes one, so there is never a second producer or consumer.
#[derive(Debug)]
pub struct SpscRing<T>(Arc<OwnedRing<T>>);

impl<T: Copy> RingMemory<T> for SpscRing<T> {
    fn producer(&self) -> &AtomicU32 {
        self.0.producer()
    }
    fn consumer(&self) -> &AtomicU32 {
        self.0.consumer()
    }
    fn entries(&self) -> &[UnsafeCell<T>] {
        self.0.entries()
    }
}

// SAFETY: the cells of an `OwnedRing` are only reached through one `Producer` and one `Consumer` (what
// `spsc` hands out), under the cursor protocol: a slot is written only by the producer between the
// consumer's cursor and its own, and read only by the consumer after the producer's release store.
unsafe impl<T: Send> Sync for OwnedRing<T> {}

/// The two ends of a new in-memory ring of `size` entries, for two threads.
pub fn spsc<T: Copy + Default>(size: u32) -> (Producer<SpscRing<T>>, Consumer<SpscRing<T>>) {
    spsc_from(size, 0)
}

/// [`spsc`] with both cursors starting at `start` instead of 0 (tests start them near `u32::MAX` to cross
/// the cursors' wrap, which takes four billion entries from 0).
fn spsc_from<T: Copy + Default>(size: u32, start: u32) -> (Producer<SpscRing<T>>, Consumer<SpscRing<T>>) {
    let ring = OwnedRing::new(size);
    ring.producer.store(start, Ordering::Relaxed);
    ring.consumer.store(start, Ordering::Relaxed);
    let ring = Arc::new(ring);
    (Producer::new::<T>(SpscRing(ring.clone())), Consumer::new::<T>(SpscRing(ring)))
}

/// The producing end of a ring (FILL, TX).
#[derive(Debug)]
pub struct Producer<M> {
    mem: M,
    mask: u32,
    /// Our cursor: entries up to here are written (released when `submit` stores it).
    head: u32,
    /// The consumer's cursor as last read.
    cached_consumer: u32,
}

/// The consuming end of a ring (RX, COMPLETION).
#[derive(Debug)]
pub struct Consumer<M> {
    mem: M,
    mask: u32,
    /// Our cursor: entries before it are consumed (released when `release` stores it).
    tail: u32,
    /// The producer's cursor as last read.
    cached_producer: u32,
}

impl<M> Producer<M> {
    pub fn new<T: Copy>(mem: M) -> Producer<M>
    where
        M: RingMemory<T>,
    {
        let size = mem.entries().len() as u32;
        let head = mem.producer().load(Ordering::Relaxed);
        let cached_consumer = mem.consumer().load(Ordering::Acquire);
        Producer { mem, mask: size - 1, head, cached_consumer }
    }

    /// Writes as many of `items` as there is room for; returns how many. They become visible to the
    /// consumer at the next [`Producer::submit`].
    pub fn push<T: Copy>(&mut self, items: &[T]) -> usize
    where
        M: RingMemory<T>,
    {
        let size = self.mask + 1;
        let mut free = size - self.head.wrapping_sub(self.cached_consumer);
        if (free as usize) < items.len() {
            // Only now read the other side's cursor: most batches find room in the cache.
            self.cached_consumer = self.mem.consumer().load(Ordering::Acquire);
            free = size - self.head.wrapping_sub(self.cached_consumer);
        }
        let n = items.len().min(free as usize);
        let entries = self.mem.entries();
        for (i, item) in items[..n].iter().enumerate() {
            let slot = &entries[(self.head.wrapping_add(i as u32) & self.mask) as usize];
            // Writing through the cell: these slots are between the consumer's cursor and ours, which
            // the consumer does not read until our release store in `submit`.
            set(slot, *item);
        }
        self.head = self.head.wrapping_add(n as u32);
        n
    }

    /// Publishes what [`Producer::push`] wrote (one release store for the whole batch).
    pub fn submit<T: Copy>(&mut self)
    where
        M: RingMemory<T>,
    {
        self.mem.producer().store(self.head, Ordering::Release);
    }

    /// Free entries, by the cached view.
    pub fn free_cached(&self) -> u32 {
        self.mask + 1 - self.head.wrapping_sub(self.cached_consumer)
    }

    /// Entries published but not yet taken by the consumer (reads the consumer's cursor).
    pub fn outstanding<T: Copy>(&mut self) -> u32
    where
        M: RingMemory<T>,
    {
        self.cached_consumer = self.mem.consumer().load(Ordering::Acquire);
        self.head.wrapping_sub(self.cached_consumer)
    }

    /// The ring's memory (for the socket's flag checks).
    pub fn memory(&self) -> &M {
        &self.mem
    }
}

impl<M> Consumer<M> {
    pub fn new<T: Copy>(mem: M) -> Consumer<M>
    where
        M: RingMemory<T>,
    {
        let size = mem.entries().len() as u32;
        let tail = mem.consumer().load(Ordering::Relaxed);
        let cached_producer = mem.producer().load(Ordering::Acquire);
        Consumer { mem, mask: size - 1, tail, cached_producer }
    }

    /// How many entries are ready, refreshing the producer's cursor only when the cache shows none.
    pub fn available<T: Copy>(&mut self) -> u32
    where
        M: RingMemory<T>,
    {
        if self.cached_producer == self.tail {
            self.cached_producer = self.mem.producer().load(Ordering::Acquire);
        }
        self.cached_producer.wrapping_sub(self.tail)
    }

    /// Copies up to `out.len()` ready entries into `out`; returns how many. They are handed back to the
    /// producer at the next [`Consumer::release`].
    pub fn pop<T: Copy>(&mut self, out: &mut [T]) -> usize
    where
        M: RingMemory<T>,
    {
        let n = (self.available::<T>() as usize).min(out.len());
        let entries = self.mem.entries();
        for (i, o) in out[..n].iter_mut().enumerate() {
            let slot = &entries[(self.tail.wrapping_add(i as u32) & self.mask) as usize];
            *o = get(slot);
        }
        self.tail = self.tail.wrapping_add(n as u32);
        n
    }

    /// Returns the consumed entries to the producer (one release store for the whole batch).
    pub fn release<T: Copy>(&mut self)
    where
        M: RingMemory<T>,
    {
        self.mem.consumer().store(self.tail, Ordering::Release);
    }
}

/// Reads an entry the producer has published (its release store happened before our acquire load).
fn get<T: Copy>(cell: &UnsafeCell<T>) -> T {
    // A plain copy through the cell's pointer; the cursors' acquire/release pairs order it against the
    // producer's write, so there is no data race on this slot.
    cell.with(read_entry)
}

fn set<T: Copy>(cell: &UnsafeCell<T>, value: T) {
    cell.with_mut(|ptr| write_entry(ptr, value))
}

// The two accessors below are the only places a ring entry is touched through a raw pointer. They are not
// `unsafe fn`s of their own: the pointer always comes from an `UnsafeCell` inside a ring whose cursors
// give the exclusive access the comments above describe.
#[allow(clippy::not_unsafe_ptr_arg_deref)]
fn read_entry<T: Copy>(ptr: *const T) -> T {
    // SAFETY: `ptr` comes from an `UnsafeCell<T>` of a live ring (valid, aligned); the producer wrote it
    // before its release store and will not write it again until our release store gives it back.
    unsafe { ptr.read() }
}

#[allow(clippy::not_unsafe_ptr_arg_deref)]
fn write_entry<T: Copy>(ptr: *mut T, value: T) {
    // SAFETY: `ptr` comes from an `UnsafeCell<T>` of a live ring (valid, aligned); the slot lies between
    // the consumer's cursor and ours, so the consumer does not read it until our release store.
    unsafe { ptr.write(value) }
}

/// A descriptor of the RX and TX rings (struct xdp_desc): a frame's address in the UMEM and its length.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[repr(C)]
pub struct XdpDesc {
    pub addr: u64,
    pub len: u32,
    pub options: u32,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fill_then_drain_across_the_wrap() {
        let (mut p, mut c) = spsc::<u64>(8);
        let mut out = [0u64; 8];
        for round in 0..5u64 {
            let batch: Vec<u64> = (0..6).map(|i| round * 100 + i).collect();
            assert_eq!(p.push(&batch), 6);
            assert_eq!(c.available::<u64>(), 0, "nothing visible before submit");
            p.submit::<u64>();
            assert_eq!(c.pop(&mut out[..4]), 4);
            assert_eq!(&out[..4], &batch[..4]);
            assert_eq!(c.pop(&mut out), 2);
            assert_eq!(&out[..2], &batch[4..]);
            c.release::<u64>();
        }
    }

    #[test]
    fn a_full_ring_takes_only_what_fits_until_released() {
        let (mut p, mut c) = spsc::<u64>(4);
        assert_eq!(p.push(&[1, 2, 3, 4, 5, 6]), 4);
        p.submit::<u64>();
        assert_eq!(p.push(&[7]), 0, "full");
        let mut out = [0u64; 2];
        assert_eq!(c.pop(&mut out), 2);
        assert_eq!(p.push(&[7]), 0, "popped but not released: still full");
        c.release::<u64>();
        assert_eq!(p.push(&[7, 8, 9]), 2);
    }

    #[test]
    fn two_threads_pass_a_million_descriptors_in_order() {
        let (mut p, mut c) = spsc::<XdpDesc>(64);
        let total = 1_000_000u64;
        let reader = std::thread::spawn(move || {
            let mut out = [XdpDesc::default(); 16];
            let mut next = 0u64;
            while next < total {
                let n = c.pop(&mut out);
                for d in &out[..n] {
                    assert_eq!(d.addr, next * 4096);
                    assert_eq!(d.len as u64, next % 1500);
                    next += 1;
                }
                c.release::<XdpDesc>();
            }
        });
        let mut sent = 0u64;
        while sent < total {
            let batch: Vec<XdpDesc> = (sent..(sent + 16).min(total))
                .map(|i| XdpDesc { addr: i * 4096, len: (i % 1500) as u32, options: 0 })
                .collect();
            let n = p.push(&batch);
            p.submit::<XdpDesc>();
            sent += n as u64;
            if n == 0 {
                std::thread::yield_now();
            }
        }
        reader.join().unwrap();
    }
}

/// Model checks (`RUSTFLAGS="--cfg loom" cargo test --release -p calxdp-dataplane --lib loom`): loom runs the
/// producer and the consumer under every interleaving and every reordering their orderings allow, and
/// fails if a ring entry is read while its write is not ordered before the read (a data race on the
/// `UnsafeCell`), besides the assertions below.
#[cfg(all(test, loom))]
mod loom_models {
    use super::*;

    /// A descriptor whose fields all derive from its sequence number, so a torn copy shows.
    fn desc(i: u64) -> XdpDesc {
        XdpDesc { addr: i * 4096, len: i as u32, options: !(i as u32) }
    }

    /// The producer sends `total` descriptors in batches of `batch` through a ring of `size` entries whose
    /// cursors start at `start`; the consumer takes up to `batch` at a time. Every descriptor arrives
    /// once, whole and in order.
    fn pass(size: u32, start: u32, total: u64, batch: usize) {
        loom::model(move || {
            let (mut p, mut c) = spsc_from::<XdpDesc>(size, start);
            let producer = loom::thread::spawn(move || {
                let mut sent = 0u64;
                while sent < total {
                    let items: Vec<XdpDesc> = (sent..total.min(sent + batch as u64)).map(desc).collect();
                    let n = p.push(&items);
                    if n == 0 {
                        // Full: wait for the consumer's release.
                        loom::thread::yield_now();
                        continue;
                    }
                    p.submit::<XdpDesc>();
                    sent += n as u64;
                }
            });
            let mut out = vec![XdpDesc::default(); batch];
            let mut next = 0u64;
            while next < total {
                let n = c.pop(&mut out);
                if n == 0 {
                    // Empty: wait for the producer's submit.
                    loom::thread::yield_now();
                    continue;
                }
                for d in &out[..n] {
                    assert_eq!(*d, desc(next), "descriptor {next}");
                    next += 1;
                }
                c.release::<XdpDesc>();
            }
            producer.join().unwrap();
            assert_eq!(c.available::<XdpDesc>(), 0, "nothing beyond what was sent");
        });
    }

    /// Two entries, three descriptors one at a time: the ring fills, empties and wraps its slots.
    #[test]
    fn loom_ring_one_at_a_time_through_full_empty_and_the_wrap() {
        pass(2, 0, 3, 1);
    }

    /// Batches of two through a ring of two, the cursors crossing `u32::MAX` on the way.
    #[test]
    fn loom_ring_batches_across_the_cursor_wrap() {
        pass(2, u32::MAX - 1, 4, 2);
    }

    /// A ring of four, batches of three: a batch splits across the end of the entries.
    #[test]
    fn loom_ring_batches_split_across_the_end_of_the_entries() {
        pass(4, 0, 5, 3);
    }
}
