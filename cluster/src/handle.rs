//! [`ClusterNode`] as the broker's [`ClusterHandle`]: the seam's calls mapped onto the
//! member's registry commands, registry reads and status.
//!
//! Errors as the broker needs them: the cluster cannot take the request now (no leader, a
//! timeout, overloaded, shutting down, a failed call) is `Unavailable` (CONNACK 0x88 /
//! return code 3); a command of a connection that was taken over is `NotOwner`; a malformed
//! one is `Invalid`.

use skein_seam::{
    BoxFuture, CertificateRecord, CertificateRegistration, CertificateStatus, ClientId,
    ClientLocation, ClusterError as SeamError, ClusterHandle, ClusterOverview, ForwardError,
    ForwardedPublish, HandedOverSubscription, MemberOverview, NodeId as SeamNodeId, NodeRecord,
    PreviousOwner, Registration, SeenCertificate,
};

use crate::error::ClusterError;
use crate::in_force;
use crate::join::join_all;
use crate::node::ClusterNode;
use crate::registry::{ClientEntry, Owner, SubscriptionOptions};
use crate::session_wire::handed_over;
use crate::status::{MemberStatus, Role};
use crate::types::NodeId;

/// The seam's error for a cluster error (see the module docs).
fn to_seam(e: ClusterError) -> SeamError {
    match e {
        ClusterError::Rejected {
            not_owner: true, ..
        } => SeamError::NotOwner,
        ClusterError::Rejected { detail, .. } => SeamError::Invalid(detail),
        ClusterError::Membership(detail) => SeamError::Invalid(detail),
        // Everything else means "not now": storage trouble and odd answers included, as
        // the client can only be told to come back.
        other => SeamError::Unavailable(other.to_string()),
    }
}

fn location(client_id: &str, entry: &ClientEntry) -> ClientLocation {
    ClientLocation {
        client_id: ClientId::new(client_id),
        node: SeamNodeId(entry.owner.node),
        epoch: entry.owner.epoch,
        online: entry.is_online(),
        clean_start: entry.clean_start,
        session_expiry_secs: entry.session_expiry_secs,
        connected_at_ms: entry.connected_at_ms,
        offline_since_ms: entry.offline_since_ms(),
        subscriptions: entry.subscriptions.len(),
    }
}

fn member_overview(m: MemberStatus) -> MemberOverview {
    MemberOverview {
        record: NodeRecord {
            id: SeamNodeId(m.id),
            name: m.node.name,
            grpc: m.node.grpc,
            mqtt: m.node.mqtt,
        },
        voter: m.role == Role::Voter,
        reachable: m.reachable.unwrap_or(false),
        last_contact_ms: m.last_contact_ms,
    }
}

/// The most urgent of several proposals' errors: a takeover ends the connection, so it
/// wins over unavailability, which wins over a refusal.
fn worst(errors: impl IntoIterator<Item = SeamError>) -> Option<SeamError> {
    errors.into_iter().min_by_key(|e| match e {
        SeamError::NotOwner => 0,
        SeamError::Unavailable(_) | SeamError::Busy(_) => 1,
        SeamError::Invalid(_) => 2,
        SeamError::NotFound(_) => 3,
    })
}

impl ClusterHandle for ClusterNode {
    fn node_id(&self) -> SeamNodeId {
        SeamNodeId(self.id())
    }

    fn register_client<'a>(
        &'a self,
        client_id: &'a ClientId,
        clean_start: bool,
        session_expiry_secs: u32,
    ) -> BoxFuture<'a, Result<Registration, SeamError>> {
        self.register_connection(client_id, clean_start, session_expiry_secs, None, None)
    }

    fn register_connection<'a>(
        &'a self,
        client_id: &'a ClientId,
        clean_start: bool,
        session_expiry_secs: u32,
        will: Option<skein_seam::RegisteredWill>,
        connection: Option<skein_seam::RegisteredConnection>,
    ) -> BoxFuture<'a, Result<Registration, SeamError>> {
        Box::pin(async move {
            let r = ClusterNode::register_shared(
                self,
                client_id.shared(),
                clean_start,
                session_expiry_secs,
                will.map(crate::session_wire::will_to_pb),
                connection.map(crate::session_wire::connection_to_pb),
            )
            .await
            .map_err(to_seam)?;
            // A connection of this client id on another node: CONNACK once that node has
            // been told (one owner when this returns; see `in_force.rs`). A session taken
            // from another node waits for every member instead: the broker then fetches
            // its messages from that node, and from now on no member routes new ones
            // there (they come here).
            match r.previous.filter(|p| p.owner.node != self.id()) {
                Some(_) if r.session_present => {
                    in_force::await_members(&self.shared, r.log_index).await;
                }
                Some(previous) if previous.online => {
                    in_force::await_member(&self.shared, previous.owner.node, r.log_index).await;
                }
                _ => {}
            }
            let me = Owner {
                node: self.id(),
                epoch: r.epoch,
            };
            // Read after the registration applied here. Should a newer registration have
            // applied meanwhile, the entry is not this connection's: no subscriptions, and
            // the broker finds it no longer owns the id once attached.
            let subscriptions = if r.session_present {
                self.registry().read(|reg| {
                    reg.client(client_id.as_str())
                        .filter(|e| e.owner == me)
                        .map(handed_over)
                        .unwrap_or_default()
                })
            } else {
                Vec::new()
            };
            Ok(Registration {
                epoch: r.epoch,
                session_present: r.session_present,
                previous: r.previous.map(|p| PreviousOwner {
                    node: SeamNodeId(p.owner.node),
                    epoch: p.owner.epoch,
                    online: p.online,
                }),
                subscriptions,
                log_index: r.log_index,
            })
        })
    }

    fn unregister_client<'a>(
        &'a self,
        client_id: &'a ClientId,
        epoch: u64,
        session_ended: bool,
    ) -> BoxFuture<'a, Result<(), SeamError>> {
        Box::pin(async move {
            match ClusterNode::unregister_client(self, client_id.as_str(), epoch, session_ended)
                .await
            {
                Ok(_) => Ok(()),
                // A newer connection holds the id: nothing of this one to release.
                Err(ClusterError::Rejected {
                    not_owner: true, ..
                }) => Ok(()),
                Err(e) => Err(to_seam(e)),
            }
        })
    }

    /// Proposes every filter at once (the proposer puts concurrent commands in one log
    /// entry), then waits until every other member has folded that entry (see
    /// `in_force.rs` for why that makes the SUBACK true cluster-wide, and for what a
    /// member that does not answer in time means).
    fn subscribe<'a>(
        &'a self,
        client_id: &'a ClientId,
        epoch: u64,
        subscriptions: Vec<HandedOverSubscription>,
    ) -> BoxFuture<'a, Result<(), SeamError>> {
        Box::pin(async move {
            let proposals = subscriptions.iter().map(|s| {
                let options = SubscriptionOptions {
                    qos: s.qos,
                    no_local: s.no_local,
                    retain_as_published: s.retain_as_published,
                    retain_handling: s.retain_handling,
                };
                self.subscribe_at(
                    client_id.as_str(),
                    epoch,
                    &s.filter,
                    options,
                    s.subscription_id,
                )
            });
            let mut last_index = None;
            let mut errors = Vec::new();
            for outcome in join_all(proposals).await {
                match outcome {
                    Ok((_, index)) => last_index = last_index.max(Some(index)),
                    Err(e) => errors.push(to_seam(e)),
                }
            }
            if let Some(e) = worst(errors) {
                return Err(e);
            }
            if let Some(index) = last_index {
                in_force::await_members(&self.shared, index).await;
            }
            Ok(())
        })
    }

    fn unsubscribe<'a>(
        &'a self,
        client_id: &'a ClientId,
        epoch: u64,
        filters: Vec<String>,
    ) -> BoxFuture<'a, Result<(), SeamError>> {
        Box::pin(async move {
            let proposals = filters
                .iter()
                .map(|f| ClusterNode::unsubscribe(self, client_id.as_str(), epoch, f));
            let errors = join_all(proposals)
                .await
                .into_iter()
                .filter_map(|r| r.err().map(to_seam));
            match worst(errors) {
                Some(e) => Err(e),
                None => Ok(()),
            }
        })
    }

    fn node_record(&self, node: SeamNodeId) -> Option<NodeRecord> {
        let record = if node.0 == self.id() {
            self.node().clone()
        } else {
            self.member(node.0)?
        };
        Some(NodeRecord {
            id: node,
            name: record.name,
            grpc: record.grpc,
            mqtt: record.mqtt,
        })
    }

    fn locate_client(&self, client_id: &ClientId) -> Option<ClientLocation> {
        self.registry().read(|reg| {
            reg.client(client_id.as_str())
                .map(|e| location(client_id.as_str(), e))
        })
    }

    fn session_subscriptions(
        &self,
        client_id: &ClientId,
    ) -> Option<(SeamNodeId, Vec<HandedOverSubscription>)> {
        self.registry().read(|reg| {
            reg.client(client_id.as_str())
                .map(|e| (SeamNodeId(e.owner.node), handed_over(e)))
        })
    }

    fn clients(&self, after: Option<&str>, limit: usize) -> Vec<ClientLocation> {
        self.registry().read(|reg| {
            reg.clients_after(after)
                .take(limit)
                .map(|(id, e)| location(id, e))
                .collect()
        })
    }

    // ---- Data plane (`data_plane.rs`). ----

    fn forward(
        &self,
        node: SeamNodeId,
        publish: ForwardedPublish,
    ) -> BoxFuture<'static, Result<(), ForwardError>> {
        ClusterNode::forward(self, node, publish)
    }

    fn forward_tallied(
        &self,
        node: SeamNodeId,
        publish: ForwardedPublish,
        tally: &std::sync::Arc<skein_seam::ForwardTally>,
        ticket: u32,
    ) -> Result<(), ForwardError> {
        ClusterNode::forward_tallied(self, node, publish, tally, ticket)
    }

    fn forward_unanswered(
        &self,
        node: SeamNodeId,
        publish: ForwardedPublish,
    ) -> Result<(), ForwardError> {
        ClusterNode::forward_unanswered(self, node, publish)
    }

    fn forward_room(&self, node: SeamNodeId) -> Option<BoxFuture<'static, bool>> {
        ClusterNode::forward_room(self, node)
    }

    fn kick_remote<'a>(
        &'a self,
        node: SeamNodeId,
        client_id: &'a ClientId,
    ) -> BoxFuture<'a, Result<bool, SeamError>> {
        ClusterNode::kick_remote(self, node, client_id)
    }

    fn other_members(&self) -> Vec<SeamNodeId> {
        ClusterNode::other_members(self)
    }

    // ---- Sessions handed over (`handover.rs`). ----

    fn fetch_session<'a>(
        &'a self,
        holder: SeamNodeId,
        client_id: &'a ClientId,
        holder_epoch: u64,
        after: u64,
        max: u32,
    ) -> BoxFuture<'a, Result<skein_seam::SessionHandover, SeamError>> {
        ClusterNode::fetch_session(self, holder, client_id, holder_epoch, after, max)
    }

    fn offer_session<'a>(
        &'a self,
        owner: SeamNodeId,
        client_id: &'a ClientId,
    ) -> BoxFuture<'a, Result<usize, SeamError>> {
        ClusterNode::offer_session(self, owner, client_id)
    }

    fn release_session<'a>(
        &'a self,
        holder: SeamNodeId,
        client_id: &'a ClientId,
        holder_epoch: u64,
        up_to: u64,
    ) -> BoxFuture<'a, Result<(), SeamError>> {
        ClusterNode::release_session(self, holder, client_id, holder_epoch, up_to)
    }

    // ---- Admin. ----

    /// This node's view (its id, term, commit index), with the members as the leader sees
    /// them (their reachability is known there) when the leader answers, else as known
    /// here.
    fn overview(&self) -> BoxFuture<'_, Result<ClusterOverview, SeamError>> {
        Box::pin(async move {
            let local = self.status();
            let members = match self.leader_status().await {
                Ok(leader) => leader.members,
                Err(e) => {
                    tracing::debug!(error = %e, "no leader status; showing this node's view of the members");
                    local.members.clone()
                }
            };
            Ok(ClusterOverview {
                node_id: SeamNodeId(local.node_id),
                node_name: local.node_name,
                leader_id: local.leader_id.map(SeamNodeId),
                term: local.term,
                commit_index: local.commit_index.unwrap_or(0),
                members: members.into_iter().map(member_overview).collect(),
            })
        })
    }

    fn remove_member(&self, node: SeamNodeId) -> BoxFuture<'_, Result<(), SeamError>> {
        Box::pin(async move {
            let id: NodeId = node.0;
            if self.member(id).is_none() {
                return Err(SeamError::NotFound(format!("node {id} is not a member")));
            }
            ClusterNode::remove_member(self, id)
                .await
                .map(|_| ())
                .map_err(to_seam)
        })
    }

    // ---- Device certificates (`certificates.rs`). ----

    fn register_certificate(
        &self,
        seen: SeenCertificate,
        status: CertificateStatus,
    ) -> BoxFuture<'_, Result<CertificateRegistration, SeamError>> {
        Box::pin(async move {
            let (record, created) = ClusterNode::register_certificate(self, &seen, status)
                .await
                .map_err(to_seam)?;
            Ok(CertificateRegistration { record, created })
        })
    }

    fn certificate(&self, sn: &str) -> Option<CertificateRecord> {
        ClusterNode::certificate(self, sn)
    }

    fn certificates(&self) -> Vec<CertificateRecord> {
        ClusterNode::certificates(self)
    }

    fn set_certificate_status<'a>(
        &'a self,
        sn: &'a str,
        status: CertificateStatus,
    ) -> BoxFuture<'a, Result<CertificateRecord, SeamError>> {
        Box::pin(async move {
            ClusterNode::set_certificate_status(self, sn, status)
                .await
                .map_err(to_seam)?
                .ok_or_else(|| {
                    SeamError::NotFound(format!("no certificate with serial number {sn}"))
                })
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_map_to_what_the_broker_answers() {
        assert_eq!(
            to_seam(ClusterError::Rejected {
                not_owner: true,
                detail: "x".into()
            }),
            SeamError::NotOwner
        );
        assert!(matches!(
            to_seam(ClusterError::Rejected {
                not_owner: false,
                detail: "empty filter".into()
            }),
            SeamError::Invalid(d) if d == "empty filter"
        ));
        for unavailable in [
            ClusterError::NoLeader(std::time::Duration::from_secs(1)),
            ClusterError::Timeout(std::time::Duration::from_secs(1)),
            ClusterError::ShuttingDown,
            ClusterError::Overloaded(8),
        ] {
            assert!(matches!(to_seam(unavailable), SeamError::Unavailable(_)));
        }
        let worst_of = worst([
            SeamError::Invalid("a".into()),
            SeamError::Unavailable("b".into()),
            SeamError::NotOwner,
        ]);
        assert_eq!(worst_of, Some(SeamError::NotOwner));
        assert_eq!(worst(Vec::new()), None);
    }
}
