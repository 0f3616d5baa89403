//! The node's global allocator: cache-line-aligned blocks in pages of their own, everything
//! else to the system allocator.
//!
//! tokio allocates every task cell and every socket's I/O registration `align(128)` (on
//! x86_64). From glibc those come from the same arena as the sessions and connections made
//! on the same thread; when idle connections park, their tasks and registrations are freed
//! all at once and leave holes between the connection state that stays, which glibc can
//! neither reuse (nothing is allocated after the burst) nor return (no hole spans a page).
//! That is what kept the accept loop off the runtime's workers (BENCHMARKS.md). Here those
//! blocks live in 64 KiB chunks of one size class each, and a chunk goes back to the
//! operating system as soon as its last block is freed (but one empty chunk per class,
//! kept for reuse: at most a few hundred kB in all), so what parking frees is returned at
//! once wherever the task was spawned. A block costs a lock and a few pointer moves,
//! against glibc's `posix_memalign` slow path (≈ 690 instructions per call, callgrind).
//!
//! The one module with more than a single unsafe call: an allocator cannot be written
//! without raw pointers. Everything here is covered by the tests below (including a
//! property test of interleaved allocations), and the binary runs the whole integration
//! suite on it.
#![allow(unsafe_code)]

use std::alloc::{GlobalAlloc, Layout, System};
use std::ptr;
use std::sync::{Mutex, MutexGuard};

/// Chunk size and alignment: the chunk of a block is found by masking its address.
const CHUNK: usize = 64 * 1024;
/// Size classes are multiples of this, which is also every block's alignment.
const SLOT: usize = 128;
/// Larger blocks go to the system allocator.
const MAX_BLOCK: usize = 4096;
const CLASSES: usize = MAX_BLOCK / SLOT;
/// The chunk header takes the first slot.
const FIRST_BLOCK: usize = SLOT;

/// The allocator (`#[global_allocator]` in the `skein` binary).
pub struct AlignedPool {
    classes: [PaddedClass; CLASSES],
}

/// A class's lock on a cache line of its own: workers spawning different kinds of task
/// do not contend for one line.
#[repr(align(128))]
struct PaddedClass(Mutex<Class>);

/// One size class: chunks that have room, and at most one empty chunk kept for reuse so
/// a class that goes empty and back does not map and unmap a chunk each time.
struct Class {
    with_room: *mut Chunk,
    spare: *mut Chunk,
}

// SAFETY: the raw pointers are only followed under the class's mutex.
unsafe impl Send for Class {}

/// Header at the start of every chunk.
struct Chunk {
    /// Block size in bytes (constant for the chunk's life).
    block: usize,
    /// Blocks handed out and not freed.
    live: usize,
    /// Freed blocks, linked through their first word.
    free: *mut FreeBlock,
    /// Offset of the first block never handed out.
    fresh: usize,
    /// Links in the class's `with_room` list (null when not listed).
    prev: *mut Chunk,
    next: *mut Chunk,
    listed: bool,
}

struct FreeBlock {
    next: *mut FreeBlock,
}

const _: () = assert!(std::mem::size_of::<Chunk>() <= FIRST_BLOCK);

impl Default for AlignedPool {
    fn default() -> AlignedPool {
        AlignedPool::new()
    }
}

impl AlignedPool {
    pub const fn new() -> AlignedPool {
        AlignedPool {
            classes: [const {
                PaddedClass(Mutex::new(Class {
                    with_room: ptr::null_mut(),
                    spare: ptr::null_mut(),
                }))
            }; CLASSES],
        }
    }

    /// The size class of blocks of `layout`, or None for the system allocator.
    fn class_of(layout: Layout) -> Option<usize> {
        let pooled = layout.align() >= 64 && layout.align() <= SLOT && layout.size() <= MAX_BLOCK;
        pooled.then(|| layout.size().max(1).div_ceil(SLOT) - 1)
    }

    fn lock(&self, class: usize) -> MutexGuard<'_, Class> {
        self.classes[class]
            .0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
    }

    /// A block of class `class`; null when no chunk can be mapped.
    ///
    /// # Safety
    /// `class < CLASSES`.
    unsafe fn take(&self, class: usize) -> *mut u8 {
        let block = (class + 1) * SLOT;
        let mut c = self.lock(class);
        let chunk = if !c.with_room.is_null() {
            c.with_room
        } else {
            let chunk = if c.spare.is_null() {
                // SAFETY: block is a multiple of SLOT no larger than MAX_BLOCK.
                unsafe { map_chunk(block) }
            } else {
                std::mem::replace(&mut c.spare, ptr::null_mut())
            };
            if chunk.is_null() {
                return ptr::null_mut();
            }
            // SAFETY: a fresh or spare chunk, unlisted, owned under this lock.
            unsafe { list(&mut c, chunk) };
            chunk
        };
        // SAFETY: chunks in `with_room` are mapped, initialised and have room; fields
        // are accessed through the raw pointer, which unlist writes through too.
        unsafe {
            let out = if (*chunk).free.is_null() {
                let at = chunk.cast::<u8>().add((*chunk).fresh);
                (*chunk).fresh += block;
                at
            } else {
                let at = (*chunk).free;
                (*chunk).free = (*at).next;
                at.cast::<u8>()
            };
            (*chunk).live += 1;
            if (*chunk).free.is_null() && (*chunk).fresh + block > CHUNK {
                unlist(&mut c, chunk);
            }
            out
        }
    }

    /// Gives back a block taken with `take(class)`.
    ///
    /// # Safety
    /// `at` came from `take(class)` and was not given back since.
    unsafe fn give(&self, class: usize, at: *mut u8) {
        let chunk = (at as usize & !(CHUNK - 1)) as *mut Chunk;
        let mut c = self.lock(class);
        // SAFETY: the chunk is mapped while it has a live block (this one); its header is
        // only touched under its class's lock, held here. Fields are accessed through the
        // raw pointer, since list/unlist write through it too.
        let unmap = unsafe {
            if (*chunk).block != (class + 1) * SLOT || (*chunk).live == 0 {
                // A block freed with another layout, or twice: the heap is corrupt, and
                // an allocator must not unwind.
                std::process::abort();
            }
            let freed = at.cast::<FreeBlock>();
            (*freed).next = (*chunk).free;
            (*chunk).free = freed;
            (*chunk).live -= 1;
            if (*chunk).live > 0 {
                if !(*chunk).listed {
                    list(&mut c, chunk);
                }
                false
            } else {
                if (*chunk).listed {
                    unlist(&mut c, chunk);
                }
                if c.spare.is_null() {
                    (*chunk).free = ptr::null_mut();
                    (*chunk).fresh = FIRST_BLOCK;
                    c.spare = chunk;
                    false
                } else {
                    true
                }
            }
        };
        drop(c);
        if unmap {
            // SAFETY: empty and reachable from no list: nobody else can reach it.
            unsafe { unmap_chunk(chunk) };
        }
    }
}

impl Drop for AlignedPool {
    /// Unmaps the spare chunks (the chunks with live blocks belong to their owners). The
    /// global instance is never dropped; tests' pools are.
    fn drop(&mut self) {
        for class in &self.classes {
            let mut c = class.0.lock().unwrap_or_else(|e| e.into_inner());
            let spare = std::mem::replace(&mut c.spare, ptr::null_mut());
            if !spare.is_null() {
                // SAFETY: an empty, unlisted chunk of this pool.
                unsafe { unmap_chunk(spare) };
            }
        }
    }
}

/// Maps a chunk aligned to its size, with its header written; null when mapping fails.
///
/// # Safety
/// `block` is a nonzero multiple of `SLOT` no larger than `MAX_BLOCK`.
unsafe fn map_chunk(block: usize) -> *mut Chunk {
    // Twice the size, then the unaligned ends unmapped: mmap only promises page alignment.
    // SAFETY: an anonymous private mapping at an address of the kernel's choosing.
    let raw = unsafe {
        libc::mmap(
            ptr::null_mut(),
            2 * CHUNK,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        )
    };
    if raw == libc::MAP_FAILED {
        return ptr::null_mut();
    }
    let start = raw as usize;
    let aligned = start.next_multiple_of(CHUNK);
    // SAFETY: both ranges lie inside the mapping just made and outside the kept chunk.
    unsafe {
        if aligned > start {
            libc::munmap(raw, aligned - start);
        }
        let tail = aligned + CHUNK;
        let end = start + 2 * CHUNK;
        if end > tail {
            libc::munmap(tail as *mut libc::c_void, end - tail);
        }
    }
    let chunk = aligned as *mut Chunk;
    // SAFETY: the chunk is mapped, writable and large enough for its header.
    unsafe {
        chunk.write(Chunk {
            block,
            live: 0,
            free: ptr::null_mut(),
            fresh: FIRST_BLOCK,
            prev: ptr::null_mut(),
            next: ptr::null_mut(),
            listed: false,
        });
    }
    chunk
}

/// # Safety
/// `chunk` came from `map_chunk`, has no live block and is in no list.
unsafe fn unmap_chunk(chunk: *mut Chunk) {
    // A failure (ENOMEM near vm.max_map_count: every chunk is its own mapping) leaks the
    // chunk, nothing worse. SAFETY: the whole chunk is ours and nothing points into it.
    unsafe {
        libc::munmap(chunk.cast(), CHUNK);
    }
}

/// # Safety
/// `chunk` is a mapped chunk of this class, not listed; the class is locked.
unsafe fn list(c: &mut Class, chunk: *mut Chunk) {
    // SAFETY: per the contract, under the class lock.
    unsafe {
        (*chunk).prev = ptr::null_mut();
        (*chunk).next = c.with_room;
        if !c.with_room.is_null() {
            (*c.with_room).prev = chunk;
        }
        (*chunk).listed = true;
    }
    c.with_room = chunk;
}

/// # Safety
/// `chunk` is listed in this class's `with_room`; the class is locked.
unsafe fn unlist(c: &mut Class, chunk: *mut Chunk) {
    // SAFETY: per the contract, under the class lock.
    unsafe {
        let (prev, next) = ((*chunk).prev, (*chunk).next);
        if prev.is_null() {
            c.with_room = next;
        } else {
            (*prev).next = next;
        }
        if !next.is_null() {
            (*next).prev = prev;
        }
        (*chunk).prev = ptr::null_mut();
        (*chunk).next = ptr::null_mut();
        (*chunk).listed = false;
    }
}

// SAFETY: a block's route (pool class or system) is a function of its layout alone, and
// every call about a block passes the layout it was allocated with (realloc's new layout
// keeps the alignment; a reroute by size is handled by copying). Pool blocks are aligned
// to SLOT, which is at least the alignment of every layout routed to the pool.
unsafe impl GlobalAlloc for AlignedPool {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        match Self::class_of(layout) {
            // SAFETY: class_of returns classes below CLASSES.
            Some(class) => unsafe { self.take(class) },
            // SAFETY: forwarded with the caller's guarantees.
            None => unsafe { System.alloc(layout) },
        }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        match Self::class_of(layout) {
            Some(class) => {
                // SAFETY: as in alloc; a block is at least layout.size() bytes.
                unsafe {
                    let at = self.take(class);
                    if !at.is_null() {
                        ptr::write_bytes(at, 0, layout.size());
                    }
                    at
                }
            }
            // SAFETY: forwarded with the caller's guarantees.
            None => unsafe { System.alloc_zeroed(layout) },
        }
    }

    unsafe fn dealloc(&self, at: *mut u8, layout: Layout) {
        match Self::class_of(layout) {
            // SAFETY: the same layout routed this block to this class when it was made.
            Some(class) => unsafe { self.give(class, at) },
            // SAFETY: likewise made by System.
            None => unsafe { System.dealloc(at, layout) },
        }
    }

    unsafe fn realloc(&self, at: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: the caller guarantees new_size rounded to the alignment fits isize.
        let new_layout = unsafe { Layout::from_size_align_unchecked(new_size, layout.align()) };
        let (old, new) = (Self::class_of(layout), Self::class_of(new_layout));
        if old.is_none() && new.is_none() {
            // SAFETY: both ends are the system allocator's.
            return unsafe { System.realloc(at, layout, new_size) };
        }
        if old.is_some() && old == new {
            return at;
        }
        // SAFETY: a new block by the new route, the contents copied, the old block freed
        // by its own route.
        unsafe {
            let moved = self.alloc(new_layout);
            if !moved.is_null() {
                ptr::copy_nonoverlapping(at, moved, layout.size().min(new_size));
                self.dealloc(at, layout);
            }
            moved
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn routes_only_cache_line_aligned_blocks_up_to_4_kib() {
        let l = |size, align| Layout::from_size_align(size, align).unwrap();
        assert_eq!(AlignedPool::class_of(l(768, 128)), Some(5));
        assert_eq!(AlignedPool::class_of(l(128, 128)), Some(0));
        assert_eq!(AlignedPool::class_of(l(129, 64)), Some(1));
        assert_eq!(AlignedPool::class_of(l(4096, 128)), Some(31));
        assert_eq!(AlignedPool::class_of(l(4097, 128)), None);
        assert_eq!(AlignedPool::class_of(l(768, 16)), None);
        assert_eq!(AlignedPool::class_of(l(768, 256)), None);
    }

    #[test]
    fn a_chunk_goes_back_when_its_last_block_is_freed() {
        let pool = AlignedPool::new();
        let layout = Layout::from_size_align(700, 128).unwrap();
        let class = AlignedPool::class_of(layout).unwrap();
        // Enough for several chunks.
        let blocks: Vec<*mut u8> = (0..1000)
            .map(|i| unsafe {
                let at = pool.alloc(layout);
                assert!(!at.is_null());
                assert_eq!(at as usize % 128, 0);
                ptr::write_bytes(at, i as u8, layout.size());
                at
            })
            .collect();
        for (i, &at) in blocks.iter().enumerate() {
            // Nobody else wrote into a block.
            let bytes = unsafe { std::slice::from_raw_parts(at, layout.size()) };
            assert!(bytes.iter().all(|&b| b == i as u8), "block {i} overwritten");
        }
        for &at in &blocks {
            unsafe { pool.dealloc(at, layout) };
        }
        // Everything freed: no chunk listed, one kept as the spare, the rest unmapped.
        assert_eq!(chunks(&pool, class), (0, true));
        // The spare serves the next block.
        let again = unsafe { pool.alloc(layout) };
        assert_eq!(chunks(&pool, class), (1, false));
        unsafe { pool.dealloc(again, layout) };
    }

    #[test]
    fn realloc_moves_between_the_pool_and_the_system() {
        let pool = AlignedPool::new();
        let small = Layout::from_size_align(100, 128).unwrap();
        unsafe {
            let at = pool.alloc(small);
            ptr::write_bytes(at, 7, 100);
            let grown = pool.realloc(at, small, 10_000);
            let big = Layout::from_size_align(10_000, 128).unwrap();
            assert_eq!(grown as usize % 128, 0);
            assert!(std::slice::from_raw_parts(grown, 100)
                .iter()
                .all(|&b| b == 7));
            let back = pool.realloc(grown, big, 50);
            assert!(std::slice::from_raw_parts(back, 50).iter().all(|&b| b == 7));
            let zeroed = pool.alloc_zeroed(small);
            assert!(std::slice::from_raw_parts(zeroed, 100)
                .iter()
                .all(|&b| b == 0));
            pool.dealloc(zeroed, small);
            pool.dealloc(back, Layout::from_size_align(50, 128).unwrap());
        }
        assert_eq!(chunks(&pool, 0), (0, true));
    }

    /// Checks `class`'s lists: listed chunks have live blocks and room and link both
    /// ways; the spare is empty and unlisted. Returns the number of listed chunks and
    /// whether there is a spare.
    fn chunks(pool: &AlignedPool, class: usize) -> (usize, bool) {
        let c = pool.lock(class);
        let block = (class + 1) * SLOT;
        let mut listed = 0;
        let mut prev: *mut Chunk = ptr::null_mut();
        let mut at = c.with_room;
        while !at.is_null() {
            // SAFETY: listed chunks are mapped; read under the lock.
            unsafe {
                assert!((*at).listed);
                assert_eq!((*at).prev, prev);
                assert_eq!((*at).block, block);
                assert!((*at).live > 0);
                assert!(!(*at).free.is_null() || (*at).fresh + block <= CHUNK);
                prev = at;
                at = (*at).next;
            }
            listed += 1;
        }
        if !c.spare.is_null() {
            // SAFETY: the spare is mapped; read under the lock.
            unsafe {
                assert_eq!((*c.spare).live, 0);
                assert!(!(*c.spare).listed);
            }
        }
        (listed, !c.spare.is_null())
    }

    /// [`chunks`] over every class: the number of listed chunks.
    fn check(pool: &AlignedPool) -> usize {
        (0..CLASSES).map(|class| chunks(pool, class).0).sum()
    }

    #[test]
    fn emptying_a_chunk_in_the_middle_of_the_list_unlinks_it() {
        let pool = AlignedPool::new();
        let layout = Layout::from_size_align(4096, 128).unwrap();
        // 15 blocks of 4 KiB per chunk: four chunks, the last with room.
        let mut blocks: Vec<*mut u8> = (0..50).map(|_| unsafe { pool.alloc(layout) }).collect();
        let chunk_of = |at: *mut u8| at as usize & !(CHUNK - 1);
        // One block freed in each chunk puts all four on the list.
        for i in [0, 15, 30, 45] {
            unsafe { pool.dealloc(blocks[i], layout) };
        }
        assert_eq!(check(&pool), 4);
        // Emptying the second chunk unlinks it from between two others.
        let second = chunk_of(blocks[16]);
        let (middle, rest): (Vec<_>, Vec<_>) = blocks
            .drain(..)
            .enumerate()
            .filter(|(i, _)| ![0, 15, 30, 45].contains(i))
            .map(|(_, at)| at)
            .partition(|&at| chunk_of(at) == second);
        for at in middle {
            unsafe { pool.dealloc(at, layout) };
        }
        assert_eq!(check(&pool), 3);
        // Allocation carries on from the remaining chunks, then the spare.
        let more: Vec<*mut u8> = (0..20).map(|_| unsafe { pool.alloc(layout) }).collect();
        check(&pool);
        for at in rest.into_iter().chain(more) {
            unsafe { pool.dealloc(at, layout) };
        }
        assert_eq!(check(&pool), 0);
    }

    #[test]
    fn realloc_within_the_pool_keeps_or_moves_the_block() {
        let pool = AlignedPool::new();
        let l = |size| Layout::from_size_align(size, 128).unwrap();
        unsafe {
            let at = pool.alloc(l(100));
            ptr::write_bytes(at, 3, 100);
            // Same class: the block itself.
            assert_eq!(pool.realloc(at, l(100), 120), at);
            let grown = pool.realloc(at, l(120), 300);
            assert_ne!(grown, at);
            assert!(std::slice::from_raw_parts(grown, 100)
                .iter()
                .all(|&b| b == 3));
            let shrunk = pool.realloc(grown, l(300), 150);
            assert!(std::slice::from_raw_parts(shrunk, 100)
                .iter()
                .all(|&b| b == 3));
            pool.dealloc(shrunk, l(150));
        }
        assert_eq!(check(&pool), 0);
    }

    #[test]
    fn alloc_zeroed_clears_a_reused_block() {
        let pool = AlignedPool::new();
        let layout = Layout::from_size_align(200, 64).unwrap();
        unsafe {
            let blocks: Vec<*mut u8> = (0..3).map(|_| pool.alloc(layout)).collect();
            for &at in &blocks {
                ptr::write_bytes(at, 0xff, 200);
            }
            // Two on the free list: the next block's first word links to the other.
            pool.dealloc(blocks[0], layout);
            pool.dealloc(blocks[1], layout);
            let zeroed = pool.alloc_zeroed(layout);
            assert!(std::slice::from_raw_parts(zeroed, 200)
                .iter()
                .all(|&b| b == 0));
            for at in [zeroed, blocks[2]] {
                pool.dealloc(at, layout);
            }
            let last = pool.alloc(layout);
            pool.dealloc(last, layout);
        }
        assert_eq!(check(&pool), 0);
    }

    #[test]
    fn blocks_freed_on_other_threads() {
        let pool = std::sync::Arc::new(AlignedPool::new());
        let (tx, rx) = std::sync::mpsc::channel::<(usize, usize, u8)>();
        let makers: Vec<_> = (0..4)
            .map(|t| {
                let (pool, tx) = (pool.clone(), tx.clone());
                std::thread::spawn(move || {
                    for i in 0..5000usize {
                        let size = [100, 700, 4000][(i + t) % 3];
                        let layout = Layout::from_size_align(size, 128).unwrap();
                        let at = unsafe { pool.alloc(layout) };
                        assert!(!at.is_null());
                        let tag = (i * 7 + t) as u8;
                        unsafe { ptr::write_bytes(at, tag, size) };
                        tx.send((at as usize, size, tag)).unwrap();
                    }
                })
            })
            .collect();
        drop(tx);
        let freers: Vec<_> = {
            let rx = std::sync::Arc::new(Mutex::new(rx));
            (0..2)
                .map(|_| {
                    let (pool, rx) = (pool.clone(), rx.clone());
                    std::thread::spawn(move || loop {
                        let next = rx.lock().unwrap().recv();
                        let Ok((at, size, tag)) = next else { return };
                        let at = at as *mut u8;
                        let bytes = unsafe { std::slice::from_raw_parts(at, size) };
                        assert!(bytes.iter().all(|&b| b == tag));
                        let layout = Layout::from_size_align(size, 128).unwrap();
                        unsafe { pool.dealloc(at, layout) };
                    })
                })
                .collect()
        };
        for t in makers.into_iter().chain(freers) {
            t.join().unwrap();
        }
        assert_eq!(check(&pool), 0);
    }

    /// One step of the property test: allocate (size index into a few classes, or a
    /// layout the system allocator gets), free the n-th live block, or resize it.
    #[derive(Debug, Clone)]
    enum Op {
        Alloc(usize, bool),
        Free(usize),
        Realloc(usize, usize),
    }

    const SIZES: [usize; 6] = [1, 128, 129, 3000, 4096, 5000];

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            (0..SIZES.len(), any::<bool>()).prop_map(|(s, low)| Op::Alloc(s, low)),
            any::<usize>().prop_map(Op::Free),
            (any::<usize>(), 0..SIZES.len()).prop_map(|(n, s)| Op::Realloc(n, s)),
        ]
    }

    proptest! {
        /// Any sequence of allocations, frees and resizes over a few classes (so chunks
        /// fill, leave and rejoin the lists) and the system route hands out disjoint,
        /// aligned blocks whose contents survive, keeps the lists consistent after every
        /// step, and ends with every chunk given back.
        #[test]
        fn interleaved_allocations_stay_disjoint(ops in proptest::collection::vec(op(), 1..2000)) {
            let pool = AlignedPool::new();
            let mut live: Vec<(*mut u8, Layout, u8)> = Vec::new();
            let intact = |at: *mut u8, layout: Layout, tag: u8| {
                let bytes = unsafe { std::slice::from_raw_parts(at, layout.size()) };
                bytes.iter().all(|&b| b == tag)
            };
            for (n, op) in ops.into_iter().enumerate() {
                let tag = n as u8;
                match op {
                    Op::Alloc(s, low) => {
                        // Alignment 16 goes to the system allocator whatever the size.
                        let align = if low { 16 } else { 64 << (n % 2) };
                        let layout = Layout::from_size_align(SIZES[s], align).unwrap();
                        let at = unsafe { pool.alloc(layout) };
                        prop_assert!(!at.is_null());
                        prop_assert_eq!(at as usize % align, 0);
                        unsafe { ptr::write_bytes(at, tag, layout.size()) };
                        live.push((at, layout, tag));
                    }
                    Op::Free(i) if !live.is_empty() => {
                        let (at, layout, old) = live.swap_remove(i % live.len());
                        prop_assert!(intact(at, layout, old));
                        unsafe { pool.dealloc(at, layout) };
                    }
                    Op::Realloc(i, s) if !live.is_empty() => {
                        let i = i % live.len();
                        let (at, layout, old) = live[i];
                        prop_assert!(intact(at, layout, old));
                        let moved = unsafe { pool.realloc(at, layout, SIZES[s]) };
                        prop_assert!(!moved.is_null());
                        prop_assert_eq!(moved as usize % layout.align(), 0);
                        let kept = Layout::from_size_align(layout.size().min(SIZES[s]), layout.align()).unwrap();
                        prop_assert!(intact(moved, kept, old));
                        let layout = Layout::from_size_align(SIZES[s], layout.align()).unwrap();
                        unsafe { ptr::write_bytes(moved, tag, layout.size()) };
                        live[i] = (moved, layout, tag);
                    }
                    _ => {}
                }
                check(&pool);
            }
            for (at, layout, tag) in live {
                prop_assert!(intact(at, layout, tag));
                unsafe { pool.dealloc(at, layout) };
            }
            prop_assert_eq!(check(&pool), 0);
        }
    }
}
