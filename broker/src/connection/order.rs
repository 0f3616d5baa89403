//! A connection's part in the node's input order (see [`crate::input_order`]): its
//! socket's readiness is watched with a [`StampingWaker`], the ticket stamped when the
//! reactor reported input is held until that input has been handled (up to its first
//! PUBLISH), and a PUBLISH is routed only once no input reported before it was read (on
//! any connection) is still unhandled.

use std::sync::Arc;
use std::task::{Context, Poll, Waker};

use super::Connection;
use crate::input_order::{StampingWaker, Ticket};

/// A connection's input-order state while it has a task; boxed, and dropped when the
/// connection parks (a parked connection holds one empty pointer for it). Aligned like
/// [`StampingWaker`], for the same reason.
#[repr(align(64))]
pub(super) struct InputOrderState {
    /// The stamping waker of the task the connection runs in, and the `Waker` made of it.
    stamper: Option<(Arc<StampingWaker>, Waker)>,
    /// Covers the input read and not yet handled, if the reactor had reported it.
    ticket: Option<Ticket>,
    /// Where the input read last stands: after every input reported before it was read.
    position: u64,
    /// Whether input reported before that input was still unhandled when its first PUBLISH
    /// was routed (None: not looked at yet). Looked at once per read: reading the shared
    /// oldest position for every PUBLISH of a busy stream cost more than the log.
    late: Option<bool>,
}

impl Connection {
    fn input_order_state(&mut self) -> &mut InputOrderState {
        let order = &self.broker.input_order;
        // Input read before (behind a CONNECT, say) comes after what is reported by now.
        self.input_order.get_or_insert_with(|| {
            Box::new(InputOrderState {
                stamper: None,
                ticket: None,
                position: order.now(),
                late: None,
            })
        })
    }

    /// Makes sure the socket's readiness is watched by a stamper waking the current task
    /// (a resumed connection runs in a new task).
    pub(super) async fn stamp_input(&mut self) {
        std::future::poll_fn(|cx| {
            self.stamp_input_for(cx.waker());
            Poll::Ready(())
        })
        .await;
    }

    fn stamp_input_for(&mut self, task: &Waker) {
        let order = self.broker.input_order.clone();
        let state = self.input_order_state();
        if let Some((stamper, _)) = &state.stamper {
            if stamper.wakes(task) {
                return;
            }
            stamper.retire();
        }
        state.stamper = Some(StampingWaker::new(order, task));
    }

    /// Leaves the input order: the connection parks or closes. Its ticket goes, and its
    /// stamper stamps nothing more (the reactor may keep that waker a little longer, and
    /// the task it wakes may be gone).
    pub(super) fn leave_input_order(&mut self) {
        if let Some(state) = self.input_order.take() {
            if let Some((stamper, _)) = &state.stamper {
                stamper.retire();
            }
        }
    }

    /// The waker to leave with the socket's readiness: the stamping one, unless the task
    /// has used up its budget. Then tokio answers a readiness poll by waking the waker it
    /// was given at once (a forced yield), and that wake-up must not stamp input that is
    /// not there: the stamp would hold publishes back until the connection reads again.
    fn stamping_waker(&self) -> Option<&Waker> {
        let (_, waker) = self.input_order.as_ref()?.stamper.as_ref()?;
        tokio::task::coop::has_budget_remaining().then_some(waker)
    }

    /// Readiness of the socket, registering the stamping waker when it is not ready (the
    /// plain task waker without one).
    pub(super) fn poll_input(&self, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.stamping_waker() {
            Some(waker) => self.socket.poll_read_ready(&mut Context::from_waker(waker)),
            None => self.socket.poll_read_ready(cx),
        }
    }

    /// Before a read: input stamped since the last read is covered by that stamp, unless
    /// an earlier ticket is still held (it covers it as well).
    pub(super) fn take_stamp(&mut self) {
        let Some(state) = self.input_order.as_deref_mut() else {
            return;
        };
        let Some(ticket) = state.stamper.as_ref().and_then(|(s, _)| s.take()) else {
            return;
        };
        if state.ticket.is_none() {
            state.ticket = Some(ticket);
        }
    }

    /// After a read that got input: it comes after every input the reactor had reported
    /// by now. Not after its own stamp only: epoll reports a socket where its first
    /// unreported event queued it, which may be an event before this input (the socket's
    /// registration, say), so within one report the order is not the order of arrival.
    pub(super) fn place_input(&mut self) {
        let now = self.broker.input_order.now();
        let state = self.input_order_state();
        state.position = now;
        state.late = None;
    }

    /// After a read: watch the socket again, so input arriving while this connection is
    /// busy is stamped when the reactor reports it, not when the connection reads it.
    pub(super) fn watch_input(&self) {
        if let Some(waker) = self.stamping_waker() {
            // Ready means more input is already there: the next read takes it.
            let _ = self.socket.poll_read_ready(&mut Context::from_waker(waker));
        }
    }

    /// The input read so far is handled: its ticket no longer holds publishes back.
    pub(super) fn release_ticket(&mut self) {
        if let Some(state) = self.input_order.as_deref_mut() {
            state.ticket = None;
        }
    }

    /// Before waiting for anything but input (storage, a client that does not read,
    /// earlier input): neither what was read nor what arrives meanwhile holds publishes
    /// back. Stamping starts again with the next read.
    pub(super) fn set_input_aside(&mut self) {
        if let Some(state) = self.input_order.as_deref_mut() {
            state.ticket = None;
            if let Some((stamper, _)) = &state.stamper {
                stamper.pause();
            }
        }
    }

    /// Back from the parker: takes its socket again with the input that woke it, which
    /// `ticket` (the parker's, shared by every connection one report resumed) covers.
    pub(crate) fn resume_socket(&mut self, stream: std::net::TcpStream, ticket: Option<Ticket>) {
        self.input_order_state().ticket = ticket;
        match self.socket.resume(stream, &self.broker.hot) {
            Ok(true) => {
                self.last_rx = tokio::time::Instant::now();
                self.place_input();
            }
            Ok(false) => {}
            // The connection then ends as closed on its first read.
            Err(e) => tracing::warn!(error = %e, "cannot resume a parked socket"),
        }
    }

    /// The position of the input order where a PUBLISH about to be routed was read, if
    /// input reported before that is still unhandled (None: route it plainly). What this
    /// connection handled before the PUBLISH (a SUBSCRIBE, say) is in force by now, so
    /// its own ticket goes: two publishers read at once never hold each other back.
    pub(super) fn publish_order(&mut self) -> Option<u64> {
        let state = self.input_order_state();
        state.ticket = None;
        let position = state.position;
        let late = match state.late {
            Some(late) => late,
            None => {
                let late = !self.broker.input_order.is_clear_before(position);
                self.input_order_state().late = Some(late);
                late
            }
        };
        late.then_some(position)
    }

    /// Where the input being handled was reported, if a ticket covers it.
    pub(super) fn input_ticket_position(&self) -> Option<u64> {
        self.input_order
            .as_ref()?
            .ticket
            .as_ref()
            .map(|t| t.position())
    }

    /// Waits until no input reported before this connection's was read is unhandled.
    pub(super) async fn wait_for_earlier_input(&mut self) {
        self.set_input_aside();
        let order = self.broker.input_order.clone();
        let position = self.input_order_state().position;
        order.wait_clear_before(position).await;
        self.input_order_state().late = Some(false);
    }
}
