//! The taking side of moving a session between nodes: a CONNECT here resumed a persistent
//! session another node held. Before the CONNACK, this node fetches that node's in-flight
//! and queued messages for the client page by page, writes each page to its own store
//! (flushed), and only then tells the holder to delete them; the holder's side is
//! `handover_holder.rs`.
//!
//! Order: the session's sequence numbers from the attach on are set aside
//! ([`HANDOVER_SEQS`]) before its subscriptions go into this node's index, so the fetched
//! messages sort before whatever is routed here meanwhile, in storage too. Fetched
//! in-flight messages keep the packet ids the client saw and are resent with DUP; one whose
//! id is taken here already (a leftover of an earlier stay) is queued instead.
//!
//! Bounded: the whole hand-over gives up after [`HANDOVER_WAIT`] (the holder is slow), or
//! after [`UNREACHABLE_WAIT`] of a holder that cannot be reached (it is down); the
//! CONNACK goes out all the same, and what was not fetched stays stored on the
//! holder (counted in `skein_session_handover_failures_total`). A page that was written
//! here but whose release did not reach the holder stays there until the next fetch from
//! it, which first has it deleted (the cursor is stored with the page, so this holds
//! across restarts of either node).

use std::sync::Arc;
use std::time::{Duration, Instant};

use skein_seam::{BoxFuture, BrokerHandleError, ClientId, ClusterError, NodeId};

use super::Broker;
use crate::session::{Session, ARRIVALS_GRACE_MS};

mod page;

type HashSet<T> = std::collections::HashSet<T, crate::hash::RandomState>;

/// Sequence numbers set aside for fetched messages: more than a session can hold.
const HANDOVER_SEQS: u64 = 1 << 32;

/// The longest a CONNACK waits for a session's messages from the node that held it.
const HANDOVER_WAIT: Duration = Duration::from_secs(3);

/// How long an offered hand-over waits for the session's lifecycle lock.
const OFFER_LOCK_WAIT: Duration = Duration::from_secs(2);

/// The longest a hand-over keeps trying a holder that cannot be reached.
const UNREACHABLE_WAIT: Duration = Duration::from_secs(1);

/// Messages asked for per page (the holder may send fewer).
const PAGE_MESSAGES: u32 = 256;

/// How many earlier holders a hand-over follows (each one a node that took the client
/// over and lost it again before it had fetched everything).
const MAX_CHAIN: u8 = 4;

/// What became of a refused CONNECT's registration, for [`Broker::undo_preindex`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PreindexOutcome {
    /// The registry answered: it did not commit.
    NotCommitted,
    /// It committed after the CONNECT was refused, or it may have (the proposal's outcome
    /// is unknown: a node cut off from the leader learns of a commit late, or never).
    MayHaveCommitted,
}

/// Why a hand-over stopped before the holder had handed everything over.
#[derive(Debug)]
enum Stop {
    /// The holder did not answer, or kept asking to wait, until the deadline.
    Unreachable(String),
    /// Another node owns the client now: it fetches the session.
    NotOwner,
    /// The holder's answer could not be used.
    Invalid(String),
    /// This node's store did not take the messages.
    Storage(String),
}

impl std::fmt::Display for Stop {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Stop::Unreachable(detail) => {
                write!(f, "the holder did not hand over in time: {detail}")
            }
            Stop::NotOwner => f.write_str("another node owns the client now"),
            Stop::Invalid(detail) => write!(f, "unusable answer: {detail}"),
            Stop::Storage(detail) => write!(f, "this node's store failed: {detail}"),
        }
    }
}

impl Stop {
    fn reason(&self) -> &'static str {
        match self {
            Stop::Unreachable(_) => "unreachable",
            Stop::NotOwner => "not_owner",
            Stop::Invalid(_) => "invalid",
            Stop::Storage(_) => "storage",
        }
    }
}

impl Broker {
    /// Fetches the messages node `holder` held for `session` under registration
    /// `holder_epoch` (and, first, what it says an earlier holder may still have), into the
    /// sequence numbers set aside from `first_seq` (see the module docs). The caller holds
    /// the session's lifecycle lock. Returns how many messages came.
    pub async fn take_session_over(
        &self,
        session: &Arc<Session>,
        holder: NodeId,
        holder_epoch: u64,
        first_seq: u64,
        live: bool,
    ) -> usize {
        let client_id = &session.client_id;
        let started = Instant::now();
        let mut taken = Taken {
            live,
            next_seq: first_seq,
            messages: 0,
            deadline: started + HANDOVER_WAIT,
            failure: None,
            // What the client acknowledged here already (on this connection or an
            // earlier one): a holder's copy of it would come a second time.
            delivered: session
                .state()
                .delivered
                .as_ref()
                .map(|d| d.ids().into_iter().collect())
                .unwrap_or_default(),
            visited: Vec::new(),
        };
        self.take_from(session, holder, holder_epoch, 0, &mut taken, MAX_CHAIN)
            .await;
        let failure = taken.failure.take();
        {
            let mut st = session.state();
            match &failure {
                Some((node, epoch, _)) => st.pending_from = Some((*node, *epoch)),
                None if st.pending_from.is_some_and(|(node, _)| node == holder) => {
                    st.pending_from = None;
                }
                None => {}
            }
            // Every holder handed over (sealed, they take no more): only forwards held
            // back for this node a while can still bring a copy (see
            // `session/arrivals.rs`).
            if failure.is_none() && st.pending_from.is_none() {
                if let Some(a) = st.arrivals.as_mut() {
                    a.keep_until(crate::message::now_ms() + ARRIVALS_GRACE_MS);
                }
            }
        }
        match failure {
            None => tracing::info!(
                %client_id,
                %holder,
                messages = taken.messages,
                elapsed_ms = started.elapsed().as_millis() as u64,
                "took the session's messages over from the node that held it"
            ),
            Some((node, _, stop)) => {
                crate::metrics::handover_failed(stop.reason());
                tracing::warn!(
                    %client_id,
                    %holder,
                    stopped_at = %node,
                    messages = taken.messages,
                    why = %stop,
                    "the session's hand-over stopped; what was not fetched stays on the node that held it"
                );
            }
        }
        taken.messages
    }

    /// Takes every page of `holder`'s, after what an earlier holder it names still has
    /// (up to `depth` such links). `written_elsewhere`: how far the node that named
    /// `holder` wrote its messages without a confirmed release (0: nothing); they come
    /// from that node, and `holder` deletes them first. Where it stopped is noted in
    /// `taken`: this holder's pages stop at their own failure, not at an earlier
    /// holder's.
    fn take_from<'a>(
        &'a self,
        session: &'a Arc<Session>,
        holder: NodeId,
        holder_epoch: u64,
        written_elsewhere: u64,
        taken: &'a mut Taken,
        depth: u8,
    ) -> BoxFuture<'a, ()> {
        Box::pin(async move {
            if let Err(stop) = self
                .fetch_all(
                    session,
                    holder,
                    holder_epoch,
                    written_elsewhere,
                    taken,
                    depth,
                )
                .await
            {
                // Over an earlier holder's failure: this holder still has messages, and
                // names the earlier one itself.
                taken.failure = Some((holder, holder_epoch, stop));
            }
        })
    }

    async fn fetch_all(
        &self,
        session: &Arc<Session>,
        holder: NodeId,
        holder_epoch: u64,
        written_elsewhere: u64,
        taken: &mut Taken,
        depth: u8,
    ) -> Result<(), Stop> {
        let client_id = &session.client_id;
        let me = self.cluster.node_id();
        let deadline = taken.deadline;
        let key = (client_id.clone(), holder);
        let here = self.unreleased_lock().get(&key).copied();
        let unreleased = match (here, written_elsewhere) {
            (here, 0) => here,
            (here, there) => Some(here.unwrap_or(0).max(there)),
        };
        if let Some(up_to) = unreleased {
            // Written (here, or by the node that named this holder, whose messages come
            // to this node) by an earlier hand-over whose release was lost: the holder
            // deletes it before anything is fetched again.
            self.until_deadline(deadline, || {
                self.cluster
                    .release_session(holder, client_id, holder_epoch, up_to)
            })
            .await?;
            self.released(&key);
        }
        let mut after = 0;
        loop {
            let page = self
                .until_deadline(deadline, || {
                    self.cluster.fetch_session(
                        holder,
                        client_id,
                        holder_epoch,
                        after,
                        PAGE_MESSAGES,
                    )
                })
                .await?;
            if after == 0 {
                self.adopt_incoming(session, &page.incoming_qos2)?;
                if !taken.live {
                    self.drop_delivered_there(session, &page.delivered)?;
                }
                // Acknowledged on this holder: an earlier holder's copies of them (fetched
                // next) are left out too, along the whole chain; and the session keeps
                // them for the node that takes it from here (the holders it names may
                // still offer copies of them later).
                taken.delivered.extend(page.delivered.iter().copied());
                if !page.delivered.is_empty() {
                    let mut st = session.state();
                    if st.is_persistent() {
                        let kept = st.delivered.get_or_insert_with(Box::default);
                        for id in &page.delivered {
                            kept.note(*id);
                        }
                    }
                }
                taken.visited.push(holder);
                // Noted before the earlier holder is asked (that can take seconds when it
                // is down): what its peers still hold for it may be redirected here at its
                // mark meanwhile, and the holder that named it is sealed now. Issue 14,
                // chaos seed 7 (`p2:874`): a client left a killed node for a node whose
                // hand-over from it gave up, then moved on; the mark's redirect reached
                // neither node's session.
                if let Some((earlier, _)) = page.earlier.filter(|(n, _)| *n != me) {
                    session
                        .state()
                        .note_earlier_from(earlier, crate::message::now_ms());
                }
                // Older than this holder's: fetched first. One this node held is here, and
                // one this hand-over fetched from already is not asked again (two holders
                // can name each other after a node was marked down and came back).
                if let Some((earlier, epoch)) = page
                    .earlier
                    .filter(|(n, _)| *n != me && *n != holder && !taken.visited.contains(n))
                {
                    if depth == 0 {
                        taken.failure.get_or_insert((
                            earlier,
                            epoch,
                            Stop::Invalid("too many earlier holders".into()),
                        ));
                    } else {
                        let written = page.earlier_released_up_to;
                        self.take_from(session, earlier, epoch, written, taken, depth - 1)
                            .await;
                    }
                }
            }
            let Some(last) = page.messages.last().map(|m| m.seq) else {
                return Ok(());
            };
            if last <= after {
                return Err(Stop::Invalid(format!(
                    "a page ending at {last}, asked for after {after}"
                )));
            }
            let complete = page.complete;
            // Written (and flushed) here, with how far (one transaction), before the
            // holder deletes anything: should the release not reach it, the next fetch
            // from it (after a restart of either node too) has it deleted first.
            let n = self.adopt_page(session, page, holder, last, taken)?;
            self.unreleased_lock().insert(key.clone(), last);
            if session.state().is_persistent() {
                self.flush_storage()
                    .await
                    .map_err(|e| Stop::Storage(e.to_string()))?;
            }
            crate::metrics::handover_messages("taken", n);
            taken.messages += n;
            self.until_deadline(deadline, || {
                self.cluster
                    .release_session(holder, client_id, holder_epoch, last)
            })
            .await?;
            self.released(&key);
            after = last;
            if complete {
                return Ok(());
            }
        }
    }

    /// A CONNECT here resumed `session`, which another node held or this one lost
    /// (`registration` says which): its subscriptions become the registry's, and what the
    /// node that held it has is fetched (into the sequence numbers `reserved` set aside,
    /// else into ones set aside now, before the subscriptions route anything here). The
    /// caller holds the session's lifecycle lock.
    pub async fn resume_here(
        &self,
        session: &Arc<Session>,
        registration: &skein_seam::Registration,
        reserved: Option<u64>,
    ) {
        let me = self.cluster.node_id();
        let handover = registration.previous.filter(|p| p.node != me).map(|p| {
            let mut st = session.state();
            st.note_arrival_from(p.node, crate::message::now_ms());
            let first = reserved.unwrap_or_else(|| st.reserve_seqs(HANDOVER_SEQS));
            (p, first)
        });
        self.replace_subscriptions(session, &registration.subscriptions);
        if let Some((previous, first_seq)) = handover {
            // Before the connection starts: it resends what is in flight.
            self.take_session_over(session, previous.node, previous.epoch, first_seq, false)
                .await;
        }
    }

    /// A CONNECT here attached to a resumed session: `rebuild` (it was held elsewhere, or
    /// lost here), see [`Broker::resume_here`]; else see [`Broker::fetch_pending`].
    pub async fn resume_attached(
        &self,
        session: &Arc<Session>,
        registration: &skein_seam::Registration,
        reserved: Option<u64>,
        rebuild: bool,
    ) {
        if rebuild {
            self.resume_here(session, registration, reserved).await;
        } else {
            self.fetch_pending(session).await;
        }
    }

    /// A connection attaches here to a session whose older messages may still be on
    /// another node (`pending_from`): the node it was adopted from when that node was
    /// marked down (a node that was only paused may even have delivered some to its old
    /// connection before it learned of the mark, and knows which ones the client
    /// acknowledged there), or a holder an earlier hand-over could not reach. Fetched
    /// before the CONNACK, as at a takeover (bounded alike: a node that is really down
    /// costs [`UNREACHABLE_WAIT`]); the copies the client has are left out. Nothing when
    /// no node is pending. The caller holds the lifecycle lock.
    pub async fn fetch_pending(&self, session: &Arc<Session>) {
        let (dead, epoch, first_seq) = {
            let mut st = session.state();
            let me = self.cluster.node_id();
            let Some((dead, epoch)) = st.pending_from.filter(|(n, _)| *n != me) else {
                return;
            };
            (dead, epoch, st.reserve_seqs(HANDOVER_SEQS))
        };
        self.take_session_over(session, dead, epoch, first_seq, false)
            .await;
    }

    /// Before a CONNECT that resumes a session another node owns is registered: the
    /// session's subscriptions (as the registry has them now) go into this node's index,
    /// so that what other nodes route here once the registration applies there finds it.
    /// Until the connection attaches, only forwarded messages are queued for it (this
    /// node's own publishes still go to the owner). True when there was a session to index;
    /// [`Broker::undo_preindex`] if the registration fails.
    ///
    /// With the CONNECT's session `expiry` above 0 the session is persistent from here on
    /// (its record stored, with the subscriptions): a forward routed to it is acknowledged
    /// to its sender, and so to its publisher, only once written and flushed, as for any
    /// persistent session. A new session here used to stay non-persistent until the
    /// connection attached: what it took meanwhile was acknowledged from memory only, and
    /// a SIGKILL before its delivery lost it (issue 14, chaos seed 7: `p0:996`).
    pub async fn preindex_resumed(&self, client_id: &ClientId, expiry: u32) -> bool {
        let Some((owner, subscriptions)) = self.cluster.session_subscriptions(client_id) else {
            return false;
        };
        if owner == self.cluster.node_id() || subscriptions.is_empty() {
            return false;
        }
        let session = self.get_or_create_session(client_id);
        let Ok(_lifecycle) = tokio::time::timeout(
            OFFER_LOCK_WAIT,
            session.lifecycle.lock(&self.lifecycle_waiters),
        )
        .await
        else {
            return false;
        };
        {
            let mut st = session.state();
            if st.removed || st.attachment.is_some() {
                return false;
            }
            st.moved = false;
            session.set_moving(true);
            // Before the index routes anything here: fetched messages go first.
            let first = st.reserve_seqs(HANDOVER_SEQS);
            st.reserved_seqs = Some(first);
            // What the owner's peers hold for it now, should it be marked down before it
            // hands the session over, is redirected here for this session too.
            st.note_arrival_from(owner, crate::message::now_ms());
            if expiry > 0 && !st.is_persistent() {
                st.expiry_interval = expiry;
                st.stored_for_connect = true;
            }
        }
        self.replace_subscriptions(&session, &subscriptions);
        let st = session.state();
        if st.is_persistent() {
            // Stored before the registration is proposed, so before anything is routed
            // here: a restart finds the session, and the messages stored for it, here.
            self.persist_session_locked(&session, &st);
        }
        true
    }

    /// The CONNECT [`Broker::preindex_resumed`] prepared for was refused. Unless a
    /// connection attached to the session meanwhile:
    /// - the registry here names this node as the owner (the registration committed after
    ///   all, and was released to an offline session here): the session stays, indexed,
    ///   as this node's offline session, with what was routed to it;
    /// - `outcome` says the registration did not commit: the session leaves the index,
    ///   and what the index routed here meanwhile is deleted (the owner got each itself);
    /// - it may have committed (the proposal's outcome is unknown): the session leaves
    ///   the index, and what was routed here stays with it. Deleted, it would be lost when
    ///   the registration did commit (the node cut off from the leader learns of it too
    ///   late): the other nodes routed those messages here, to the new owner, and to
    ///   nobody else. Kept, they go to the owner with the rest of the session (offered
    ///   or fetched as at a takeover), as a copy at worst.
    pub async fn undo_preindex(&self, client_id: &ClientId, outcome: PreindexOutcome) {
        let Some(session) = self.find_session(client_id) else {
            return;
        };
        let _lifecycle = session.lifecycle.lock(&self.lifecycle_waiters).await;
        let me = self.cluster.node_id();
        let owned_here = self
            .cluster
            .locate_client(client_id)
            .is_some_and(|owner| owner.node == me);
        let prepared = {
            let mut st = session.state();
            let reserved = st
                .reserved_seqs
                .take()
                .filter(|_| !st.removed && st.attachment.is_none());
            let stored_for_connect = std::mem::take(&mut st.stored_for_connect);
            st.routed_while_prepared = None;
            if let (Some(_), true) = (reserved, owned_here) {
                session.set_moving(false);
                if st.is_persistent() {
                    self.persist_session_locked(&session, &st);
                }
                tracing::info!(%client_id, queued = st.queue.len(), "the registration of a refused CONNECT committed: its session stays here, offline");
                return;
            }
            if let (Some(first), PreindexOutcome::NotCommitted) = (reserved, outcome) {
                st.arrivals = None;
                // What the index routed here for the registration that did not happen:
                // the node that still owns the session got each of these itself. Kept,
                // they would be offered to it later and come twice.
                let routed_here: Vec<u64> = st
                    .queue
                    .iter()
                    .map(|q| q.seq)
                    .filter(|seq| *seq >= first)
                    .collect();
                if !routed_here.is_empty() {
                    st.queue.retain(|q| q.seq < first);
                    if st.is_persistent() {
                        for seq in &routed_here {
                            if let Err(e) = self.store.queue_remove(client_id.as_str(), *seq) {
                                // Left on disk, it comes back as a stranded message after a
                                // restart: offered to the owner, which may deliver it twice.
                                tracing::warn!(%client_id, error = %e, "could not delete a message routed for a CONNECT that was not registered");
                            }
                        }
                    }
                    tracing::debug!(%client_id, dropped = routed_here.len(), "messages routed for a CONNECT that was not registered left to the owner");
                }
                // Stored only for that CONNECT, and holding nothing now: as if it had
                // never been prepared here (a record left behind would be restored as an
                // offline session of a client this node does not own).
                if stored_for_connect && st.queue.is_empty() && st.inflight.is_empty() {
                    st.expiry_interval = 0;
                    drop(st);
                    self.forget_stored_session(&session);
                    self.seal_moved(&session);
                    return;
                }
            }
            reserved.is_some()
        };
        if prepared {
            self.seal_moved(&session);
        }
    }

    /// Node `holder` holds messages of the session of `client_id`, which this node owns
    /// (stored there while it was down, or left by a hand-over that stopped): they are
    /// fetched as at a takeover, after what the session holds here already.
    pub(super) async fn adopt_offered_session(
        &self,
        client_id: &ClientId,
        holder: NodeId,
    ) -> Result<usize, BrokerHandleError> {
        let me = self.cluster.node_id();
        let owned = |b: &Broker| {
            b.cluster
                .locate_client(client_id)
                .filter(|owner| owner.node == me)
        };
        let Some(owner) = owned(self) else {
            return Err(BrokerHandleError::NotOwner(
                "this node does not own the client".into(),
            ));
        };
        if owner.clean_start {
            return Err(BrokerHandleError::Invalid(
                "the client's session started clean here: older messages are not its".into(),
            ));
        }
        let Some(session) = self.find_session(client_id) else {
            return Err(BrokerHandleError::NotOwner(
                "this node holds no session of the client".into(),
            ));
        };
        let _lifecycle = tokio::time::timeout(
            OFFER_LOCK_WAIT,
            session.lifecycle.lock(&self.lifecycle_waiters),
        )
        .await
        .map_err(|_| BrokerHandleError::NotYet("the session is busy".into()))?;
        let (first_seq, live) = {
            let mut st = session.state();
            if st.removed || st.moved || owned(self).is_none() {
                return Err(BrokerHandleError::NotOwner(
                    "the session left this node".into(),
                ));
            }
            (st.reserve_seqs(HANDOVER_SEQS), st.attachment.is_some())
        };
        tracing::info!(%client_id, %holder, live, "a node offers messages of a session owned here");
        Ok(self
            .take_session_over(&session, holder, 0, first_seq, live)
            .await)
    }

    /// The holder deleted what this node wrote up to the cursor of `key`: it goes.
    fn released(&self, key: &(ClientId, NodeId)) {
        if self.unreleased_lock().remove(key).is_none() {
            return;
        }
        if let Err(e) = self.store.handover_remove(key.0.as_str(), key.1 .0) {
            // Kept, it only has the holder delete again what it deleted already.
            tracing::debug!(client_id = %key.0, holder = %key.1, error = %e, "could not remove a hand-over cursor");
        }
    }

    /// The session of `client_id` here ended or started clean: the cursors of what other
    /// nodes held of the old one go (a later session there counts its messages anew).
    pub(super) fn forget_cursors(&self, client_id: &ClientId) {
        {
            let mut unreleased = self.unreleased_lock();
            let before = unreleased.len();
            unreleased.retain(|(c, _), _| c != client_id);
            if unreleased.len() == before {
                return;
            }
        }
        if let Err(e) = self.store.handover_forget(client_id.as_str()) {
            tracing::info!(%client_id, error = %e, "could not remove the hand-over cursors of an ended session");
        }
    }

    /// The hand-over cursors stored by an earlier run.
    pub(super) fn load_unreleased(&self) -> Result<(), skein_storage::StorageError> {
        let cursors = self.store.handover_load()?;
        let mut unreleased = self.unreleased_lock();
        for (client_id, holder, up_to) in cursors {
            unreleased.insert((ClientId::new(&client_id), NodeId(holder)), up_to);
        }
        Ok(())
    }

    pub(super) fn unreleased_lock(
        &self,
    ) -> std::sync::MutexGuard<'_, crate::hash::HashMap<(ClientId, NodeId), u64>> {
        self.unreleased.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Calls `call` until it succeeds or says something other than "not now", waiting a
    /// little longer each time: while the holder answers that it is busy, until
    /// `deadline`; while it cannot be reached, for [`UNREACHABLE_WAIT`] at most (a node
    /// that is down should not hold every CONNECT of its sessions for long).
    async fn until_deadline<T, F, Fut>(&self, deadline: Instant, mut call: F) -> Result<T, Stop>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<T, ClusterError>>,
    {
        let mut pause = Duration::from_millis(10);
        let mut unreachable_since: Option<Instant> = None;
        loop {
            let give_up_at = match call().await {
                Ok(answer) => return Ok(answer),
                Err(ClusterError::NotOwner) => return Err(Stop::NotOwner),
                Err(ClusterError::Invalid(detail)) => return Err(Stop::Invalid(detail)),
                Err(ClusterError::Busy(detail)) => {
                    unreachable_since = None;
                    (deadline, detail)
                }
                Err(e @ (ClusterError::Unavailable(_) | ClusterError::NotFound(_))) => {
                    let since = *unreachable_since.get_or_insert_with(Instant::now);
                    ((since + UNREACHABLE_WAIT).min(deadline), e.to_string())
                }
            };
            let (until, detail) = give_up_at;
            if Instant::now() + pause >= until || self.shutdown.is_cancelled() {
                return Err(Stop::Unreachable(detail));
            }
            tracing::debug!(%detail, "the node that held the session asks to wait");
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(Duration::from_millis(200));
        }
    }

    /// The client's QoS 2 publishes the holder acknowledged with PUBREC: a resend here is
    /// recognised as a duplicate, and its PUBREL answered.
    fn adopt_incoming(&self, session: &Session, ids: &[u16]) -> Result<(), Stop> {
        let mut st = session.state();
        let persistent = st.is_persistent();
        for id in ids {
            if st.incoming_qos2.insert(*id) && persistent {
                self.store
                    .incoming_put(session.client_id.as_str(), *id)
                    .map_err(|e| Stop::Storage(e.to_string()))?;
            }
        }
        Ok(())
    }

    /// The client acknowledged the publishes `delivered` on the holder: the copies of them
    /// queued here (they reached this node directly while the client moved, or were
    /// queued here before; not sent yet: the connection has not started) go.
    fn drop_delivered_there(&self, session: &Session, delivered: &[u64]) -> Result<(), Stop> {
        if delivered.is_empty() {
            return Ok(());
        }
        let delivered: HashSet<u64> = delivered.iter().copied().collect();
        let mut st = session.state();
        let persistent = st.is_persistent();
        let gone: Vec<u64> = st
            .queue
            .iter()
            .filter(|q| {
                q.delivery
                    .message
                    .publish_id
                    .is_some_and(|id| delivered.contains(&id))
            })
            .map(|q| q.seq)
            .collect();
        if gone.is_empty() {
            return Ok(());
        }
        if persistent {
            for seq in &gone {
                self.store
                    .queue_remove(session.client_id.as_str(), *seq)
                    .map_err(|e| Stop::Storage(e.to_string()))?;
            }
        }
        st.queue.retain(|q| !gone.contains(&q.seq));
        drop(st);
        crate::metrics::handover_messages("duplicate", gone.len());
        tracing::debug!(
            client_id = %session.client_id,
            dropped = gone.len(),
            "copies of messages the client acknowledged on the node that held it left out"
        );
        Ok(())
    }
}

/// Where the fetched messages go in the session's sequence, how many came, until when
/// to try, and where the hand-over first stopped (the node, its epoch, why).
struct Taken {
    /// A connection is attached and running: it never resends in-flight messages under
    /// ids it did not send, so what was in flight elsewhere is queued anew (QoS 1/2 allow
    /// the redelivery) and a released QoS 2 message, whose PUBCOMP it cannot await, ends.
    live: bool,
    next_seq: u64,
    messages: usize,
    deadline: Instant,
    failure: Option<(NodeId, u64, Stop)>,
    /// Publish ids the client acknowledged: on this node (its session's last ones) and
    /// on each holder whose first page came (`SessionHandover.delivered`). A handed-over
    /// copy of one is left out.
    delivered: HashSet<u64>,
    /// The holders whose first page came, in order.
    visited: Vec<NodeId>,
}
