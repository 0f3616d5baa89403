//! [`StorageHealth`]: whether the store may take new data. Two things say no: free space
//! on the data directory's file system below the `storage_min_free_bytes` guard
//! ([`MinFree`]), and a failed storage engine.
//!
//! The guard exists because sled cannot recover from a failed write in the same process:
//! its first I/O error (`No space left on device`, say) is kept and returned by every
//! later write and flush until the database is opened again. Refusing new data while
//! there is still room keeps that from happening; [`StorageHealth::record`] notes it when
//! it happens anyway, and the state stays [`Availability::Failed`] for the life of the
//! store.
//!
//! Reading the state is one atomic load, cheap enough for every publish. Free space is
//! measured by [`StorageHealth::check`] (a `statvfs` of the data directory), which the
//! broker calls from a timer, and which a write calls too once the bytes written since
//! the last measurement (records, and what sled's flushes wrote) reach a quarter of the
//! room left above the guard: far from the limit that is rare, near it a fast writer is
//! measured after every flush instead of writing on past the guard until the next tick
//! (sled writes several times the size of its records, rewriting whole pages).

use std::fmt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::Mutex;

use crate::error::{Result, StorageError};

/// The free-space guard: how much room the data directory's file system must keep.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MinFree {
    /// At least this many bytes free; 0 turns the guard off.
    Bytes(u64),
    /// At least this share of the file system free, in hundredths of a percent (500 = 5%).
    Percent { hundredths: u16 },
}

impl MinFree {
    /// 64 MiB: room for sled's segment of 512 KiB and its snapshots many times over,
    /// small against any real disk.
    pub const DEFAULT: MinFree = MinFree::Bytes(64 * 1024 * 1024);

    /// Parses a byte count (`67108864`) or a percentage of the file system (`5%`,
    /// `0.5%`; at most two decimals, below 100%).
    pub fn parse(text: &str) -> Option<MinFree> {
        let text = text.trim();
        let Some(percent) = text.strip_suffix('%') else {
            return text.parse().ok().map(MinFree::Bytes);
        };
        let percent = percent.trim_end();
        let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
        let (whole, fraction) = match percent.split_once('.') {
            Some((whole, fraction)) if digits(fraction) && fraction.len() <= 2 => (whole, fraction),
            Some(_) => return None,
            None => (percent, ""),
        };
        if !digits(whole) {
            return None;
        }
        let whole: u16 = whole.parse().ok().filter(|w| *w < 100)?;
        let fraction: u16 = format!("{fraction:0<2}").parse().ok()?;
        Some(MinFree::Percent {
            hundredths: whole * 100 + fraction,
        })
    }

    /// The guard in bytes on a file system of `total` bytes.
    pub fn bytes_of(self, total: u64) -> u64 {
        match self {
            MinFree::Bytes(n) => n,
            MinFree::Percent { hundredths } => {
                (u128::from(total) * u128::from(hundredths) / 10_000) as u64
            }
        }
    }
}

impl Default for MinFree {
    fn default() -> Self {
        MinFree::DEFAULT
    }
}

impl fmt::Display for MinFree {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            MinFree::Bytes(n) => write!(f, "{n}"),
            MinFree::Percent { hundredths } if hundredths % 100 == 0 => {
                write!(f, "{}%", hundredths / 100)
            }
            MinFree::Percent { hundredths } => {
                let text = format!("{}.{:02}", hundredths / 100, hundredths % 100);
                write!(f, "{}%", text.trim_end_matches('0'))
            }
        }
    }
}

/// Whether the store takes new data.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Availability {
    Available,
    /// Free space is below the guard: new data is refused, everything else goes on.
    LowSpace,
    /// The storage engine failed a write; it stays so until the store is opened again.
    Failed,
}

impl Availability {
    /// The name used in metrics, logs and `/readyz`.
    pub fn as_str(self) -> &'static str {
        match self {
            Availability::Available => "available",
            Availability::LowSpace => "low_space",
            Availability::Failed => "failed",
        }
    }

    fn from_u8(v: u8) -> Availability {
        match v {
            0 => Availability::Available,
            1 => Availability::LowSpace,
            _ => Availability::Failed,
        }
    }
}

/// Free space as last measured, in bytes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Space {
    /// Available to the broker (`f_bavail`: without the blocks reserved for root).
    pub free: u64,
    pub total: u64,
    /// The guard in bytes (0: off).
    pub min_free: u64,
}

/// Whether a file system with `space` is below its guard, given the state it was in: a
/// low one comes back only once free space is a sixteenth above the guard, so that the
/// state does not flap while a writer hovers at the limit.
fn classify(space: Space, was_low: bool) -> Availability {
    let needed = if was_low {
        space.min_free.saturating_add(space.min_free / 16)
    } else {
        space.min_free
    };
    if space.min_free > 0 && space.free < needed {
        Availability::LowSpace
    } else {
        Availability::Available
    }
}

fn log_change(from: Availability, to: Availability, space: Space) {
    match to {
        Availability::LowSpace => tracing::warn!(
            free_bytes = space.free,
            min_free_bytes = space.min_free,
            "free space on the data directory is below storage_min_free_bytes: the store \
             takes no new data until there is room again"
        ),
        _ => tracing::info!(
            free_bytes = space.free,
            min_free_bytes = space.min_free,
            was = from.as_str(),
            "free space on the data directory is above storage_min_free_bytes again: the \
             store takes new data"
        ),
    }
}

/// The availability of one store, shared by its clones.
#[derive(Debug)]
pub struct StorageHealth {
    /// The data directory; None for a temporary store, which is never measured.
    dir: Option<PathBuf>,
    state: AtomicU8,
    min_free: Mutex<MinFree>,
    free: AtomicU64,
    total: AtomicU64,
    min_free_bytes: AtomicU64,
    /// Bytes of records written since the last measurement.
    written: AtomicU64,
    /// What failed, for `/readyz` and the exit message.
    failure: Mutex<Option<String>>,
}

impl StorageHealth {
    pub(crate) fn new(dir: Option<PathBuf>) -> StorageHealth {
        StorageHealth {
            dir,
            state: AtomicU8::new(Availability::Available as u8),
            min_free: Mutex::new(MinFree::DEFAULT),
            free: AtomicU64::new(0),
            total: AtomicU64::new(0),
            min_free_bytes: AtomicU64::new(0),
            written: AtomicU64::new(0),
            failure: Mutex::new(None),
        }
    }

    /// Sets the guard; it takes effect at the next [`StorageHealth::check`].
    pub fn set_min_free(&self, min_free: MinFree) {
        *self.min_free.lock().unwrap_or_else(|e| e.into_inner()) = min_free;
    }

    pub fn min_free(&self) -> MinFree {
        *self.min_free.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The current state: one atomic load.
    pub fn availability(&self) -> Availability {
        Availability::from_u8(self.state.load(Ordering::Acquire))
    }

    /// Free space as of the last check (zeros before the first, and for a temporary store).
    pub fn space(&self) -> Space {
        Space {
            free: self.free.load(Ordering::Relaxed),
            total: self.total.load(Ordering::Relaxed),
            min_free: self.min_free_bytes.load(Ordering::Relaxed),
        }
    }

    /// The storage engine's error that made the store fail, if it has.
    pub fn failure(&self) -> Option<String> {
        self.failure
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Measures free space on the data directory's file system and moves between
    /// available and low space accordingly (a failed store stays failed). Returns the
    /// state after the check.
    pub fn check(&self) -> std::io::Result<Availability> {
        let Some(dir) = &self.dir else {
            return Ok(self.availability());
        };
        // Taken before measuring: what is written meanwhile counts against this one.
        self.written.store(0, Ordering::Relaxed);
        let stat = rustix::fs::statvfs(dir)?;
        let block = stat.f_frsize.max(1);
        let total = stat.f_blocks.saturating_mul(block);
        let space = Space {
            free: stat.f_bavail.saturating_mul(block),
            total,
            min_free: self.min_free().bytes_of(total),
        };
        Ok(self.apply(space))
    }

    /// Takes a measurement (split from `check` so tests can feed their own).
    fn apply(&self, space: Space) -> Availability {
        self.free.store(space.free, Ordering::Relaxed);
        self.total.store(space.total, Ordering::Relaxed);
        self.min_free_bytes.store(space.min_free, Ordering::Relaxed);
        let update = |current: u8| {
            let current = Availability::from_u8(current);
            if current == Availability::Failed {
                return None;
            }
            let next = classify(space, current == Availability::LowSpace);
            (next != current).then_some(next as u8)
        };
        match self
            .state
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, update)
        {
            Ok(before) => {
                // Logged where it changes: a dip shorter than the broker's timer shows too.
                let now = self.availability();
                log_change(Availability::from_u8(before), now, space);
                now
            }
            Err(unchanged) => Availability::from_u8(unchanged),
        }
    }

    /// Counts `bytes` written since the last measurement; true when they reach a quarter
    /// of the room that was left above the guard, so that free space should be measured
    /// again now. A trigger, not an account: sled reuses its freed segments, so what it
    /// writes may take no new room at all.
    pub(crate) fn wrote(&self, bytes: usize) -> bool {
        let written = self.written.fetch_add(bytes as u64, Ordering::Relaxed) + bytes as u64;
        let space = self.space();
        space.min_free > 0 && written >= space.free.saturating_sub(space.min_free) / 4
    }

    /// Ok when new data may be written; otherwise why not ([`StorageError::LowSpace`] or
    /// [`StorageError::Failed`]). Writes that only move or delete what is stored don't ask.
    pub fn admit(&self) -> Result<()> {
        match self.availability() {
            Availability::Available => Ok(()),
            Availability::LowSpace => {
                let space = self.space();
                Err(StorageError::LowSpace {
                    free: space.free,
                    min_free: space.min_free,
                })
            }
            Availability::Failed => Err(StorageError::Failed(
                self.failure()
                    .unwrap_or_else(|| String::from("unknown error")),
            )),
        }
    }

    /// Notes a storage engine error: sled keeps its I/O errors (and its corruption and
    /// bug reports) for every later write, so the store has failed for good.
    pub(crate) fn record(&self, error: &sled::Error) {
        let sticky = matches!(
            error,
            sled::Error::Io(_) | sled::Error::Corruption { .. } | sled::Error::ReportableBug(_)
        );
        if sticky {
            self.fail(error.to_string());
        }
    }

    fn fail(&self, cause: String) {
        let mut failure = self.failure.lock().unwrap_or_else(|e| e.into_inner());
        failure.get_or_insert(cause);
        self.state
            .store(Availability::Failed as u8, Ordering::Release);
    }

    /// One line on why new data is refused; None while it is taken.
    pub fn describe(&self) -> Option<String> {
        match self.availability() {
            Availability::Available => None,
            Availability::LowSpace => {
                let space = self.space();
                Some(format!(
                    "free space on the data directory is below storage_min_free_bytes \
                     ({} bytes free, {} required)",
                    space.free, space.min_free
                ))
            }
            Availability::Failed => Some(format!(
                "storage failed: {}",
                self.failure()
                    .unwrap_or_else(|| String::from("unknown error"))
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1024 * 1024;

    #[test]
    fn min_free_parses_bytes_and_percentages_and_shows_them_back() {
        for (text, parsed, shown) in [
            ("67108864", MinFree::Bytes(64 * MIB), "67108864"),
            (" 0 ", MinFree::Bytes(0), "0"),
            ("5%", MinFree::Percent { hundredths: 500 }, "5%"),
            ("0.5%", MinFree::Percent { hundredths: 50 }, "0.5%"),
            ("12.25 %", MinFree::Percent { hundredths: 1225 }, "12.25%"),
            ("99.99%", MinFree::Percent { hundredths: 9999 }, "99.99%"),
        ] {
            assert_eq!(MinFree::parse(text), Some(parsed), "{text:?}");
            assert_eq!(parsed.to_string(), shown);
            assert_eq!(MinFree::parse(shown), Some(parsed));
        }
        for bad in [
            "", "%", "-1", "1.5", "100%", "5.%", ".5%", "1.234%", "5%%", "x%", "64MiB", "1e3",
        ] {
            assert_eq!(MinFree::parse(bad), None, "{bad:?} was accepted");
        }
    }

    #[test]
    fn a_percentage_is_taken_of_the_file_system_size() {
        assert_eq!(
            MinFree::Percent { hundredths: 500 }.bytes_of(1000 * MIB),
            50 * MIB
        );
        assert_eq!(MinFree::Percent { hundredths: 1 }.bytes_of(10_000), 1);
        assert_eq!(MinFree::Bytes(7).bytes_of(0), 7);
        // No overflow on the largest sizes.
        assert_eq!(
            MinFree::Percent { hundredths: 9999 }.bytes_of(u64::MAX),
            (u128::from(u64::MAX) * 9999 / 10_000) as u64
        );
    }

    fn space(free: u64, min_free: u64) -> Space {
        Space {
            free,
            total: 100 * MIB,
            min_free,
        }
    }

    #[test]
    fn the_guard_trips_below_the_limit_and_clears_a_sixteenth_above_it() {
        let health = StorageHealth::new(None);
        assert_eq!(
            health.apply(space(65 * MIB, 64 * MIB)),
            Availability::Available
        );
        assert!(health.admit().is_ok());
        assert_eq!(
            health.apply(space(63 * MIB, 64 * MIB)),
            Availability::LowSpace
        );
        match health.admit() {
            Err(StorageError::LowSpace { free, min_free }) => {
                assert_eq!((free, min_free), (63 * MIB, 64 * MIB))
            }
            other => panic!("expected LowSpace, got {other:?}"),
        }
        assert!(health
            .describe()
            .unwrap()
            .contains("storage_min_free_bytes"));
        // Back at the limit is not enough: it must clear the margin (64 + 4 MiB).
        assert_eq!(
            health.apply(space(64 * MIB, 64 * MIB)),
            Availability::LowSpace
        );
        assert_eq!(
            health.apply(space(67 * MIB, 64 * MIB)),
            Availability::LowSpace
        );
        assert_eq!(
            health.apply(space(68 * MIB, 64 * MIB)),
            Availability::Available
        );
        assert_eq!(health.describe(), None);
        // 0 turns the guard off, even on a full disk.
        assert_eq!(health.apply(space(0, 0)), Availability::Available);
    }

    #[test]
    fn a_quarter_of_the_room_above_the_guard_written_asks_for_a_measurement() {
        let dir = tempfile::tempdir().unwrap();
        let health = StorageHealth::new(Some(dir.path().to_owned()));
        // 6 MiB above the guard: measure again after 1.5 MiB.
        health.apply(space(70 * MIB, 64 * MIB));
        assert!(!health.wrote(MIB as usize));
        assert!(health.wrote((MIB / 2) as usize));
        // A measurement starts the count again.
        health.set_min_free(MinFree::Bytes(1));
        health.check().unwrap();
        assert!(!health.wrote(1024));
        // Writing is what asks, not the state: it stays as measured.
        assert_eq!(health.availability(), Availability::Available);
        // Below the guard, every write asks; with the guard off, none does.
        health.apply(space(MIB, 2 * MIB));
        assert!(health.wrote(1));
        health.apply(space(MIB, 0));
        assert!(!health.wrote((10 * MIB) as usize));
    }

    #[test]
    fn a_storage_engine_failure_is_kept_whatever_the_free_space() {
        let health = StorageHealth::new(None);
        // Errors that leave sled working change nothing.
        health.record(&sled::Error::CollectionNotFound(sled::IVec::from("x")));
        assert_eq!(health.availability(), Availability::Available);
        let enospc = std::io::Error::from_raw_os_error(28);
        health.record(&sled::Error::Io(enospc));
        assert_eq!(health.availability(), Availability::Failed);
        health.record(&sled::Error::Io(std::io::Error::other("later")));
        assert_eq!(health.apply(space(90 * MIB, MIB)), Availability::Failed);
        let text = health.describe().unwrap();
        assert!(text.contains("No space left on device"), "{text}");
        assert!(
            matches!(health.admit(), Err(StorageError::Failed(cause)) if cause.contains("No space"))
        );
    }

    #[test]
    fn check_measures_the_file_system_of_the_directory() {
        let dir = tempfile::tempdir().unwrap();
        let health = StorageHealth::new(Some(dir.path().to_owned()));
        health.set_min_free(MinFree::Bytes(0));
        assert_eq!(health.check().unwrap(), Availability::Available);
        let measured = health.space();
        assert!(
            measured.total > 0 && measured.free <= measured.total,
            "{measured:?}"
        );
        // More than the whole file system can ever have free.
        health.set_min_free(MinFree::Bytes(measured.total + 1));
        assert_eq!(health.check().unwrap(), Availability::LowSpace);
        health.set_min_free(MinFree::Bytes(0));
        assert_eq!(health.check().unwrap(), Availability::Available);
        // A directory that is gone is an error, and the state is left as it was.
        let gone = StorageHealth::new(Some(dir.path().join("missing")));
        assert!(gone.check().is_err());
        assert_eq!(gone.availability(), Availability::Available);
    }
}
