//! Handing sled's deferred frees over to its garbage collector after a log write.
//!
//! sled frees what a write replaced (old versions of tree nodes, and a full 512 KiB log
//! buffer once its segment is sealed) through crossbeam-epoch: the free is queued in the
//! writing thread's own bag, which reaches the collector only when 64 frees have gathered
//! there or the thread flushes it. After a burst of writes (a CONNECT storm: every
//! registration is a log append) the last bag of each thread that wrote stays put while the
//! node is idle; measured with 10k idle connections, one to four sealed log buffers, 0.5 to
//! 2 MiB, were still allocated seconds after the burst.
//!
//! [`release_deferred`] flushes the calling thread's bag and lets the collector advance:
//! one epoch step per call, and a bag is freed two steps after it was handed over, so three
//! calls free what this thread queued unless another thread is inside sled at that moment
//! (then the next append's calls do). It touches no data of ours and cannot fail.

/// Flushes this thread's deferred frees to the collector and collects what has expired.
pub(super) fn release_deferred() {
    for _ in 0..3 {
        crossbeam_epoch::pin().flush();
    }
}
