//! openraft's records and RPCs ⇄ their protobuf messages (`raft.proto`).
//!
//! [`ToPb`] turns an openraft value into its message; [`FromPb`] reads a message back and
//! refuses one that lacks a required part (a vote without a leader id, an entry without a
//! payload) with [`ClusterError::Malformed`], never a panic or a default that could change what Raft
//! decides.

use std::collections::{BTreeMap, BTreeSet};

use openraft::error::{InstallSnapshotError, SnapshotMismatch};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use openraft::{
    CommittedLeaderId, EntryPayload, LeaderId, SnapshotMeta, SnapshotSegmentId, StoredMembership,
    Vote,
};
use skein_proto::v1 as pb;

use crate::error::ClusterError;
use crate::types::{Entry, LogId, Membership, Node, NodeId, Proto, TypeConfig};

/// A message that cannot stand for the Raft record it claims to be.
fn missing(what: &'static str, reason: &'static str) -> ClusterError {
    ClusterError::Malformed { what, reason }
}

/// An openraft value as its protobuf message.
pub trait ToPb {
    type Pb;
    fn to_pb(&self) -> Self::Pb;
}

/// A protobuf message as the openraft value it stands for.
pub trait FromPb<T> {
    fn into_raft(self) -> Result<T, ClusterError>;
}

impl ToPb for LeaderId<NodeId> {
    type Pb = pb::LeaderId;
    fn to_pb(&self) -> pb::LeaderId {
        pb::LeaderId {
            term: self.term,
            node_id: self.node_id,
        }
    }
}

impl FromPb<LeaderId<NodeId>> for pb::LeaderId {
    fn into_raft(self) -> Result<LeaderId<NodeId>, ClusterError> {
        Ok(LeaderId::new(self.term, self.node_id))
    }
}

impl ToPb for LogId {
    type Pb = pb::LogId;
    fn to_pb(&self) -> pb::LogId {
        pb::LogId {
            leader_id: Some(self.leader_id.to_pb()),
            index: self.index,
        }
    }
}

impl FromPb<LogId> for pb::LogId {
    fn into_raft(self) -> Result<LogId, ClusterError> {
        let leader = self
            .leader_id
            .ok_or_else(|| missing("log id", "no leader id"))?;
        let leader: CommittedLeaderId<NodeId> = leader.into_raft()?;
        Ok(LogId::new(leader, self.index))
    }
}

impl ToPb for Option<LogId> {
    type Pb = Option<pb::LogId>;
    fn to_pb(&self) -> Option<pb::LogId> {
        self.as_ref().map(ToPb::to_pb)
    }
}

impl FromPb<Option<LogId>> for Option<pb::LogId> {
    fn into_raft(self) -> Result<Option<LogId>, ClusterError> {
        self.map(FromPb::into_raft).transpose()
    }
}

impl ToPb for Vote<NodeId> {
    type Pb = pb::Vote;
    fn to_pb(&self) -> pb::Vote {
        pb::Vote {
            leader_id: Some(self.leader_id.to_pb()),
            committed: self.committed,
        }
    }
}

impl FromPb<Vote<NodeId>> for Option<pb::Vote> {
    fn into_raft(self) -> Result<Vote<NodeId>, ClusterError> {
        let vote = self.ok_or_else(|| missing("vote", "absent"))?;
        let leader = vote
            .leader_id
            .ok_or_else(|| missing("vote", "no leader id"))?;
        Ok(Vote {
            leader_id: leader.into_raft()?,
            committed: vote.committed,
        })
    }
}

impl ToPb for Membership {
    type Pb = pb::Membership;
    fn to_pb(&self) -> pb::Membership {
        pb::Membership {
            configs: self
                .get_joint_config()
                .iter()
                .map(|voters| pb::VoterConfig {
                    voters: voters.iter().copied().collect(),
                })
                .collect(),
            nodes: self
                .nodes()
                .map(|(id, node)| (*id, node.clone().into()))
                .collect(),
        }
    }
}

impl FromPb<Membership> for pb::Membership {
    fn into_raft(self) -> Result<Membership, ClusterError> {
        let configs: Vec<BTreeSet<NodeId>> = self
            .configs
            .into_iter()
            .map(|c| c.voters.into_iter().collect())
            .collect();
        let nodes: BTreeMap<NodeId, Node> = self
            .nodes
            .into_iter()
            .map(|(id, node)| (id, node.into()))
            .collect();
        Ok(Membership::new(configs, nodes))
    }
}

impl ToPb for StoredMembership<NodeId, Node> {
    type Pb = pb::StoredMembership;
    fn to_pb(&self) -> pb::StoredMembership {
        pb::StoredMembership {
            log_id: self.log_id().to_pb(),
            membership: Some(self.membership().to_pb()),
        }
    }
}

impl FromPb<StoredMembership<NodeId, Node>> for Option<pb::StoredMembership> {
    fn into_raft(self) -> Result<StoredMembership<NodeId, Node>, ClusterError> {
        let stored = self.ok_or_else(|| missing("stored membership", "absent"))?;
        let membership = stored
            .membership
            .ok_or_else(|| missing("stored membership", "no membership"))?;
        Ok(StoredMembership::new(
            stored.log_id.into_raft()?,
            membership.into_raft()?,
        ))
    }
}

impl ToPb for Entry {
    type Pb = pb::Entry;
    fn to_pb(&self) -> pb::Entry {
        use pb::entry::Payload;
        let payload = match &self.payload {
            EntryPayload::Blank => Payload::Blank(pb::Blank {}),
            EntryPayload::Normal(batch) => Payload::Normal(batch.0.clone()),
            EntryPayload::Membership(m) => Payload::Membership(m.to_pb()),
        };
        pb::Entry {
            log_id: Some(self.log_id.to_pb()),
            payload: Some(payload),
        }
    }
}

impl FromPb<Entry> for pb::Entry {
    fn into_raft(self) -> Result<Entry, ClusterError> {
        use pb::entry::Payload;
        let log_id = self
            .log_id
            .ok_or_else(|| missing("entry", "no log id"))?
            .into_raft()?;
        let payload = match self.payload {
            Some(Payload::Blank(_)) => EntryPayload::Blank,
            Some(Payload::Normal(batch)) => EntryPayload::Normal(Proto(batch)),
            Some(Payload::Membership(m)) => EntryPayload::Membership(m.into_raft()?),
            None => return Err(missing("entry", "no payload (sent by a newer Skein?)")),
        };
        Ok(Entry { log_id, payload })
    }
}

impl ToPb for AppendEntriesRequest<TypeConfig> {
    type Pb = pb::AppendEntriesRequest;
    fn to_pb(&self) -> pb::AppendEntriesRequest {
        pb::AppendEntriesRequest {
            vote: Some(self.vote.to_pb()),
            prev_log_id: self.prev_log_id.to_pb(),
            entries: self.entries.iter().map(ToPb::to_pb).collect(),
            leader_commit: self.leader_commit.to_pb(),
        }
    }
}

impl FromPb<AppendEntriesRequest<TypeConfig>> for pb::AppendEntriesRequest {
    fn into_raft(self) -> Result<AppendEntriesRequest<TypeConfig>, ClusterError> {
        Ok(AppendEntriesRequest {
            vote: self.vote.into_raft()?,
            prev_log_id: self.prev_log_id.into_raft()?,
            entries: self
                .entries
                .into_iter()
                .map(FromPb::into_raft)
                .collect::<Result<_, _>>()?,
            leader_commit: self.leader_commit.into_raft()?,
        })
    }
}

impl ToPb for AppendEntriesResponse<NodeId> {
    type Pb = pb::AppendEntriesResponse;
    fn to_pb(&self) -> pb::AppendEntriesResponse {
        use pb::append_entries_response::Result as R;
        let result = match self {
            AppendEntriesResponse::Success => R::Success(pb::Success {}),
            AppendEntriesResponse::PartialSuccess(matching) => {
                R::PartialSuccess(pb::PartialSuccess {
                    matching: matching.to_pb(),
                })
            }
            AppendEntriesResponse::Conflict => R::Conflict(pb::Conflict {}),
            AppendEntriesResponse::HigherVote(vote) => R::HigherVote(vote.to_pb()),
        };
        pb::AppendEntriesResponse {
            result: Some(result),
        }
    }
}

impl FromPb<AppendEntriesResponse<NodeId>> for pb::AppendEntriesResponse {
    fn into_raft(self) -> Result<AppendEntriesResponse<NodeId>, ClusterError> {
        use pb::append_entries_response::Result as R;
        Ok(match self.result {
            Some(R::Success(_)) => AppendEntriesResponse::Success,
            Some(R::PartialSuccess(p)) => {
                AppendEntriesResponse::PartialSuccess(p.matching.into_raft()?)
            }
            Some(R::Conflict(_)) => AppendEntriesResponse::Conflict,
            Some(R::HigherVote(v)) => AppendEntriesResponse::HigherVote(Some(v).into_raft()?),
            None => return Err(missing("append entries response", "no result")),
        })
    }
}

impl ToPb for VoteRequest<NodeId> {
    type Pb = pb::VoteRequest;
    fn to_pb(&self) -> pb::VoteRequest {
        pb::VoteRequest {
            vote: Some(self.vote.to_pb()),
            last_log_id: self.last_log_id.to_pb(),
        }
    }
}

impl FromPb<VoteRequest<NodeId>> for pb::VoteRequest {
    fn into_raft(self) -> Result<VoteRequest<NodeId>, ClusterError> {
        Ok(VoteRequest::new(
            self.vote.into_raft()?,
            self.last_log_id.into_raft()?,
        ))
    }
}

impl ToPb for VoteResponse<NodeId> {
    type Pb = pb::VoteResponse;
    fn to_pb(&self) -> pb::VoteResponse {
        pb::VoteResponse {
            vote: Some(self.vote.to_pb()),
            vote_granted: self.vote_granted,
            last_log_id: self.last_log_id.to_pb(),
        }
    }
}

impl FromPb<VoteResponse<NodeId>> for pb::VoteResponse {
    fn into_raft(self) -> Result<VoteResponse<NodeId>, ClusterError> {
        Ok(VoteResponse {
            vote: self.vote.into_raft()?,
            vote_granted: self.vote_granted,
            last_log_id: self.last_log_id.into_raft()?,
        })
    }
}

impl ToPb for SnapshotMeta<NodeId, Node> {
    type Pb = pb::SnapshotMeta;
    fn to_pb(&self) -> pb::SnapshotMeta {
        pb::SnapshotMeta {
            last_log_id: self.last_log_id.to_pb(),
            last_membership: Some(self.last_membership.to_pb()),
            snapshot_id: self.snapshot_id.clone(),
        }
    }
}

impl FromPb<SnapshotMeta<NodeId, Node>> for Option<pb::SnapshotMeta> {
    fn into_raft(self) -> Result<SnapshotMeta<NodeId, Node>, ClusterError> {
        let meta = self.ok_or_else(|| missing("snapshot meta", "absent"))?;
        Ok(SnapshotMeta {
            last_log_id: meta.last_log_id.into_raft()?,
            last_membership: meta.last_membership.into_raft()?,
            snapshot_id: meta.snapshot_id,
        })
    }
}

impl ToPb for InstallSnapshotRequest<TypeConfig> {
    type Pb = pb::InstallSnapshotRequest;
    fn to_pb(&self) -> pb::InstallSnapshotRequest {
        pb::InstallSnapshotRequest {
            vote: Some(self.vote.to_pb()),
            meta: Some(self.meta.to_pb()),
            offset: self.offset,
            data: self.data.clone(),
            done: self.done,
        }
    }
}

impl FromPb<InstallSnapshotRequest<TypeConfig>> for pb::InstallSnapshotRequest {
    fn into_raft(self) -> Result<InstallSnapshotRequest<TypeConfig>, ClusterError> {
        Ok(InstallSnapshotRequest {
            vote: self.vote.into_raft()?,
            meta: self.meta.into_raft()?,
            offset: self.offset,
            data: self.data,
            done: self.done,
        })
    }
}

fn segment_to_pb(s: &SnapshotSegmentId) -> pb::SnapshotSegmentId {
    pb::SnapshotSegmentId {
        id: s.id.clone(),
        offset: s.offset,
    }
}

fn segment_from_pb(s: Option<pb::SnapshotSegmentId>) -> Result<SnapshotSegmentId, ClusterError> {
    let s = s.ok_or_else(|| missing("snapshot mismatch", "no segment id"))?;
    Ok(SnapshotSegmentId {
        id: s.id,
        offset: s.offset,
    })
}

/// What an InstallSnapshot chunk got: the responder's vote, or a mismatch to resend from.
pub type InstallSnapshotOutcome = Result<InstallSnapshotResponse<NodeId>, InstallSnapshotError>;

impl ToPb for InstallSnapshotOutcome {
    type Pb = pb::InstallSnapshotResponse;
    fn to_pb(&self) -> pb::InstallSnapshotResponse {
        use pb::install_snapshot_response::Result as R;
        let result = match self {
            Ok(response) => R::Vote(response.vote.to_pb()),
            Err(InstallSnapshotError::SnapshotMismatch(m)) => R::Mismatch(pb::SnapshotMismatch {
                expect: Some(segment_to_pb(&m.expect)),
                got: Some(segment_to_pb(&m.got)),
            }),
        };
        pb::InstallSnapshotResponse {
            result: Some(result),
        }
    }
}

impl FromPb<InstallSnapshotOutcome> for pb::InstallSnapshotResponse {
    fn into_raft(self) -> Result<InstallSnapshotOutcome, ClusterError> {
        use pb::install_snapshot_response::Result as R;
        Ok(match self.result {
            Some(R::Vote(v)) => Ok(InstallSnapshotResponse {
                vote: Some(v).into_raft()?,
            }),
            Some(R::Mismatch(m)) => Err(InstallSnapshotError::SnapshotMismatch(SnapshotMismatch {
                expect: segment_from_pb(m.expect)?,
                got: segment_from_pb(m.got)?,
            })),
            None => return Err(missing("install snapshot response", "no result")),
        })
    }
}

/// The node whose vote an AppendEntries carries: the leader that sent it.
pub(crate) fn vote_leader(rpc: &AppendEntriesRequest<TypeConfig>) -> NodeId {
    rpc.vote.leader_id.node_id
}

#[cfg(test)]
mod tests {
    use super::*;

    fn log_id(term: u64, node: u64, index: u64) -> LogId {
        LogId::new(CommittedLeaderId::new(term, node), index)
    }

    fn membership() -> Membership {
        let node = |n: u64| Node {
            name: format!("n{n}"),
            grpc: format!("host{n}:7070"),
            mqtt: format!("10.0.0.{n}:1883"),
        };
        Membership::new(
            vec![BTreeSet::from([1, 2]), BTreeSet::from([2, 3])],
            BTreeMap::from([(1, node(1)), (2, node(2)), (3, node(3)), (4, node(4))]),
        )
    }

    #[test]
    fn append_entries_round_trips_with_every_payload() {
        let batch = pb::CommandBatch {
            commands: vec![pb::Command {
                command: Some(pb::command::Command::Unsubscribe(pb::Unsubscribe {
                    client_id: "c".into(),
                    node_id: 1,
                    epoch: 2,
                    filter: "t".into(),
                })),
            }],
            leader_stamped_ms: 1_700_000_000_500,
        };
        let request = AppendEntriesRequest::<TypeConfig> {
            vote: Vote::new_committed(5, 2),
            prev_log_id: Some(log_id(4, 1, 9)),
            entries: vec![
                Entry {
                    log_id: log_id(5, 2, 10),
                    payload: EntryPayload::Blank,
                },
                Entry {
                    log_id: log_id(5, 2, 11),
                    payload: EntryPayload::Normal(Proto(batch)),
                },
                Entry {
                    log_id: log_id(5, 2, 12),
                    payload: EntryPayload::Membership(membership()),
                },
            ],
            leader_commit: None,
        };
        let back: AppendEntriesRequest<TypeConfig> = request.to_pb().into_raft().unwrap();
        assert_eq!(format!("{back:?}"), format!("{request:?}"));
        assert_eq!(back.entries, request.entries);
    }

    #[test]
    fn responses_and_snapshot_messages_round_trip() {
        for response in [
            AppendEntriesResponse::Success,
            AppendEntriesResponse::PartialSuccess(Some(log_id(1, 1, 3))),
            AppendEntriesResponse::PartialSuccess(None),
            AppendEntriesResponse::Conflict,
            AppendEntriesResponse::HigherVote(Vote::new(7, 3)),
        ] {
            assert_eq!(response.to_pb().into_raft().unwrap(), response);
        }
        let vote = VoteResponse {
            vote: Vote::new(3, 1),
            vote_granted: true,
            last_log_id: Some(log_id(2, 2, 8)),
        };
        assert_eq!(vote.to_pb().into_raft().unwrap(), vote);

        let request = InstallSnapshotRequest::<TypeConfig> {
            vote: Vote::new_committed(3, 1),
            meta: SnapshotMeta {
                last_log_id: Some(log_id(3, 1, 100)),
                last_membership: StoredMembership::new(Some(log_id(1, 1, 1)), membership()),
                snapshot_id: "3-1-100-1".into(),
            },
            offset: 4096,
            data: vec![1, 2, 3],
            done: true,
        };
        assert_eq!(request.to_pb().into_raft().unwrap(), request);

        let mismatch: InstallSnapshotOutcome =
            Err(InstallSnapshotError::SnapshotMismatch(SnapshotMismatch {
                expect: SnapshotSegmentId {
                    id: "a".into(),
                    offset: 0,
                },
                got: SnapshotSegmentId {
                    id: "b".into(),
                    offset: 10,
                },
            }));
        assert_eq!(mismatch.to_pb().into_raft().unwrap(), mismatch);
    }

    #[test]
    fn messages_missing_required_parts_are_refused() {
        let no_payload = pb::Entry {
            log_id: Some(log_id(1, 1, 1).to_pb()),
            payload: None,
        };
        assert!(FromPb::<Entry>::into_raft(no_payload).is_err());
        let no_vote = pb::VoteRequest {
            vote: None,
            last_log_id: None,
        };
        assert!(FromPb::<VoteRequest<NodeId>>::into_raft(no_vote).is_err());
        let no_leader = pb::LogId {
            leader_id: None,
            index: 3,
        };
        assert!(FromPb::<LogId>::into_raft(no_leader).is_err());
        assert!(
            FromPb::<AppendEntriesResponse<NodeId>>::into_raft(pb::AppendEntriesResponse {
                result: None
            })
            .is_err()
        );
    }
}
