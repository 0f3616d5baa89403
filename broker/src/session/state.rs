//! What a session's state can tell and do by itself (under the session's lock).

use super::*;

impl SessionState {
    pub(super) fn new() -> SessionState {
        SessionState {
            protocol_level: 4,
            expiry_interval: 0,
            attachment: None,
            generation: 0,
            disconnected_at_ms: OptionalMs::NONE,
            subscriptions: HashMap::default(),
            queue: LazyBox::new(),
            inflight: LazyBox::new(),
            ids_in_use: None,
            incoming_qos2: LazyBox::new(),
            will: None,
            will_due_ms: OptionalMs::NONE,
            timers: None,
            next_packet_id: 1,
            next_seq: 1,
            removed: false,
            moved: false,
            pending_from: None,
            reserved_seqs: None,
            adopted_from: None,
            arrived_from: None,
            earlier_from: None,
            arrivals: None,
            delivered: None,
            redeliver: None,
            redirected: None,
            came_at_index: None,
            routed_while_prepared: None,
            wake_held: false,
            stored_for_connect: false,
            last_info: None,
        }
    }

    /// The registration at log index `index` brought this session here from another node
    /// (0: unknown). A forward routed below it was routed while another node held the
    /// session, and may have reached the client there (see [`MayHave`]); those queued
    /// while the session was prepared for this CONNECT, before the index was known, go
    /// out as possible redeliveries (with DUP) too: a forward that reached this node
    /// late (its stream held up by a stopped or dying node) was otherwise sent as new.
    pub fn came_at(&mut self, index: u64) {
        self.came_at_index = Some(index).filter(|i| *i > 0);
        let prepared = self.routed_while_prepared.take();
        let (Some(prepared), Some(came)) = (prepared, self.came_at_index) else {
            return;
        };
        let below: std::collections::HashSet<u64> = prepared
            .into_iter()
            .filter(|(_, routed)| *routed < came)
            .map(|(seq, _)| seq)
            .collect();
        if below.is_empty() {
            return;
        }
        // Only those still queued (some may have been sent or dropped meanwhile).
        let queued: Vec<u64> = self
            .queue
            .iter()
            .map(|q| q.seq)
            .filter(|seq| below.contains(seq))
            .collect();
        if !queued.is_empty() {
            self.redeliver
                .get_or_insert_with(Box::default)
                .extend(queued);
        }
    }

    /// Whether this session came here from node `node` with messages possibly still held
    /// for it there: adopted from it when it was marked down, or taken over from it while
    /// it could not hand the session over (`pending_from`). What other nodes still held
    /// for `node` when it was marked down may have been routed there for this session
    /// (before its takeover here applied on them), so such a message reaches it here.
    ///
    /// Also a session taken over from `node` whatever its hand-over did (not begun, still
    /// waiting for a paused holder, or done) when the publish, accepted at
    /// `published_at_ms`, may have been routed by a registry that did not know of the
    /// move yet ([`STALE_ROUTE_MS`] after it began here): such a publish was held for
    /// `node`, never reached it, and no hand-over brings it. Without this, a takeover
    /// whose hand-over still waited for a paused holder when the holder was marked down
    /// lost what the holder's peers had queued for it (issue 14, chaos seed 42), as did
    /// one whose holder handed over and stopped with forwards for it still queued.
    pub fn came_from(&self, node: skein_seam::NodeId, published_at_ms: u64) -> bool {
        self.adopted_from == Some(node)
            || self.pending_from.is_some_and(|(n, _)| n == node)
            || [self.arrived_from, self.earlier_from]
                .into_iter()
                .flatten()
                .any(|(n, at)| n == node && published_at_ms < at.saturating_add(STALE_ROUTE_MS))
    }

    /// Only by the takeover (see [`SessionState::came_from`]): the publish may also have
    /// reached the session directly.
    pub fn came_from_by_takeover_only(
        &self,
        node: skein_seam::NodeId,
        published_at_ms: u64,
    ) -> bool {
        self.adopted_from != Some(node)
            && self.pending_from.is_none_or(|(n, _)| n != node)
            && self.came_from(node, published_at_ms)
    }

    /// Notes that this session comes here from `node` now (see `arrived_from`); a note of
    /// the same node is kept with its earlier time.
    pub fn note_arrival_from(&mut self, node: skein_seam::NodeId, now_ms: u64) {
        if self.arrived_from.is_none_or(|(n, _)| n != node) {
            self.arrived_from = Some((node, now_ms));
        }
    }

    /// Notes that a hand-over here named `node` as an earlier holder (see
    /// `earlier_from`); a note of the same node is kept with its earlier time.
    pub fn note_earlier_from(&mut self, node: skein_seam::NodeId, now_ms: u64) {
        if self.earlier_from.is_none_or(|(n, _)| n != node) {
            self.earlier_from = Some((node, now_ms));
        }
    }

    pub fn is_persistent(&self) -> bool {
        self.expiry_interval > 0
    }

    /// Whether `message` is queued or in flight here, or among the last ones the client
    /// acknowledged here. A scan: for the rare publish that may be a copy.
    pub fn has_publish(&self, message: &Message) -> bool {
        // A publish id names a publish cluster-wide: compared directly, without hashing
        // every queued message's topic and payload into its `publish_key`.
        let key = message.publish_id.is_none().then(|| publish_key(message));
        let same = |m: &Message| match (message.publish_id, m.publish_id) {
            (Some(a), Some(b)) => a == b,
            (None, None) => key == Some(publish_key(m)),
            _ => false,
        };
        self.queue.iter().any(|q| same(&q.delivery.message))
            || self.inflight.iter().any(|f| same(&f.delivery.message))
            || message
                .publish_id
                .is_some_and(|id| self.delivered.as_ref().is_some_and(|d| d.contains(id)))
    }

    /// Attaches the connection described by `info`.
    pub fn attach(&mut self, attachment: Attachment, info: Arc<ClientInfo>) {
        self.attachment = Some(attachment);
        self.last_info = Some(info);
        self.adopted_from = None;
    }

    /// The attached connection's client.
    pub fn attached_info(&self) -> Option<&Arc<ClientInfo>> {
        self.attachment.as_ref().and(self.last_info.as_ref())
    }

    pub fn is_online(&self) -> bool {
        self.attachment.is_some()
    }

    pub fn is_attached_to(&self, connection_id: u64) -> bool {
        self.attachment
            .as_ref()
            .is_some_and(|a| a.connection_id == connection_id)
    }

    /// Forget everything but the identity (clean start, or the session ended).
    pub fn clear(&mut self) {
        let generation = self.generation;
        let attachment = self.attachment.take();
        let last_info = self.last_info.take();
        // Some holder still lists the session: its release resets this.
        let wake_held = self.wake_held;
        self.cancel_timers();
        *self = SessionState::new();
        self.generation = generation;
        self.attachment = attachment;
        self.wake_held = wake_held;
        // Describes the attached connection (or the last one): not session state.
        self.last_info = last_info;
    }

    /// The token that cancels this offline period's timers.
    pub fn timer_token(&mut self) -> CancellationToken {
        self.timers
            .get_or_insert_with(CancellationToken::new)
            .clone()
    }

    /// Cancels every timer armed for the session (it is being attached or cleared).
    pub fn cancel_timers(&mut self) {
        if let Some(t) = self.timers.take() {
            t.cancel();
        }
    }

    pub fn next_seq(&mut self) -> u64 {
        let s = self.next_seq;
        self.next_seq += 1;
        s
    }

    /// Sets `n` sequence numbers aside (the first is returned) for messages that go before
    /// everything queued from now on: a session's messages fetched from the node that
    /// held it, while new ones already arrive here.
    pub fn reserve_seqs(&mut self, n: u64) -> u64 {
        // What arrives from now on may also come with the hand-over.
        self.arrivals.get_or_insert_with(Box::default);
        let first = self.next_seq;
        self.next_seq = self.next_seq.saturating_add(n);
        first
    }

    /// Queues `q` in sequence order (before the messages with higher sequences).
    pub fn insert_queued(&mut self, q: Queued) {
        let at = self.queue.partition_point(|other| other.seq < q.seq);
        self.queue.insert(at, q);
    }

    /// A packet id not used by any in-flight message; None when all 65535 are taken.
    pub fn allocate_packet_id(&mut self) -> Option<u16> {
        if self.inflight.len() >= u16::MAX as usize {
            return None;
        }
        loop {
            let id = self.next_packet_id;
            self.next_packet_id = if id == u16::MAX { 1 } else { id + 1 };
            if !self.id_in_use(id) {
                return Some(id);
            }
        }
    }

    pub fn id_in_use(&self, id: u16) -> bool {
        match &self.ids_in_use {
            Some(bits) => bits[id as usize / 64] & (1 << (id % 64)) != 0,
            None => self.inflight.iter().any(|f| f.packet_id == id),
        }
    }

    fn set_id(&mut self, id: u16, used: bool) {
        if let Some(bits) = &mut self.ids_in_use {
            let (word, bit) = (id as usize / 64, 1u64 << (id % 64));
            if used {
                bits[word] |= bit;
            } else {
                bits[word] &= !bit;
            }
        }
    }

    pub fn push_inflight(&mut self, f: Inflight) {
        if self.ids_in_use.is_none() && self.inflight.len() >= ID_BITMAP_FROM {
            let mut bits = Box::new([0u64; 1024]);
            for g in self.inflight.iter() {
                bits[g.packet_id as usize / 64] |= 1 << (g.packet_id % 64);
            }
            self.ids_in_use = Some(bits);
        }
        self.set_id(f.packet_id, true);
        self.inflight.push_back(f);
    }

    pub fn remove_inflight(&mut self, pos: usize) -> Option<Inflight> {
        let f = self.inflight.remove(pos)?;
        self.set_id(f.packet_id, false);
        if self.inflight.is_empty() {
            self.ids_in_use = None;
        }
        Some(f)
    }

    pub fn take_inflight(&mut self) -> VecDeque<Inflight> {
        self.ids_in_use = None;
        self.inflight.take()
    }

    /// Gives back the memory of empty queues (the connection is going idle or away).
    pub fn release_idle_memory(&mut self) {
        self.queue.release_if_empty();
        self.inflight.release_if_empty();
        self.incoming_qos2.release_if_empty();
    }

    pub fn to_stored(&self, client_id: &ClientId) -> StoredSession {
        let mut subscriptions: Vec<StoredSubscription> = self
            .subscriptions
            .iter()
            .map(|(filter, s)| StoredSubscription {
                filter: filter.clone(),
                qos: s.options.qos as u8,
                no_local: s.options.no_local,
                retain_as_published: s.options.retain_as_published,
                retain_handling: s.options.retain_handling,
                subscription_identifier: s.subscription_id,
            })
            .collect();
        subscriptions.sort_by(|a, b| a.filter.cmp(&b.filter));
        StoredSession {
            client_id: client_id.as_str().to_owned(),
            protocol_level: self.protocol_level,
            session_expiry_interval: self.expiry_interval,
            disconnected_at_ms: self.disconnected_at_ms.get(),
            subscriptions,
            pending_will: match (&self.will, self.will_due_ms.get()) {
                (Some(will), Some(due)) => {
                    // A will waiting for its delay is stored as the message it will become.
                    let message = Message::from_will((**will).clone(), client_id.clone(), None);
                    Some((message.to_stored(&[]), due))
                }
                _ => None,
            },
        }
    }
}
