//! The node's shared state: the session registry, the subscription index, other nodes'
//! interest, retained messages, and the routing of a publish to every matching session
//! here and every other node with interest.

use std::hash::{Hash, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use skein_storage::Store;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::codec::{QoS, SubscriptionOptions};
use crate::config::Config;
use crate::events::{raise, EventBus, SessionEnd};
use crate::hash::HashMap;
use crate::input_order::{InputOrder, LateCutoff};
use crate::message::{now_ms, Message};
use crate::retained::RetainedStore;
use crate::session::{OptionalMs, Session, Subscription};
use crate::topic::{self, RemoteInterest, TopicTree};

#[cfg(test)]
pub(crate) use forwarding::peers_double as forwarding_test_support;
pub use forwarding::{ForwardTickets, Forwards};
pub use handover_taker::PreindexOutcome;
use skein_seam::ClientId;
use skein_seam::ClusterHandle;

mod broker_handle;
mod certificate_users;
mod cluster_sync;
mod forwarding;
mod handover_holder;
mod handover_taker;
mod marks_applied;
mod moved_away;
mod node_down;
mod routing;
mod storage_monitor;

/// A session as a key of the subscription index: equal when the client ids are.
#[derive(Clone)]
pub struct SessionRef(pub Arc<Session>);

impl PartialEq for SessionRef {
    fn eq(&self, other: &Self) -> bool {
        self.0.client_id == other.0.client_id
    }
}
impl Eq for SessionRef {}
impl Hash for SessionRef {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.0.client_id.hash(state)
    }
}

#[derive(Debug, Clone)]
pub struct SubEntry {
    pub options: SubscriptionOptions,
    pub subscription_id: Option<u32>,
}

/// What routing a publish did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct RouteOutcome {
    /// Sessions on this node that got it.
    pub matched: usize,
    /// Other nodes it was forwarded to for their subscribers (a retained message also goes
    /// to the nodes without: those are not counted here).
    pub remote: usize,
    /// Something was written to storage: flush before acknowledging the publisher.
    pub needs_flush: bool,
    /// Something the message needed on disk (a persistent session's copy, the retained
    /// message) was not stored: the publisher must not be told it was. While the store
    /// takes no new data, `route_or_refuse` refuses such a QoS 1/2 message whole
    /// (`matched` is 0: no session has it); `route` delivers the copies that need no disk.
    pub not_stored: Option<crate::storage_refusal::NotStored>,
    /// Not routed: it matched nobody while input reported before it was unhandled (see
    /// [`Broker::route_holding_wakes`]).
    pub deferred: bool,
    /// The forwards to other nodes: a QoS 1/2 publisher is acknowledged once they all
    /// succeed (dropping them withdraws nothing: a QoS 0 publish does not wait).
    pub forwards: Forwards,
}

/// What adding a subscription found.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Subscribed {
    /// The session had this subscription already (it was replaced).
    pub existed: bool,
    /// The late log's end when it was added (see [`InputOrder::late_cutoff`]).
    pub late_cutoff: LateCutoff,
    /// A shared subscription whose group had no other member.
    pub alone_in_group: bool,
}

pub struct Broker {
    pub config: Config,
    pub store: Store,
    pub cluster: Arc<dyn ClusterHandle>,
    pub events: EventBus,
    /// Per-message counters, registered once.
    pub hot: Arc<crate::metrics::HotCounters>,
    sessions: Mutex<HashMap<ClientId, Arc<Session>>>,
    subscriptions: RwLock<TopicTree<SessionRef, SubEntry>>,
    /// Other nodes' subscriptions, as the cluster reports them: where publishes go beyond
    /// this node.
    pub remote_interest: RemoteInterest,
    pub retained: RetainedStore,
    next_connection_id: AtomicU64,
    next_assigned_id: AtomicU64,
    pub shutdown: CancellationToken,
    pub tasks: TaskTracker,
    /// Every connection task (the listener's and resumed parked ones), drained on shutdown.
    pub connections: TaskTracker,
    /// The order in which input reached the node: a publish is routed only after the
    /// input that reached the node before it (a SUBSCRIBE, say) has been handled.
    pub input_order: Arc<InputOrder>,
    /// The node's connection limit (`max_connections`): the listener takes a slot per
    /// accepted socket; a connection gives it back when it ends.
    pub connection_slots: Arc<tokio::sync::Semaphore>,
    /// The MQTT server's parker as new connections' signals hold it, to be resumed when
    /// parked; set when the server starts (unset: connections never park).
    parker: std::sync::OnceLock<crate::session::Unparker>,
    /// Where tasks wait for a session's lifecycle lock.
    pub lifecycle_waiters: crate::lifecycle_lock::LifecycleWaiters,
    /// Connections told to end because another node took their session over, by
    /// connection id: the taker, for the disconnect event (see `cluster_sync.rs`).
    remote_takers: Mutex<HashMap<u64, skein_seam::NodeId>>,
    /// Hand-overs whose last release may not have reached the holder: (client, holder) →
    /// the holder's sequence written here up to (also stored, see
    /// `skein_storage::Store::handover_put`). Sent again before anything else is fetched
    /// from that holder for that client, so what is here already is not fetched twice.
    unreleased: Mutex<HashMap<(ClientId, skein_seam::NodeId), u64>>,
    /// Persistent sessions sealed here lately (moved to another node), by their filters:
    /// a forward routed here by an older registry goes on to the owner (`moved_away.rs`).
    moved_away: moved_away::MovedAway,
    /// Nodes whose down mark was applied here: a message redirected here as to an
    /// adopter waits for it (`marks_applied.rs`).
    marks_applied: marks_applied::MarksApplied,
    /// False from a start that restored sessions until they were reconciled with the
    /// registry (`cluster_sync.rs`): forwarded publishes wait for it, so that one meant
    /// for a session that moved away while this node was down is not taken here for
    /// nobody (a session sealed before the restart comes back without subscriptions).
    reconciled: tokio::sync::watch::Sender<bool>,
    /// This broker, for the tasks its synchronous seam callbacks start.
    me: std::sync::Weak<Broker>,
    /// The ACL file's rules in force (`acl_file`); None: no ACL.
    pub acl: Option<Arc<crate::acl::AclState>>,
    /// The HTTP authenticator (`auth_http_url`); None: off.
    pub auth_http: Option<Arc<crate::auth_http::HttpAuth>>,
    /// The connections that use a device certificate, ended when it stops being active.
    pub certificate_users: certificate_users::CertificateUsers,
    /// The HTTP authorizer (`auth_http_acl_url`); None: off.
    pub authz_http: Option<Arc<crate::auth_http::authz::HttpAuthz>>,
}

impl Broker {
    pub fn new(
        config: Config,
        store: Store,
        cluster: Arc<dyn ClusterHandle>,
        events: EventBus,
        shutdown: CancellationToken,
    ) -> Result<Arc<Broker>, skein_storage::StorageError> {
        let retained = RetainedStore::load(store.clone())?;
        let connections = TaskTracker::new();
        let connection_slots = Arc::new(tokio::sync::Semaphore::new(config.max_connections));
        let input_order = Arc::new(InputOrder::new(
            metrics::counter!(crate::metrics::PUBLISH_ORDER_WAITS),
            metrics::counter!(crate::metrics::PUBLISH_ORDER_LATE_DELIVERIES),
        ));
        let acl = config
            .acl
            .clone()
            .map(|rules| crate::acl::AclState::new(config.acl_file.clone(), rules));
        let auth_http = crate::auth_http::HttpAuth::from_config(&config);
        let authz_http = crate::auth_http::authz::HttpAuthz::from_config(&config);
        let broker = Arc::new_cyclic(|me| Broker {
            me: me.clone(),
            acl,
            auth_http,
            certificate_users: certificate_users::CertificateUsers::default(),
            authz_http,
            remote_takers: Mutex::new(HashMap::default()),
            unreleased: Mutex::new(HashMap::default()),
            moved_away: Default::default(),
            marks_applied: Default::default(),
            reconciled: tokio::sync::watch::Sender::new(true),
            connection_slots,
            config,
            store,
            cluster,
            events,
            hot: Arc::new(crate::metrics::HotCounters::register()),
            sessions: Mutex::new(HashMap::default()),
            subscriptions: RwLock::new(TopicTree::new()),
            remote_interest: RemoteInterest::new(),
            retained,
            next_connection_id: AtomicU64::new(1),
            next_assigned_id: AtomicU64::new(1),
            shutdown,
            tasks: TaskTracker::new(),
            input_order,
            connections,
            parker: std::sync::OnceLock::new(),
            lifecycle_waiters: Default::default(),
        });
        broker.configure_storage_guard();
        broker.restore_sessions()?;
        broker.restore_moved_away();
        broker.load_unreleased()?;
        Ok(broker)
    }

    /// Watches the ACL file for changes (and `hangup`, SIGHUP) until shutdown.
    pub fn spawn_acl_watch(&self, hangup: Option<tokio::signal::unix::Signal>) {
        if let Some(acl) = &self.acl {
            let poll = (self.config.acl_poll_ms > 0)
                .then(|| Duration::from_millis(self.config.acl_poll_ms));
            self.tasks
                .spawn(acl.clone().watch(hangup, poll, self.shutdown.clone()));
        }
    }

    /// Registers the MQTT server's parker (once; a second call changes nothing).
    pub fn set_parker(&self, parker: crate::session::Unparker) {
        let _ = self.parker.set(parker);
    }

    /// The parker new connections' signals get; None when no MQTT server runs.
    pub fn parker(&self) -> Option<&crate::session::Unparker> {
        self.parker.get()
    }

    pub fn next_connection_id(&self) -> u64 {
        self.next_connection_id.fetch_add(1, Ordering::Relaxed)
    }

    /// A client id for a client that sent an empty one; unique on this node and across restarts.
    pub fn assign_client_id(&self) -> String {
        let n = self.next_assigned_id.fetch_add(1, Ordering::Relaxed);
        format!("skein-{}-{:x}-{n}", self.config.node_id, now_ms())
    }

    fn registry(&self) -> std::sync::MutexGuard<'_, HashMap<ClientId, Arc<Session>>> {
        self.sessions.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn session_count(&self) -> usize {
        self.registry().len()
    }

    pub fn get_or_create_session(&self, client_id: &ClientId) -> Arc<Session> {
        self.registry()
            .entry(client_id.clone())
            .or_insert_with(|| Session::new(client_id.clone()))
            .clone()
    }

    pub fn find_session(&self, client_id: &ClientId) -> Option<Arc<Session>> {
        self.registry().get(client_id).cloned()
    }

    /// Every session on this node, online or offline (for the admin API); the registry
    /// lock is held only to clone the handles.
    pub fn sessions_snapshot(&self) -> Vec<Arc<Session>> {
        self.registry().values().cloned().collect()
    }

    /// How many stored queued messages are marked as ones their client may have already
    /// (`SessionState::redeliver`, in memory only). While there are any, a stop is not
    /// recorded as clean: the next start then sends everything queued with DUP.
    pub fn stored_redelivery_marks(&self) -> usize {
        self.sessions_snapshot()
            .iter()
            .map(|s| {
                let st = s.state();
                match &st.redeliver {
                    Some(marks) if st.is_persistent() && !st.removed => marks.len(),
                    _ => 0,
                }
            })
            .sum()
    }

    /// Tells the connection attached to `client_id` to go away (DISCONNECT 0x98, reason
    /// `kicked`); the session stays. False if no connection is attached.
    pub fn kick(&self, client_id: &ClientId) -> bool {
        let Some(session) = self.find_session(client_id) else {
            return false;
        };
        let st = session.state();
        st.attachment.as_ref().is_some_and(send_kick)
    }

    /// Tells every attached connection that the node is shutting down (they end with
    /// `go_away`). Connections still in their handshake look at the shutdown token once
    /// attached. Returns how many were told.
    pub fn kick_all_for_shutdown(&self) -> usize {
        self.sessions_snapshot()
            .iter()
            .filter(|s| {
                s.state()
                    .attachment
                    .as_ref()
                    .is_some_and(|a| a.kick.send(crate::session::Kick::ShuttingDown))
            })
            .count()
    }

    /// Ends `client_id`'s session for an operator. An attached connection is kicked and the
    /// session ends as it detaches; an offline one ends now, and its pending will goes out
    /// (a will is due when its session ends). False if there is no such session.
    pub async fn discard_session(&self, client_id: &ClientId) -> bool {
        let Some(session) = self.find_session(client_id) else {
            return false;
        };
        let _lifecycle = session.lifecycle.lock(&self.lifecycle_waiters).await;
        let will = {
            let mut st = session.state();
            if st.removed {
                return false;
            }
            if let Some(attachment) = &st.attachment {
                send_kick(attachment);
                // Detaching ends a session whose expiry is 0. Stored so too: a restart
                // before the detach must not bring the session back.
                st.expiry_interval = 0;
                self.persist_session_locked(&session, &st);
                return true;
            }
            st.will_due_ms = OptionalMs::NONE;
            (st.will.take(), st.disconnected_at_ms.get())
        };
        let (will, offline_since) = will;
        if let Some(will) = will {
            self.publish_will(client_id, will);
        }
        self.end_session(&session, SessionEnd::Discarded);
        self.release_ended_session(client_id, offline_since).await;
        true
    }

    fn restore_sessions(self: &Arc<Self>) -> Result<(), skein_storage::StorageError> {
        let now = now_ms();
        let unclean = self.store.last_stop() == skein_storage::LastStop::Unclean;
        let mut possibly_sent = 0;
        for stored in self.store.sessions()? {
            // Some may have moved away while this node was down (see `reconciled`).
            self.reconciled.send_replace(false);
            let id = stored.client_id.clone();
            let session = Session::restore(
                &stored,
                self.store.queue_load(&id)?,
                self.store.inflight_load(&id)?,
                self.store.incoming_load(&id)?,
                now,
                unclean,
            );
            let subs: Vec<(String, Subscription)> = session
                .state()
                .subscriptions
                .iter()
                .map(|(f, s)| (f.clone(), s.clone()))
                .collect();
            for (filter, sub) in subs {
                self.index_subscription(&session, &filter, &sub);
            }
            self.registry()
                .insert(session.client_id.clone(), session.clone());
            let elapsed_ms = now.saturating_sub(stored.disconnected_at_ms.unwrap_or(now));
            let expiry = stored.session_expiry_interval;
            if expiry != u32::MAX && elapsed_ms >= expiry as u64 * 1000 {
                // It expired while the node was down: its will is due too.
                let will = session.state().will.take();
                if let Some(will) = will {
                    self.publish_will(&session.client_id, will);
                }
                self.end_session(&session, SessionEnd::Expired);
                continue;
            }
            let (generation, will_due) = {
                let st = session.state();
                possibly_sent += st.redeliver.as_ref().map_or(0, |r| r.len());
                (st.generation, st.will.as_ref().and(st.will_due_ms.get()))
            };
            if let Some(due) = will_due {
                self.schedule_will(&session, generation, due.saturating_sub(now));
            }
            self.schedule_expiry(&session, generation, expiry, elapsed_ms);
        }
        tracing::info!(
            sessions = self.session_count(),
            "restored persistent sessions"
        );
        if unclean {
            crate::metrics::marked_dup("unclean_restart", possibly_sent);
            tracing::warn!(
                messages = possibly_sent,
                "unclean shutdown: {possibly_sent} queued messages will be sent with DUP"
            );
        }
        Ok(())
    }

    /// Adds the subscription to the index.
    fn index_subscription(
        &self,
        session: &Arc<Session>,
        filter: &str,
        sub: &Subscription,
    ) -> Subscribed {
        let Ok((group, inner)) = topic::parse_subscription(filter) else {
            return Subscribed::default();
        };
        let mut tree = self
            .subscriptions
            .write()
            .unwrap_or_else(|e| e.into_inner());
        let existed = tree
            .subscribe(
                inner,
                group,
                SessionRef(session.clone()),
                SubEntry {
                    options: sub.options,
                    subscription_id: sub.subscription_id,
                },
            )
            .is_some();
        // Under the index's lock: set before the SUBACK, never behind a later change.
        self.events.set_dollar_receivers(
            tree.has_dollar_filters() || self.remote_interest.has_dollar_filters(),
        );
        Subscribed {
            existed,
            // Under the index's write lock: publishes are logged under its read lock.
            late_cutoff: self.input_order.late_cutoff(),
            alone_in_group: group.is_some_and(|g| tree.group_size(inner, g) == 1),
        }
    }

    /// Removes the subscription from the index; the QoS it had, if it was there.
    fn unindex_subscription(&self, session: &Arc<Session>, filter: &str) -> Option<QoS> {
        let (group, inner) = topic::parse_subscription(filter).ok()?;
        let mut tree = self
            .subscriptions
            .write()
            .unwrap_or_else(|e| e.into_inner());
        let removed = tree
            .unsubscribe(inner, group, &SessionRef(session.clone()))
            .map(|entry| entry.options.qos);
        self.events.set_dollar_receivers(
            tree.has_dollar_filters() || self.remote_interest.has_dollar_filters(),
        );
        removed
    }

    /// Subscribes `session` to a validated `filter`.
    pub fn subscribe(&self, session: &Arc<Session>, filter: &str, sub: Subscription) -> Subscribed {
        let subscribed = self.index_subscription(session, filter, &sub);
        let mut st = session.state();
        st.subscriptions.insert(filter.to_owned(), sub);
        if st.is_persistent() {
            self.persist_session_locked(session, &st);
        }
        subscribed
    }

    /// The QoS the removed subscription had been granted; None if it did not exist.
    pub fn unsubscribe(&self, session: &Arc<Session>, filter: &str) -> Option<QoS> {
        let unindexed = self.unindex_subscription(session, filter);
        let mut st = session.state();
        let removed = st
            .subscriptions
            .remove(filter)
            .map(|sub| sub.options.qos)
            .or(unindexed);
        if st.is_persistent() {
            self.persist_session_locked(session, &st);
        }
        removed
    }

    pub fn subscription_count(&self) -> usize {
        self.subscriptions
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .len()
    }

    pub fn persist_session_locked(&self, session: &Session, st: &crate::session::SessionState) {
        session.mark_stored();
        if let Err(e) = self.store.put_session(&st.to_stored(&session.client_id)) {
            crate::storage_refusal::write_failed(
                "persist a session",
                session.client_id.as_str(),
                &e,
            );
        }
    }

    /// Deletes the session's stored state, if it ever had any: clean sessions, the common
    /// case, never touch storage.
    pub fn forget_stored_session(&self, session: &Session) {
        if !session.take_stored() {
            return;
        }
        if let Err(e) = self.store.delete_session(session.client_id.as_str()) {
            crate::storage_refusal::write_failed(
                "delete a stored session",
                session.client_id.as_str(),
                &e,
            );
        }
    }

    /// Ends a session: its subscriptions, queue and stored state are removed, and
    /// `session.terminated` is raised (once). The caller holds the session's lifecycle lock.
    pub fn end_session(&self, session: &Arc<Session>, why: SessionEnd) {
        self.forget_cursors(&session.client_id);
        if !session.state().removed {
            // Before the state is cleared: the event names the session's last connection.
            raise::session_terminated(&self.events, || session.event_client(), why);
        }
        let filters: Vec<String> = {
            let mut st = session.state();
            st.removed = true;
            let filters = st.subscriptions.keys().cloned().collect();
            st.clear();
            st.removed = true;
            filters
        };
        for f in filters {
            self.unindex_subscription(session, &f);
        }
        {
            let mut reg = self.registry();
            if reg
                .get(&session.client_id)
                .is_some_and(|s| Arc::ptr_eq(s, session))
            {
                reg.remove(&session.client_id);
            }
        }
        self.forget_stored_session(session);
    }

    /// Clean Start on an existing session: drops its subscriptions, queue and stored state
    /// but keeps the session object (the caller holds its lifecycle lock).
    pub fn clear_session(&self, session: &Arc<Session>) {
        self.forget_cursors(&session.client_id);
        let filters: Vec<String> = {
            let mut st = session.state();
            let filters = st.subscriptions.keys().cloned().collect();
            st.clear();
            filters
        };
        for f in filters {
            self.unindex_subscription(session, &f);
        }
        self.forget_stored_session(session);
    }

    /// Publishes the offline session's will after `delay_ms` unless it reconnects first.
    pub fn schedule_will(self: &Arc<Self>, session: &Arc<Session>, generation: u32, delay_ms: u64) {
        let broker = self.clone();
        let session = session.clone();
        let cancel = session.state().timer_token();
        self.tasks.spawn(async move {
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_millis(delay_ms)) => {}
                _ = cancel.cancelled() => return,
                _ = broker.shutdown.cancelled() => return,
            }
            let _lifecycle = session.lifecycle.lock(&broker.lifecycle_waiters).await;
            let will = {
                let mut st = session.state();
                if st.generation == generation && !st.is_online() && !st.removed {
                    st.will_due_ms = OptionalMs::NONE;
                    st.will.take()
                } else {
                    None
                }
            };
            if let Some(will) = will {
                broker.publish_will(&session.client_id, will);
                let st = session.state();
                if st.is_persistent() {
                    broker.persist_session_locked(&session, &st);
                }
            }
        });
    }

    /// Arms the session-expiry timer of an offline session (`elapsed_ms` already passed).
    pub fn schedule_expiry(
        self: &Arc<Self>,
        session: &Arc<Session>,
        generation: u32,
        expiry_interval: u32,
        elapsed_ms: u64,
    ) {
        if expiry_interval == u32::MAX {
            return;
        }
        let delay =
            Duration::from_millis((expiry_interval as u64 * 1000).saturating_sub(elapsed_ms));
        let broker = self.clone();
        let session = session.clone();
        self.tasks.spawn(async move {
            tokio::select! {
                _ = tokio::time::sleep(delay) => {}
                _ = broker.shutdown.cancelled() => return,
            }
            let lifecycle = session.lifecycle.lock(&broker.lifecycle_waiters).await;
            let (still_offline, will, offline_since) = {
                let mut st = session.state();
                let same = st.generation == generation && !st.is_online() && !st.removed;
                let will = if same { st.will.take() } else { None };
                (same, will, st.disconnected_at_ms.get())
            };
            if still_offline {
                tracing::debug!(client_id = %session.client_id, "session expired");
                if let Some(will) = will {
                    broker.publish_will(&session.client_id, will);
                }
                broker.end_session(&session, SessionEnd::Expired);
                drop(lifecycle);
                broker
                    .release_ended_session(&session.client_id, offline_since)
                    .await;
            }
        });
    }

    pub fn publish_will(&self, client_id: &ClientId, will: Box<crate::codec::Will>) {
        let username = raise::will_publisher_username(&self.events, || {
            self.find_session(client_id)?.state().last_info.clone()
        });
        let message = Message::from_will(*will, client_id.clone(), username);
        tracing::debug!(%client_id, topic = %message.topic, "publishing will");
        self.route(Arc::new(message));
    }

    /// Periodically drops retained messages whose expiry has passed, so they don't hold
    /// memory and disk until someone subscribes.
    pub fn spawn_retained_sweeper(self: &Arc<Self>, every: Duration) {
        let broker = self.clone();
        self.tasks.spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = tick.tick() => {}
                    _ = broker.shutdown.cancelled() => return,
                }
                let n = broker.retained.remove_expired(now_ms());
                if n > 0 {
                    tracing::debug!(removed = n, "expired retained messages removed");
                }
            }
        });
    }

    /// Flushes storage to disk and records how long it took; every flush goes through here.
    pub async fn flush_storage(&self) -> Result<(), skein_storage::StorageError> {
        let start = std::time::Instant::now();
        let result = self.store.flush().await;
        crate::metrics::storage_flushed(start.elapsed());
        result
    }

    /// QoS the broker grants for a requested one (all three are supported).
    pub fn granted_qos(&self, requested: QoS) -> QoS {
        requested
    }
}

/// The MQTT-topic event dialects publish through the normal routing.
impl crate::events::mqtt_out::Publisher for Broker {
    fn publish(&self, message: Arc<Message>) {
        self.route(message);
    }
}

/// Asks a connection to go away for an operator. False only when the connection is
/// already gone; a full channel means a kick is already on its way.
fn send_kick(attachment: &crate::session::Attachment) -> bool {
    attachment.kick.send(crate::session::Kick::Administrative)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::local_cluster::LocalCluster;
    use crate::message::MessageProperties;
    use crate::session::Attachment;
    use bytes::Bytes;
    use skein_seam::NodeId;

    pub(crate) fn test_events() -> EventBus {
        EventBus::new(crate::events::NodeInfo {
            node: "127.0.0.1:1883".into(),
            node_ip: "127.0.0.1".into(),
            node_name: "test".into(),
        })
    }

    pub(crate) fn broker() -> Arc<Broker> {
        Broker::new(
            Config::default(),
            Store::open_temporary().unwrap(),
            Arc::new(LocalCluster::new(NodeId(1))),
            test_events(),
            CancellationToken::new(),
        )
        .unwrap()
    }

    pub(crate) fn online(b: &Broker, id: &str) -> Arc<Session> {
        let s = b.get_or_create_session(&ClientId::new(id));
        let tx = crate::session::KickSignal::new();
        s.state().attach(
            Attachment {
                connection_id: 1,
                epoch: 0,
                kick: tx,
            },
            Arc::new(crate::events::ClientInfo {
                client_id: ClientId::new(id),
                username: None,
                peer: "127.0.0.1:1000".parse().unwrap(),
                sockname: std::sync::Arc::new("127.0.0.1:1883".parse().unwrap()),
                protocol: crate::codec::ProtocolVersion::V5,
                transport: crate::events::Transport::Tcp,
                keepalive: 60,
                clean_start: true,
                connected_at_ms: 0,
                will: None,
            }),
        );
        s
    }

    pub(crate) fn sub(qos: QoS, id: Option<u32>, no_local: bool) -> Subscription {
        Subscription {
            options: SubscriptionOptions {
                qos,
                no_local,
                ..Default::default()
            },
            subscription_id: id,
        }
    }

    pub(crate) fn message(topic: &str, qos: QoS, publisher: &str) -> Arc<Message> {
        Arc::new(Message {
            topic: Arc::from(topic),
            payload: Bytes::from_static(b"x"),
            qos,
            retain: false,
            properties: MessageProperties::default(),
            received_at_ms: now_ms(),
            publisher: Some(ClientId::new(publisher)),
            publisher_username: None,
            publish_id: None,
        })
    }

    #[test]
    fn overlapping_subscriptions_deliver_one_copy_at_the_highest_qos() {
        let b = broker();
        let s = online(&b, "c");
        b.subscribe(&s, "a/#", sub(QoS::AtLeastOnce, Some(1), false));
        b.subscribe(&s, "a/b", sub(QoS::ExactlyOnce, Some(2), false));
        b.subscribe(&s, "+/b", sub(QoS::AtMostOnce, None, false));
        let out = b.route(message("a/b", QoS::ExactlyOnce, "p"));
        assert_eq!(out.matched, 1);
        let st = s.state();
        assert_eq!(st.queue.len(), 1);
        let d = &st.queue[0].delivery;
        assert_eq!(d.qos, QoS::ExactlyOnce);
        let mut ids = d.subscription_ids.clone();
        ids.sort();
        assert_eq!(ids, vec![1, 2]);
    }

    #[test]
    fn no_local_skips_the_publisher_only() {
        let b = broker();
        let me = online(&b, "me");
        let other = online(&b, "other");
        b.subscribe(&me, "t", sub(QoS::AtLeastOnce, None, true));
        b.subscribe(&other, "t", sub(QoS::AtLeastOnce, None, true));
        assert_eq!(b.route(message("t", QoS::AtLeastOnce, "me")).matched, 1);
        assert!(me.state().queue.is_empty());
        assert_eq!(other.state().queue.len(), 1);
    }

    #[test]
    fn shared_group_gets_one_copy_and_a_plain_subscriber_all() {
        let b = broker();
        let m1 = online(&b, "m1");
        let m2 = online(&b, "m2");
        let plain = online(&b, "plain");
        b.subscribe(&m1, "$share/g/t", sub(QoS::AtLeastOnce, None, false));
        b.subscribe(&m2, "$share/g/t", sub(QoS::AtLeastOnce, None, false));
        b.subscribe(&plain, "t", sub(QoS::AtLeastOnce, None, false));
        for _ in 0..10 {
            b.route(message("t", QoS::AtLeastOnce, "p"));
        }
        assert_eq!(m1.state().queue.len(), 5);
        assert_eq!(m2.state().queue.len(), 5);
        assert_eq!(plain.state().queue.len(), 10);
    }

    #[test]
    fn retained_messages_are_stored_replaced_and_deleted() {
        let b = broker();
        let mut m = (*message("r/1", QoS::AtLeastOnce, "p")).clone();
        m.retain = true;
        b.route(Arc::new(m.clone()));
        assert_eq!(b.retained.matching("r/#", now_ms()).len(), 1);
        m.payload = Bytes::new();
        b.route(Arc::new(m));
        assert!(b.retained.matching("r/#", now_ms()).is_empty());
        assert!(b.store.retained_load().unwrap().is_empty());
    }

    #[tokio::test]
    async fn an_offline_persistent_session_is_restored_with_its_queue() {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = Store::open(dir.path()).unwrap();
            let b = Broker::new(
                Config::default(),
                store.clone(),
                Arc::new(LocalCluster::new(NodeId(1))),
                test_events(),
                CancellationToken::new(),
            )
            .unwrap();
            let s = b.get_or_create_session(&ClientId::new("dev"));
            s.state().expiry_interval = 3600;
            b.subscribe(&s, "q/#", sub(QoS::AtLeastOnce, None, false));
            let out = b.route(message("q/1", QoS::AtLeastOnce, "p"));
            assert!(out.needs_flush);
            store.flush().await.unwrap();
        }
        // sled releases its lock from a background thread just after the drop above.
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        let store = loop {
            match Store::open(dir.path()) {
                Ok(s) => break s,
                Err(e) if std::time::Instant::now() > deadline => panic!("reopen: {e}"),
                Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
            }
        };
        let b = Broker::new(
            Config::default(),
            store,
            Arc::new(LocalCluster::new(NodeId(1))),
            test_events(),
            CancellationToken::new(),
        )
        .unwrap();
        let s = b.find_session(&ClientId::new("dev")).expect("restored");
        assert_eq!(s.state().queue.len(), 1);
        assert_eq!(b.subscription_count(), 1);
    }

    /// Reopens the store in `dir` (sled releases its lock from a background thread just
    /// after a drop) and restores a broker from it.
    async fn restart(dir: &std::path::Path) -> Arc<Broker> {
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        let store = loop {
            match Store::open(dir) {
                Ok(s) => break s,
                Err(e) if std::time::Instant::now() > deadline => panic!("reopen: {e}"),
                Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
            }
        };
        Broker::new(
            Config::default(),
            store,
            Arc::new(LocalCluster::new(NodeId(1))),
            test_events(),
            CancellationToken::new(),
        )
        .unwrap()
    }

    /// Ends `b`'s timers (they hold the broker, and so the store) and drops it.
    async fn stop(b: Arc<Broker>) {
        b.shutdown.cancel();
        b.tasks.close();
        b.tasks.wait().await;
    }

    /// After a stop without the clean mark, every queued QoS 1/2 message is one the client
    /// may have had (its delivery's records may not have been flushed): marked for DUP.
    /// After a clean stop, none is; nor after one that knew of such marks.
    #[tokio::test]
    async fn queued_messages_restored_after_an_unclean_stop_go_out_with_dup() {
        let dir = tempfile::tempdir().unwrap();
        let marks = |b: &Broker| {
            let s = b.find_session(&ClientId::new("dev")).expect("restored");
            let st = s.state();
            st.redeliver
                .as_ref()
                .map(|r| r.iter().copied().collect::<Vec<u64>>())
                .unwrap_or_default()
        };
        {
            let b = restart(dir.path()).await;
            let s = b.get_or_create_session(&ClientId::new("dev"));
            s.state().expiry_interval = 3600;
            b.subscribe(&s, "q/#", sub(QoS::AtLeastOnce, None, false));
            b.route(message("q/1", QoS::AtLeastOnce, "p"));
            b.route(message("q/2", QoS::AtLeastOnce, "p"));
            b.store.flush().await.unwrap();
            stop(b).await;
        }
        let b = restart(dir.path()).await;
        assert_eq!(b.store.last_stop(), skein_storage::LastStop::Unclean);
        assert_eq!(marks(&b), vec![1, 2]);
        assert_eq!(b.stored_redelivery_marks(), 2);
        // What `OpenNode::serve` does at its end: no clean mark while marks are pending.
        stop(b).await;
        let b = restart(dir.path()).await;
        assert_eq!(marks(&b), vec![1, 2]);
        {
            let s = b.find_session(&ClientId::new("dev")).unwrap();
            s.state().redeliver = None;
        }
        assert_eq!(b.stored_redelivery_marks(), 0);
        b.store.mark_clean_stop().await.unwrap();
        stop(b).await;
        let b = restart(dir.path()).await;
        assert_eq!(b.store.last_stop(), skein_storage::LastStop::Clean);
        assert!(marks(&b).is_empty());
    }
}
