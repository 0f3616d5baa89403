//! Parking idle connections. A connection that has had nothing to do for `park_idle_ms`
//! gives up its tokio task and its tokio I/O registration (together most of what an idle
//! connection costs) and waits in one shared epoll set instead. Input on its socket, a
//! wake-up or kick on its signal, or its keepalive deadline resumes it in a new task,
//! which carries on exactly where the old one stopped.
//!
//! The epoll set of parked sockets is itself one descriptor in tokio's reactor, watched
//! by a task: input on a parked socket is reported by the same reactor, in the same
//! order, as input on a running connection, and stamped in the node's input order
//! (see [`crate::input_order`]) before any input that reached the node after it. The
//! parker thread keeps the deadlines and hands freed memory back.

use std::io;
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, Weak};
use std::task::Context;
use std::time::Duration;

use mio::unix::SourceFd;
use mio::{Events, Interest, Poll, Token, Waker};
use tokio::io::unix::AsyncFd;
use tokio::time::Instant;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

use super::deadlines::{compact_if_stale, Deadlines};
use super::paged_slab::{Key, PagedSlab};
use super::Connection;
use crate::input_order::{InputOrder, StampingWaker, Ticket};
use crate::session::{Unpark, Unparker};

const WAKER: Token = Token(usize::MAX);
/// The thread looks at the time (due connections, trimming) at least this often.
const TICK: Duration = Duration::from_secs(1);
/// Freed memory is handed back once at least this many connections parked since the
/// last time, and parking has been quiet for `TRIM_QUIET` (or `TRIM_EVERY` passed).
const TRIM_AFTER_PARKS: u64 = 256;
const TRIM_QUIET: Duration = Duration::from_secs(1);
const TRIM_EVERY: Duration = Duration::from_secs(60);

/// The node's parker, owned by the MQTT server. Dropping it stops the parker thread.
pub struct Parker {
    shared: Arc<Shared>,
}

/// The parker as a connection parks with it (and as the `/metrics` route reads the parked
/// count from). A connection reaches it through its signal, which holds the parker as an
/// [`Unparker`] ([`ParkerHandle::of`]): nothing in the connection itself, as every byte of
/// an idle connection counts.
#[derive(Clone)]
pub struct ParkerHandle {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for ParkerHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ParkerHandle").finish_non_exhaustive()
    }
}

struct Shared {
    park_after: Option<Duration>,
    /// Made, with the thread, when the first connection parks.
    started: OnceLock<Started>,
    starting: Mutex<()>,
    /// The listener's tracker: a resumed connection is drained on shutdown like any other.
    tracker: TaskTracker,
    state: Mutex<State>,
    base: Instant,
    stopped: AtomicBool,
    /// `skein_connection_parks_total`, registered once: a connection parks again after
    /// every resume.
    parks: metrics::Counter,
    /// What connections' signals resume parked connections through; holds the parker
    /// weakly (it is held by the parker).
    unparker: Unparker,
    order: Arc<InputOrder>,
    /// Tells the task watching parked sockets to end.
    stop_watching: tokio::sync::Notify,
}

struct Started {
    /// Where parked sockets are registered (the set the watching task polls).
    registry: mio::Registry,
    /// Wakes the parker thread (a deadline came closer, or the parker stops).
    waker: Waker,
    /// The runtime resumed connections are spawned on (the one the first parker ran on).
    runtime: tokio::runtime::Handle,
}

#[derive(Default)]
struct State {
    /// Keys carry a 32-bit generation, so a late wake-up for a resumed connection finds
    /// nothing (barring 2^32 parks in between: then a spurious resume, which is harmless).
    parked: PagedSlab<Parked>,
    /// When parked connections must be resumed without input (ms since `base`).
    due: Deadlines,
    /// When the thread looks at `due` next without being woken (None: not before an event).
    thread_wakes_at: Option<u64>,
    parks_since_trim: u64,
    last_park: Option<Instant>,
}

struct Parked {
    conn: Box<Connection>,
    stream: std::net::TcpStream,
    /// Counts the parked connection as a task of the listener's tracker, so a shutdown
    /// drain never finishes while one is parked (the shutdown sweep resumes them all).
    _tracked: tokio_util::task::task_tracker::TaskTrackerToken,
}

impl Parker {
    /// `park_after`: how long a connection is idle before it parks (None: never).
    pub fn new(
        park_after: Option<Duration>,
        tracker: TaskTracker,
        order: Arc<InputOrder>,
    ) -> Parker {
        Parker {
            shared: Arc::new_cyclic(|weak: &Weak<Shared>| Shared {
                park_after,
                started: OnceLock::new(),
                starting: Mutex::new(()),
                tracker,
                state: Mutex::new(State::default()),
                base: Instant::now(),
                stopped: AtomicBool::new(false),
                parks: metrics::counter!(crate::metrics::CONNECTION_PARKS),
                unparker: Unparker::new(weak.clone()),
                order,
                stop_watching: tokio::sync::Notify::new(),
            }),
        }
    }

    pub fn handle(&self) -> ParkerHandle {
        ParkerHandle {
            shared: self.shared.clone(),
        }
    }
}

impl Drop for Parker {
    fn drop(&mut self) {
        self.shared.stopped.store(true, Ordering::Release);
        if let Some(started) = self.shared.started.get() {
            let _ = started.waker.wake();
            // A permit: the task ends even if it is not waiting right now.
            self.shared.stop_watching.notify_one();
        }
    }
}

impl ParkerHandle {
    pub fn park_after(&self) -> Option<Duration> {
        self.shared.park_after
    }

    /// Connections parked now.
    pub fn parked(&self) -> usize {
        self.shared.state().parked.len()
    }

    /// The parker as a connection's signal holds it, to resume the connection (shared by
    /// every connection: no allocation per connection).
    pub fn unparker(&self) -> Unparker {
        self.shared.unparker.clone()
    }

    /// The parker behind a connection signal's `unparker`; None once the parker is gone.
    pub fn of(unparker: &Unparker) -> Option<ParkerHandle> {
        let weak = unparker.parker().downcast_ref::<Weak<Shared>>()?;
        Some(ParkerHandle {
            shared: weak.upgrade()?,
        })
    }

    /// Parks `conn` until its socket has input, its signal fires or `due` passes. Err gives
    /// the connection back when it could not be parked; it still has its socket unless
    /// that was lost on the way (then its next read fails and it ends as closed).
    pub(super) fn park(
        &self,
        mut conn: Box<Connection>,
        due: Option<Instant>,
    ) -> Result<(), Box<Connection>> {
        let shared = &self.shared;
        if !conn.kick_rx.can_park() {
            return Err(conn);
        }
        let started = match shared.start() {
            Ok(started) => started,
            Err(e) => {
                tracing::warn!(error = %e, "cannot start the parker thread; connections stay unparked");
                return Err(conn);
            }
        };
        let Some(stream) = conn.socket.take_stream() else {
            return Err(conn);
        };
        // What a parked connection keeps is what every idle client costs the node.
        conn.socket.drop_empty_buffers();
        conn.session.state().release_idle_memory();
        let stream = match stream.into_std() {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(client_id = %conn.info.client_id, error = %e, "cannot park: socket lost");
                return Err(conn);
            }
        };
        let signal = conn.kick_rx.clone();
        let due_ms = due.map(|d| shared.ms(d).max(1));
        let key = {
            let mut st = shared.state();
            let key = st.parked.next_key();
            let registered = started.registry.register(
                &mut SourceFd(&stream.as_raw_fd()),
                Token(key as usize),
                Interest::READABLE,
            );
            if let Err(e) = registered {
                drop(st);
                tracing::warn!(client_id = %conn.info.client_id, error = %e, "cannot park");
                match tokio::net::TcpStream::from_std(stream) {
                    Ok(s) => conn.socket.put_stream(s),
                    Err(e) => tracing::warn!(error = %e, "socket lost while parking"),
                }
                return Err(conn);
            }
            st.parks_since_trim += 1;
            st.last_park = Some(Instant::now());
            if let Some(ms) = due_ms {
                st.due.insert(ms, key);
                let look_at = st.due.next_due().unwrap_or(ms);
                if st.thread_wakes_at.is_none_or(|at| look_at < at) {
                    st.thread_wakes_at = Some(look_at);
                    let _ = started.waker.wake();
                }
            }
            let inserted = st.parked.insert(Parked {
                conn,
                stream,
                // Taken while this connection's task still runs: no gap in the count.
                _tracked: shared.tracker.token(),
            });
            // Nothing touched the slab since `next_key`, under the same lock.
            debug_assert_eq!(inserted, key);
            let State { parked, due, .. } = &mut *st;
            compact_if_stale(due, parked);
            // Under the lock, so a resume (which takes it too) can't be overtaken by this.
            signal.set_parked(key);
            key
        };
        shared.parks.increment(1);
        tracing::debug!(key, "parked");
        // A wake-up or kick sent before the key was visible found nobody to resume.
        if signal.needs_attention() {
            shared.unpark(key, "signalled while parking", None);
        }
        Ok(())
    }
}

impl Unpark for Weak<Shared> {
    fn unpark(&self, key: u64, why: &'static str) {
        // Gone only once nothing is parked any more (the parked connections hold it).
        if let Some(shared) = self.upgrade() {
            shared.unpark(key, why, None);
        }
    }

    fn as_any(&self) -> &dyn std::any::Any {
        self
    }
}

/// Puts the parked sockets' epoll set into tokio's reactor (the current runtime's).
#[allow(unsafe_code)]
fn watch_in_reactor(sockets: Poll) -> io::Result<AsyncFd<Poll>> {
    // SAFETY: the AsyncFd owns the Poll, and with it the epoll descriptor: it stays open
    // and the same until the AsyncFd is dropped, which deregisters it first.
    unsafe { AsyncFd::register_with_interest(sockets, tokio::io::Interest::READABLE) }
        .map_err(|e| e.into_parts().1)
}

impl Shared {
    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn ms(&self, at: Instant) -> u64 {
        u64::try_from(at.saturating_duration_since(self.base).as_millis()).unwrap_or(u64::MAX)
    }

    /// Starts the thread once; later calls return what the first one made.
    fn start(self: &Arc<Self>) -> io::Result<&Started> {
        if let Some(started) = self.started.get() {
            return Ok(started);
        }
        let runtime = tokio::runtime::Handle::try_current().map_err(io::Error::other)?;
        let _once = self.starting.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(started) = self.started.get() {
            return Ok(started);
        }
        let sockets = Poll::new()?;
        let timers = Poll::new()?;
        let started = Started {
            registry: sockets.registry().try_clone()?,
            waker: Waker::new(timers.registry(), WAKER)?,
            runtime: runtime.clone(),
        };
        let watched = {
            let _runtime = runtime.enter();
            watch_in_reactor(sockets)?
        };
        let shared = self.clone();
        std::thread::Builder::new()
            .name("skein-parker".into())
            .spawn(move || shared.run(timers))?;
        runtime.spawn(self.clone().watch_sockets(watched));
        Ok(self.started.get_or_init(|| started))
    }

    /// Resumes the connections whose parked socket has input, as tokio's reactor reports
    /// the parked sockets' epoll set readable. Their input is stamped in the node's input
    /// order at that report (one ticket for all of them, held until the last has handled
    /// what it read), so a publish that reached the node later waits for it.
    async fn watch_sockets(self: Arc<Self>, mut watched: AsyncFd<Poll>) {
        let task = std::future::poll_fn(|cx| std::task::Poll::Ready(cx.waker().clone())).await;
        let (stamper, waker) = StampingWaker::new(self.order.clone(), &task);
        let mut events = Events::with_capacity(256);
        loop {
            // The stamping waker is left with the reactor only here; the guard taken below
            // finds the readiness set and registers nothing.
            let readable = std::future::poll_fn(|cx| {
                // With the budget used up, tokio wakes the waker at once (a forced
                // yield): that must not stamp (see `Connection::stamping_waker`).
                let ready = if tokio::task::coop::has_budget_remaining() {
                    watched.poll_read_ready(&mut Context::from_waker(&waker))
                } else {
                    watched.poll_read_ready(cx)
                };
                ready.map_ok(drop)
            });
            let ready = tokio::select! {
                ready = readable => ready,
                _ = self.stop_watching.notified() => break,
            };
            let ready = match ready {
                Ok(()) => watched.readable_mut().await,
                Err(e) => Err(e),
            };
            let mut ready = match ready {
                Ok(ready) => ready,
                Err(e) => {
                    tracing::error!(error = %e, "parked sockets cannot be watched; parked connections resume only by their deadline");
                    break;
                }
            };
            // Readiness found without a wake-up was not stamped: it is placed now.
            let ticket = stamper.take().unwrap_or_else(|| self.order.ticket());
            loop {
                let sockets = ready.get_inner_mut();
                if let Err(e) = sockets.poll(&mut events, Some(Duration::ZERO)) {
                    if e.kind() == io::ErrorKind::Interrupted {
                        continue;
                    }
                    tracing::error!(error = %e, "parker poll failed");
                    break;
                }
                if events.is_empty() {
                    // Drained; input reported after this poll has a newer readiness tick
                    // and is not cleared.
                    ready.clear_ready();
                    break;
                }
                for event in events.iter() {
                    self.unpark(event.token().0 as u64, "socket", Some(&ticket));
                }
            }
        }
        stamper.retire();
    }

    fn unpark(&self, key: u64, why: &'static str, ticket: Option<&Ticket>) {
        // Nothing is parked before the thread started.
        let Some(started) = self.started.get() else {
            return;
        };
        let parked = {
            let mut st = self.state();
            let Some(p) = st.parked.remove(key) else {
                return;
            };
            p.conn.kick_rx.clear_parked();
            p
        };
        let _ = started
            .registry
            .deregister(&mut SourceFd(&parked.stream.as_raw_fd()));
        let Parked {
            mut conn,
            stream,
            _tracked,
            ..
        } = parked;
        tracing::debug!(connection = conn.id, client_id = %conn.info.client_id, key, why, "resuming");
        let ticket = ticket.map(Ticket::share);
        let span = super::connection_span(conn.id, conn.info.peer, Some(&conn.info.client_id));
        self.tracker.spawn_on(
            async move {
                conn.resume_socket(stream, ticket);
                super::drive(conn).await;
            }
            .instrument(span),
            &started.runtime,
        );
        // Only now that the resumed task is tracked.
        drop(_tracked);
    }

    /// The parker thread: resumes connections whose deadline passed. `poll` holds only
    /// the waker (sockets are watched by `watch_sockets`).
    fn run(self: Arc<Self>, mut poll: Poll) {
        let mut events = Events::with_capacity(4);
        let mut due: Vec<Key> = Vec::new();
        let mut last_trim = Instant::now();
        loop {
            let timeout = {
                let mut st = self.state();
                let now = self.ms(Instant::now());
                let tick = now.saturating_add(TICK.as_millis() as u64);
                let next = st.due.next_due().map_or(tick, |ms| ms.min(tick));
                st.thread_wakes_at = Some(next);
                Duration::from_millis(next.saturating_sub(now))
            };
            let timeout = Some(timeout);
            if let Err(e) = poll.poll(&mut events, timeout) {
                if e.kind() != io::ErrorKind::Interrupted {
                    tracing::error!(error = %e, "parker poll failed");
                    std::thread::sleep(Duration::from_millis(100));
                }
            }
            if self.stopped.load(Ordering::Acquire) {
                return;
            }
            {
                let mut st = self.state();
                let now = self.ms(Instant::now());
                // Keys of connections resumed since find nothing in `unpark`.
                st.due.take_due(now, &mut due);
            }
            for key in due.drain(..) {
                self.unpark(key, "deadline", None);
            }
            if self.trim_due(last_trim) {
                last_trim = Instant::now();
                let released = crate::memory::release_freed_heap();
                tracing::debug!(
                    released,
                    elapsed_us = last_trim.elapsed().as_micros() as u64,
                    "gave freed memory back after parking"
                );
            }
        }
    }

    /// Whether enough connections parked, and parking has settled, to give their freed
    /// tasks back to the operating system now (resets the count when it is).
    fn trim_due(&self, last_trim: Instant) -> bool {
        let mut st = self.state();
        let settled = st.last_park.is_some_and(|t| t.elapsed() >= TRIM_QUIET);
        let due = st.parks_since_trim >= TRIM_AFTER_PARKS
            && (settled || last_trim.elapsed() >= TRIM_EVERY);
        if due {
            st.parks_since_trim = 0;
        }
        due
    }
}
