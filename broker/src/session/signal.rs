//! How a session reaches the connection attached to it: the connection's signal (kicks
//! and wake-ups) and wake-ups held while a batch of messages is routed. A parked
//! connection is resumed through [`Unpark`], which the server's parker implements: the
//! sessions sit below the connections and the parker.

use std::sync::Arc;

use tokio::sync::Notify;

use super::Session;

/// Why a connection is told to go away by someone else.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kick {
    /// The same client id connected again.
    TakenOver = 0,
    /// An operator kicked it.
    Administrative = 1,
    /// The node is shutting down.
    ShuttingDown = 2,
    /// The token the client authenticated with has expired.
    AuthExpired = 3,
    /// The cluster marked this node down meanwhile (it was paused or cut off): the client
    /// went offline cluster-wide and its session is another node's now.
    NodeDown = 4,
    /// The client's certificate stopped being active (an operator revoked or deactivated
    /// it, on any node).
    CertificateDisabled = 5,
}

/// Resumes a parked connection: implemented by the server's parker
/// (`connection/park.rs`), so that a session's signal can resume its connection without
/// knowing how parking works.
pub trait Unpark: Send + Sync + 'static {
    /// Resumes the connection parked under `key`, if it still is.
    fn unpark(&self, key: u64, why: &'static str);

    /// The parker itself, so that a connection can park with the parker its signal holds
    /// (the connection knows the concrete type).
    fn as_any(&self) -> &dyn std::any::Any;
}

/// A parker as a connection's signal holds it. One thin pointer (to a boxed `dyn`) rather
/// than an `Arc<dyn Unpark>`: the signal is in every connection, and a wide pointer would
/// move it to a larger allocation.
#[derive(Clone)]
pub struct Unparker(Arc<Box<dyn Unpark>>);

impl Unparker {
    pub fn new(parker: impl Unpark + 'static) -> Unparker {
        Unparker(Arc::new(Box::new(parker)))
    }

    fn unpark(&self, key: u64, why: &'static str) {
        self.0.unpark(key, why);
    }

    /// The parker behind this handle.
    pub fn parker(&self) -> &dyn std::any::Any {
        self.0.as_any()
    }
}

impl std::fmt::Debug for Unparker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Unparker").finish_non_exhaustive()
    }
}

/// The one thing an idle connection waits on besides its socket and keepalive: told to go
/// away (with the first reason only), or woken because its session queued something.
/// One signal for both keeps every idle connection's task small.
#[derive(Debug, Default)]
pub struct KickSignal {
    /// 0: none yet; otherwise `Kick as u8 + 1`.
    reason: std::sync::atomic::AtomicU8,
    /// A wake-up was sent since the connection last looked (see `take_pending`).
    pending: std::sync::atomic::AtomicBool,
    /// The connection's key in the parker while it is parked; 0 otherwise.
    parked: std::sync::atomic::AtomicU64,
    /// Where the connection parks (None: it never does, e.g. in unit tests).
    parker: Option<Unparker>,
    notify: Notify,
}

impl KickSignal {
    pub fn new() -> Arc<KickSignal> {
        Arc::new(KickSignal::default())
    }

    /// The signal of a connection that may park with `parker`.
    pub fn with_parker(parker: Unparker) -> Arc<KickSignal> {
        Arc::new(KickSignal {
            parker: Some(parker),
            ..KickSignal::default()
        })
    }

    /// False when the connection is already gone (nobody else holds the signal).
    pub fn send(self: &Arc<Self>, kick: Kick) -> bool {
        if Arc::strong_count(self) < 2 {
            return false;
        }
        let code = kick as u8 + 1;
        // SeqCst (here and in `wake`): a parking connection stores its key and then
        // reads these; whichever side is second sees the other.
        let _ = self.reason.compare_exchange(
            0,
            code,
            std::sync::atomic::Ordering::SeqCst,
            std::sync::atomic::Ordering::SeqCst,
        );
        self.notify.notify_one();
        self.resume_if_parked();
        true
    }

    /// Wakes the connection to send what its session queued. A wake-up sent while the
    /// connection is busy is kept (one at most); a parked connection is resumed.
    pub fn wake(&self) {
        use std::sync::atomic::Ordering::SeqCst;
        // Written only when it changes: the connection's thread uses this line too, and a
        // store per delivered message bounced it between cores. (A SeqCst load is a plain
        // load on x86 and keeps the argument in `send`.)
        if !self.pending.load(SeqCst) {
            self.pending.store(true, SeqCst);
        }
        self.notify.notify_one();
        self.resume_if_parked();
    }

    fn resume_if_parked(&self) {
        let key = self.parked.load(std::sync::atomic::Ordering::SeqCst);
        if key != 0 {
            if let Some(parker) = &self.parker {
                parker.unpark(key, "signal");
            }
        }
    }

    /// Whether a wake-up arrived since the last call (the connection calls it before it
    /// looks at its session's queue).
    pub fn take_pending(&self) -> bool {
        use std::sync::atomic::Ordering::SeqCst;
        // Only written when set, for the same reason as in `wake`.
        self.pending.load(SeqCst) && self.pending.swap(false, SeqCst)
    }

    /// A kick or an unseen wake-up: a connection about to park must not sleep on it.
    pub fn needs_attention(&self) -> bool {
        use std::sync::atomic::Ordering::SeqCst;
        self.reason.load(SeqCst) != 0 || self.pending.load(SeqCst)
    }

    pub(crate) fn set_parked(&self, key: u64) {
        self.parked.store(key, std::sync::atomic::Ordering::SeqCst);
    }

    /// Whether a parked connection could be resumed through this signal.
    pub(crate) fn can_park(&self) -> bool {
        self.parker.is_some()
    }

    /// The parker the connection parks with, if it may park.
    pub fn unparker(&self) -> Option<&Unparker> {
        self.parker.as_ref()
    }

    pub(crate) fn clear_parked(&self) {
        self.parked.store(0, std::sync::atomic::Ordering::SeqCst);
    }

    /// Completes on the next kick or wake-up (or at once for one sent meanwhile); check
    /// `try_recv` to tell them apart.
    pub fn notified(&self) -> tokio::sync::futures::Notified<'_> {
        self.notify.notified()
    }

    /// The kick, if one was sent.
    pub fn try_recv(&self) -> Option<Kick> {
        match self.reason.load(std::sync::atomic::Ordering::Acquire) {
            1 => Some(Kick::TakenOver),
            2 => Some(Kick::Administrative),
            3 => Some(Kick::ShuttingDown),
            4 => Some(Kick::AuthExpired),
            5 => Some(Kick::NodeDown),
            6 => Some(Kick::CertificateDisabled),
            _ => None,
        }
    }

    /// Waits for a kick. Cancel-safe: a kick sent meanwhile is kept. Wake-ups that arrive
    /// meanwhile are spent, so the caller must look at its session's queue afterwards.
    pub async fn recv(&self) -> Kick {
        loop {
            if let Some(kick) = self.try_recv() {
                return kick;
            }
            self.notify.notified().await;
        }
    }
}

/// Wake-ups of connections whose sessions were queued messages, held until a batch of
/// messages is routed and then sent once per connection. A publisher's read holds dozens
/// of PUBLISHes: woken per message, a subscriber on the other worker drains each one as
/// it arrives and writes it alone (fan-out then ran at half speed in one run in two);
/// woken at the end, it takes the batch in one write. A session held by one batch is not
/// held again by another: the first release wakes it (a batch is synchronous work on at
/// most one read, so that is soon). Released on drop, so every early return still wakes.
#[derive(Default)]
pub struct HeldWakes {
    /// Each listed once (its `wake_held` is set while listed).
    pub(super) sessions: Vec<Arc<Session>>,
}

impl HeldWakes {
    /// Wakes the connections attached now (a takeover in between wakes the new one,
    /// which looks at the queue anyway). The wake-up itself happens outside the session's
    /// lock: it may resume a parked connection.
    pub fn release(&mut self) {
        // Popped one at a time: should a wake-up panic, the rest stay listed and the
        // drop during unwinding releases them (their flags would otherwise stay set).
        while let Some(session) = self.sessions.pop() {
            let kick = {
                let mut st = session.state();
                st.wake_held = false;
                st.attachment.as_ref().map(|a| a.kick.clone())
            };
            if let Some(kick) = kick {
                kick.wake();
            }
        }
    }
}

impl Drop for HeldWakes {
    fn drop(&mut self) {
        self.release();
    }
}
