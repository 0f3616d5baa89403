//! The broker's local state kept in step with the cluster's registry: a session another
//! node took over leaves this node's index, a session that moved here is rebuilt from the
//! registry's subscriptions, and a restart releases what the previous run still held.
//!
//! A session taken over by another node stays here offline, without subscriptions or
//! timers, with its stored messages, until the owner has fetched them (see
//! `handover_holder.rs` and `handover_taker.rs`). Its expiry runs on the node that holds it
//! now.

use std::sync::Arc;
use std::time::Duration;

use skein_seam::{HandedOverSubscription, NodeId};

use super::Broker;
use crate::codec::{QoS, SubscriptionOptions};
use crate::session::{Session, Subscription};

/// How long a session another node took over keeps taking forwarded messages (their
/// senders may route by an older registry) before it is sealed, unless the taker fetches
/// it sooner: longer than a hand-over takes.
pub(super) const SEAL_AFTER: Duration = Duration::from_secs(5);

/// The longest the restart reconciliation waits for the registry to catch up.
const CATCH_UP_WAIT: Duration = Duration::from_secs(60);

/// The longest a forwarded publish waits for the restart's reconciliation (after that it
/// is routed by what the node restored).
const RECONCILE_WAIT: Duration = Duration::from_secs(10);

impl Broker {
    /// Notes that connection `connection_id` is told to end because node `by` took its
    /// session over (read back when it closes, for its disconnect event).
    pub fn note_remote_taker(&self, connection_id: u64, by: NodeId) {
        self.remote_takers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(connection_id, by);
    }

    /// The node noted as the taker of connection `connection_id`, forgotten as it is read.
    pub fn take_remote_taker(&self, connection_id: u64) -> Option<NodeId> {
        self.remote_takers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&connection_id)
    }

    /// How events name node `node`: its advertised MQTT address from its member record.
    pub fn node_address(&self, node: NodeId) -> String {
        self.cluster
            .node_record(node)
            .map(|r| r.mqtt)
            .filter(|mqtt| !mqtt.is_empty())
            .unwrap_or_else(|| format!("node {node}"))
    }

    /// An offline session of this node ended (it expired, or an operator discarded it):
    /// the registry forgets it too, or a later CONNECT would be told it is present.
    /// `offline_since_ms`: when its last connection ended here. A registration made after
    /// that (epochs are this node's clock in microseconds) is a new connection's and is
    /// left alone, as is one of another node.
    pub async fn release_ended_session(
        &self,
        client_id: &skein_seam::ClientId,
        offline_since_ms: Option<u64>,
    ) {
        let me = self.cluster.node_id();
        let Some(owner) = self.cluster.locate_client(client_id) else {
            return;
        };
        let older = match offline_since_ms {
            Some(ms) => owner.epoch <= ms.saturating_mul(1000),
            None => !owner.online,
        };
        if owner.node != me || !older {
            return;
        }
        if let Err(e) = self
            .cluster
            .unregister_client(client_id, owner.epoch, true)
            .await
        {
            tracing::info!(%client_id, error = %e, "could not release an ended session in the cluster");
        }
    }

    /// Starts [`Broker::session_moved`] for `session` as a task of the broker.
    pub(super) fn spawn_session_moved(&self, session: Arc<Session>) {
        let Some(broker) = self.me.upgrade() else {
            return;
        };
        let tasks = broker.tasks.clone();
        tasks.spawn(async move {
            // The taker seals it when it fetches it, at once; this is for a taker that
            // fetches nothing (a clean start) or could not.
            tokio::select! {
                _ = tokio::time::sleep(SEAL_AFTER) => {}
                _ = broker.shutdown.cancelled() => return,
            }
            broker.session_moved(&session).await
        });
    }

    /// The registry names another node as the owner of `session` (or the client is gone
    /// from it): its subscriptions leave this node's index and its timers stop (see the
    /// module docs). A registration on this node since then (the client came back) keeps
    /// it as it is.
    pub async fn session_moved(&self, session: &Arc<Session>) {
        let _lifecycle = session.lifecycle.lock(&self.lifecycle_waiters).await;
        let me = self.cluster.node_id();
        if self
            .cluster
            .locate_client(&session.client_id)
            .is_some_and(|owner| owner.node == me)
        {
            return;
        }
        let filters = self.seal_moved(session);
        tracing::debug!(client_id = %session.client_id, subscriptions = filters, "session moved to another node");
    }

    /// Marks `session` as moved to another node (it takes no new messages here), leaves
    /// its subscriptions out of this node's index and stops its timers; its messages stay
    /// until the owner fetches them. Again: nothing changes. The caller holds its
    /// lifecycle lock. Returns how many subscriptions left the index.
    pub(super) fn seal_moved(&self, session: &Arc<Session>) -> usize {
        let (filters, persistent) = {
            let mut st = session.state();
            if st.removed {
                return 0;
            }
            st.moved = true;
            // What reached it here no longer tells what the session has: it is handed
            // over, and a later takeover back here would take the notes for copies it
            // holds (see `session/arrivals.rs`).
            st.arrivals = None;
            // The expiry and will timers armed here check the generation.
            st.generation = st.generation.wrapping_add(1);
            st.cancel_timers();
            let filters: Vec<String> = st.subscriptions.drain().map(|(filter, _)| filter).collect();
            if st.is_persistent() && !filters.is_empty() {
                self.persist_session_locked(session, &st);
            }
            (filters, st.is_persistent())
        };
        for filter in &filters {
            self.unindex_subscription(session, filter);
        }
        if persistent {
            // A forward routed here by an older registry still reaches the session
            // (`moved_away.rs`): through the filters it had here and those the registry
            // gives it (a session restored sealed, after a second restart, has none
            // here). Asked outside the session's lock.
            let mut remembered = filters.clone();
            if let Some((_, subscriptions)) = self.cluster.session_subscriptions(&session.client_id)
            {
                remembered.extend(subscriptions.into_iter().map(|s| s.filter));
            }
            self.remember_moved_away(&session.client_id, &remembered);
        }
        filters.len()
    }

    /// Makes `session`'s subscriptions the registry's `subscriptions` (a session that was
    /// held by another node, or lost here): those it lacks are added to the index, those
    /// the registry does not have are removed. The caller holds its lifecycle lock.
    pub fn replace_subscriptions(
        &self,
        session: &Arc<Session>,
        subscriptions: &[HandedOverSubscription],
    ) {
        let wanted: Vec<(&str, Subscription)> = subscriptions
            .iter()
            .filter_map(|s| {
                let options = SubscriptionOptions {
                    qos: QoS::from_u8(s.qos)?,
                    no_local: s.no_local,
                    retain_as_published: s.retain_as_published,
                    retain_handling: s.retain_handling,
                };
                Some((
                    s.filter.as_str(),
                    Subscription {
                        options,
                        subscription_id: s.subscription_id,
                    },
                ))
            })
            .collect();
        let stale: Vec<String> = session
            .state()
            .subscriptions
            .keys()
            .filter(|f| !wanted.iter().any(|(w, _)| w == f))
            .cloned()
            .collect();
        for filter in &stale {
            self.unsubscribe(session, filter);
        }
        for (filter, sub) in wanted {
            self.subscribe(session, filter, sub);
        }
    }

    /// Once the registry has caught up (`caught_up` resolves), releases what it still says
    /// of this node's previous run: registrations of connections that no longer exist are
    /// unregistered (the session kept offline if it is persistent here, else ended), and
    /// restored sessions the registry gives to another node move (see
    /// [`Broker::session_moved`]).
    pub fn spawn_registry_reconcile(
        self: &Arc<Self>,
        caught_up: impl std::future::Future<Output = bool> + Send + 'static,
    ) {
        // Epochs are the proposer's clock in microseconds: lower ones are from before.
        let started_us = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX));
        let broker = self.clone();
        self.tasks.spawn(async move {
            let caught_up = tokio::select! {
                _ = broker.shutdown.cancelled() => return,
                caught = tokio::time::timeout(CATCH_UP_WAIT, caught_up) => caught.unwrap_or(false),
            };
            if !caught_up {
                tracing::warn!("the registry did not catch up; what the previous run registered stays until those clients connect again");
                broker.reconciled.send_replace(true);
                return;
            }
            broker.reconcile_with_registry(started_us).await;
            broker.reconciled.send_replace(true);
            // What this node held of sessions that moved away while it was down goes to
            // their owners (see `handover_holder.rs`).
            broker.offer_stranded_every_while().await;
        });
    }

    /// Until the sessions restored at start were reconciled with the registry (at most
    /// [`RECONCILE_WAIT`]): a forwarded publish routed before would find a session that
    /// moved away while this node was down still indexed here, or, sealed before the
    /// restart, not at all (and not yet remembered as moved away, `moved_away.rs`).
    pub(super) async fn wait_reconciled(&self) {
        let mut reconciled = self.reconciled.subscribe();
        if *reconciled.borrow() {
            return;
        }
        let waited = tokio::time::timeout(RECONCILE_WAIT, reconciled.wait_for(|done| *done));
        if waited.await.is_err() {
            tracing::info!("a forwarded publish waited for the restart's reconciliation with the registry in vain; routed by what this node restored");
        }
    }

    async fn reconcile_with_registry(&self, started_us: u64) {
        let me = self.cluster.node_id();
        let mut after: Option<String> = None;
        let (mut released, mut moved) = (0usize, 0usize);
        loop {
            let page = self.cluster.clients(after.as_deref(), 1000);
            let Some(last) = page.last() else { break };
            after = Some(last.client_id.to_string());
            // Online registrations of the previous run, and offline sessions that ended
            // here while the node was down (expired) or before their end reached the
            // registry.
            for stale in page.into_iter().filter(|l| {
                l.node == me
                    && l.epoch < started_us
                    && (l.online || self.find_session(&l.client_id).is_none())
            }) {
                let kept = self
                    .find_session(&stale.client_id)
                    .is_some_and(|s| s.state().is_persistent());
                let released_now = self
                    .cluster
                    .unregister_client(&stale.client_id, stale.epoch, !kept)
                    .await;
                if let Err(e) = released_now {
                    tracing::info!(client_id = %stale.client_id, error = %e, "could not release a registration of the previous run");
                } else {
                    released += 1;
                }
            }
        }
        for session in self.sessions_snapshot() {
            let elsewhere = self
                .cluster
                .locate_client(&session.client_id)
                .is_some_and(|owner| owner.node != me);
            if elsewhere && !session.state().is_online() {
                self.session_moved(&session).await;
                moved += 1;
            }
        }
        tracing::info!(
            released,
            moved,
            "reconciled the sessions of the previous run with the registry"
        );
    }
}
