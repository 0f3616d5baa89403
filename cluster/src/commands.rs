//! The registry commands the broker proposes: claim a client id, release it, subscribe,
//! unsubscribe. Each returns once the command is committed and applied on this node; the
//! proposer stamps the epoch and the time (see `epoch.rs`, `proposer.rs`).

use std::time::Duration;

use arcstr::ArcStr;
use skein_proto::v1 as pb;
use skein_proto::v1::command::Command;
use skein_proto::v1::command_result::Result as Answer;
use tokio::time::Instant;

use crate::epoch::unix_millis;
use crate::error::{ClusterError, Result};
use crate::node::ClusterNode;
use crate::registry::{Owner, PreviousOwner, SubscriptionOptions};
use crate::withdraw;

/// What claiming a client id answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Registration {
    /// This connection's epoch: pass it to every later command of the connection.
    pub epoch: u64,
    /// MQTT Session Present.
    pub session_present: bool,
    /// Who held the id before: that connection is being disconnected on its node (which
    /// learns it from its change stream), or that offline session moved here.
    pub previous: Option<PreviousOwner>,
    /// The index of the log entry that holds the registration.
    pub log_index: u64,
}

impl ClusterNode {
    /// Claims `client_id` for a new connection on this node (MQTT CONNECT): committed
    /// cluster-wide before this returns, so CONNACK can follow.
    pub async fn register_client(
        &self,
        client_id: &str,
        clean_start: bool,
        session_expiry_secs: u32,
    ) -> Result<Registration> {
        self.register_shared(
            &ArcStr::from(client_id),
            clean_start,
            session_expiry_secs,
            None,
            None,
        )
        .await
    }

    /// [`ClusterNode::register_client`] with the broker's own string for the id: the
    /// registry's entry shares it rather than holding a copy (see `registry/client_ids.rs`).
    /// The registry keeps `will` and `connection` while the connection is online, for the
    /// node that adopts or announces the client should this node die.
    #[tracing::instrument(level = "debug", skip(self, will, connection), fields(node = self.id()))]
    pub async fn register_shared(
        &self,
        client_id: &ArcStr,
        clean_start: bool,
        session_expiry_secs: u32,
        will: Option<pb::RegisteredWill>,
        connection: Option<pb::RegisteredConnection>,
    ) -> Result<Registration> {
        // Lent until this returns: by then the entry is applied here, or the proposal failed.
        let _lent = self.client_ids.offer(client_id);
        let epoch = self.epochs.next();
        let stamped_at_ms = unix_millis();
        let deadline = self.shared.settings.registration_deadline_ms;
        let command = Command::Register(pb::RegisterClient {
            client_id: client_id.to_string(),
            node_id: self.id(),
            epoch,
            clean_start,
            session_expiry_secs,
            stamped_at_ms,
            commit_by_ms: if deadline == 0 {
                0
            } else {
                stamped_at_ms.saturating_add(deadline)
            },
            will,
            connection,
        });
        // Rejected because this node is still marked down: a node that was paused or cut
        // off and reads the CONNECTs that waited for it proposes before the leader has
        // heard from it and marked it up (which it does within a tick). Asked again, with
        // the same stamps, until the deadline.
        let retry_until = Instant::now()
            + if deadline == 0 {
                self.shared.settings.proposal_timeout()
            } else {
                Duration::from_millis(deadline)
            };
        let mut backoff = Duration::from_millis(50);
        let proposed = loop {
            let raw = self
                .proposer
                .propose(pb::Command {
                    command: Some(command.clone()),
                })
                .await;
            let marked_down = raw.as_ref().is_ok_and(|(result, _)| {
                matches!(&result.result, Some(Answer::Rejected(r)) if r.reason() == pb::RejectReason::NodeDown)
            });
            if marked_down && Instant::now() + backoff < retry_until {
                tracing::debug!(%client_id, "registration rejected while this node is marked down; asking again");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_millis(400));
                continue;
            }
            break answer(raw);
        };
        let (answer, log_index) = match proposed {
            Ok(committed) => committed,
            Err(e) => {
                if withdraw::outcome_unknown(&e) {
                    self.spawn(withdraw::withdraw(
                        self.proposer.clone(),
                        self.shutdown_token(),
                        client_id.to_string(),
                        self.id(),
                        epoch,
                    ));
                }
                return Err(e);
            }
        };
        match answer {
            Answer::Registered(r) => Ok(Registration {
                epoch,
                session_present: r.session_present,
                previous: r.previous.map(|p| PreviousOwner {
                    owner: Owner {
                        node: p.node_id,
                        epoch: p.epoch,
                    },
                    online: p.online,
                }),
                log_index,
            }),
            other => Err(unexpected("register", &other)),
        }
    }

    /// Releases the claim of connection `epoch` (the connection ended). With
    /// `session_ended` (or a session expiry of 0) the client is forgotten; otherwise its
    /// session stays here, offline. Returns whether the session was kept.
    #[tracing::instrument(level = "debug", skip(self), fields(node = self.id()))]
    pub async fn unregister_client(
        &self,
        client_id: &str,
        epoch: u64,
        session_ended: bool,
    ) -> Result<bool> {
        let (answer, _) = self
            .propose(Command::Unregister(pb::UnregisterClient {
                client_id: client_id.to_owned(),
                node_id: self.id(),
                epoch,
                session_ended,
                stamped_at_ms: unix_millis(),
            }))
            .await?;
        match answer {
            Answer::Unregistered(u) => Ok(u.session_kept),
            other => Err(unexpected("unregister", &other)),
        }
    }

    /// Adds (or replaces) a subscription of connection `epoch`: committed, and applied on
    /// this node, once this returns (the broker's `ClusterHandle::subscribe` also waits
    /// for the other members to fold it before SUBACK). Returns whether it replaced one.
    #[tracing::instrument(level = "debug", skip(self, options), fields(node = self.id()))]
    pub async fn subscribe(
        &self,
        client_id: &str,
        epoch: u64,
        filter: &str,
        options: SubscriptionOptions,
        subscription_id: Option<u32>,
    ) -> Result<bool> {
        self.subscribe_at(client_id, epoch, filter, options, subscription_id)
            .await
            .map(|(replaced, _)| replaced)
    }

    /// [`ClusterNode::subscribe`], also returning the index of the entry that holds it.
    pub(crate) async fn subscribe_at(
        &self,
        client_id: &str,
        epoch: u64,
        filter: &str,
        options: SubscriptionOptions,
        subscription_id: Option<u32>,
    ) -> Result<(bool, u64)> {
        let (answer, index) = self
            .propose(Command::Subscribe(pb::Subscribe {
                client_id: client_id.to_owned(),
                node_id: self.id(),
                epoch,
                filter: filter.to_owned(),
                options: Some(pb::SubscriptionOptions {
                    qos: options.qos.into(),
                    no_local: options.no_local,
                    retain_as_published: options.retain_as_published,
                    retain_handling: options.retain_handling.into(),
                }),
                subscription_id,
            }))
            .await?;
        match answer {
            Answer::Subscribed(s) => Ok((s.replaced, index)),
            other => Err(unexpected("subscribe", &other)),
        }
    }

    /// Removes a subscription of connection `epoch`; returns whether it existed.
    #[tracing::instrument(level = "debug", skip(self), fields(node = self.id()))]
    pub async fn unsubscribe(&self, client_id: &str, epoch: u64, filter: &str) -> Result<bool> {
        let (answer, _) = self
            .propose(Command::Unsubscribe(pb::Unsubscribe {
                client_id: client_id.to_owned(),
                node_id: self.id(),
                epoch,
                filter: filter.to_owned(),
            }))
            .await?;
        match answer {
            Answer::Unsubscribed(u) => Ok(u.existed),
            other => Err(unexpected("unsubscribe", &other)),
        }
    }

    /// Proposes one command and returns its answer and its entry's index; a rejection is
    /// an error.
    pub(crate) async fn propose(&self, command: Command) -> Result<(Answer, u64)> {
        let proposed = self
            .proposer
            .propose(pb::Command {
                command: Some(command),
            })
            .await;
        answer(proposed)
    }
}

/// A proposal's answer and its entry's index; a rejection is an error.
fn answer(proposed: Result<(pb::CommandResult, u64)>) -> Result<(Answer, u64)> {
    let (result, index) = proposed?;
    match result.result {
        Some(Answer::Rejected(r)) => Err(ClusterError::Rejected {
            not_owner: r.reason() == pb::RejectReason::NotOwner,
            detail: r.detail,
        }),
        Some(answer) => Ok((answer, index)),
        None => Err(ClusterError::Proposal(
            "the command's result is empty".into(),
        )),
    }
}

fn unexpected(command: &str, answer: &Answer) -> ClusterError {
    ClusterError::Proposal(format!("{command} was answered with {answer:?}"))
}
