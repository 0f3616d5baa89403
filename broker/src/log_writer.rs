//! The log's writer: a line that cannot be written is dropped and counted, and the node
//! goes on.
//!
//! Logging must never take the node down. `eprintln!` panics when stderr fails (a full
//! disk under a redirected log, `2>/dev/full`, a closed pipe), and tracing-subscriber
//! reports its own write errors with `eprintln!` unless told not to. The binary installs
//! the fmt layer with `log_internal_errors(false)` and this writer, which swallows write
//! errors: each line lost counts once in [`lines_dropped`] (exported as
//! `skein_log_lines_dropped_total`). An atomic rather than a metric, because logging
//! starts before the metrics recorder is installed.

use std::io::{self, Write};
use std::sync::atomic::{AtomicU64, Ordering};

use tracing_subscriber::fmt::MakeWriter;

static LINES_DROPPED: AtomicU64 = AtomicU64::new(0);

/// Log lines dropped because they could not be written, since the process started.
pub fn lines_dropped() -> u64 {
    LINES_DROPPED.load(Ordering::Relaxed)
}

/// Wraps a [`MakeWriter`] (e.g. `std::io::stderr`) so that its writers never fail.
#[derive(Debug, Clone, Copy)]
pub struct DropOnError<M>(pub M);

impl<'a, M: MakeWriter<'a>> MakeWriter<'a> for DropOnError<M> {
    type Writer = Dropping<M::Writer>;

    fn make_writer(&'a self) -> Self::Writer {
        Dropping(self.0.make_writer())
    }

    fn make_writer_for(&'a self, meta: &tracing::Metadata<'_>) -> Self::Writer {
        Dropping(self.0.make_writer_for(meta))
    }
}

/// A writer whose errors are counted and swallowed.
#[derive(Debug)]
pub struct Dropping<W>(W);

impl<W: Write> Write for Dropping<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self.0.write(buf) {
            Err(e) if e.kind() != io::ErrorKind::Interrupted => {
                LINES_DROPPED.fetch_add(1, Ordering::Relaxed);
                Ok(buf.len())
            }
            result => result,
        }
    }

    /// The fmt layer writes each formatted line with one `write_all`: one count per line,
    /// however far the line got.
    fn write_all(&mut self, buf: &[u8]) -> io::Result<()> {
        if self.0.write_all(buf).is_err() {
            LINES_DROPPED.fetch_add(1, Ordering::Relaxed);
        }
        Ok(())
    }

    fn flush(&mut self) -> io::Result<()> {
        let _ = self.0.flush();
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Fails every write, as stderr on a full disk does.
    struct Full;

    impl Write for Full {
        fn write(&mut self, _: &[u8]) -> io::Result<usize> {
            Err(io::Error::from_raw_os_error(28))
        }
        fn flush(&mut self) -> io::Result<()> {
            Err(io::Error::from_raw_os_error(28))
        }
    }

    #[test]
    fn a_line_that_cannot_be_written_is_counted_once_and_not_an_error() {
        let before = lines_dropped();
        let make = DropOnError(|| Full);
        let mut writer = make.make_writer();
        writer.write_all(b"a log line\n").unwrap();
        writer.flush().unwrap();
        assert_eq!(writer.write(b"more").unwrap(), 4);
        // Other tests may drop lines concurrently: at least ours were counted.
        assert!(lines_dropped() >= before + 2);
    }

    #[test]
    fn lines_that_are_written_are_not_counted() {
        let make = DropOnError(Vec::<u8>::new);
        let mut writer = make.make_writer();
        writer.write_all(b"fine\n").unwrap();
        assert_eq!(writer.0, b"fine\n");
    }

    #[test]
    fn an_event_logged_to_a_full_writer_is_dropped_without_a_panic() {
        let before = lines_dropped();
        let subscriber = tracing_subscriber::fmt()
            .with_writer(DropOnError(|| Full))
            .log_internal_errors(false)
            .finish();
        tracing::subscriber::with_default(subscriber, || {
            tracing::warn!("nobody will read this");
        });
        assert!(lines_dropped() > before);
    }
}
