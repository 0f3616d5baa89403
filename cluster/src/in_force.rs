//! What makes a SUBACK mean "in force cluster-wide" (invariant 2 of CLUSTER.md): after a
//! subscription committed at log index `i`, every other member is asked over gRPC
//! (`Cluster.AwaitFolded`) to answer once its broker has folded the registry up to `i`;
//! the SUBACK waits for the answers.
//!
//! Why that suffices. A member's broker routes a publish to node B when its interest index
//! (folded from the registry, see `fold.rs`) names B for a matching filter. The fold folds
//! entries in log order and publishes the index it reached only after telling the broker
//! (`interest_changed` has returned). So once member A answered "folded ≥ i", A's interest
//! index holds the subscription of entry `i` (or a later state of the same client's
//! subscriptions, which only a later command of the same connection can change). A
//! publish A accepts after that answer, and so after the SUBACK, is routed to B, whose
//! own trie had the subscription before the proposal was made. On B itself the local add
//! precedes the proposal.
//!
//! The same wait makes a takeover's CONNACK follow the old node's `taken_over` (see
//! [`await_member`]): one owner once `register_client` returns.
//!
//! What is not covered: a member that cannot be reached, or does not answer within the
//! bound (`RaftSettings::fold_wait_ms`), is skipped so that one dead member cannot stall
//! every SUBSCRIBE; it is counted (`skein_cluster_in_force_skipped_total`) and logged at
//! debug. Until that member folds the entry (it will, in log order, once it catches up), a
//! publish it accepts may miss the subscriber. A member whose broker is not attached yet
//! (it is starting) answers at once and is counted the same way; its broker reads the
//! registry whole when it is attached, as do members joining later, so they start with
//! the subscription.

use std::time::Duration;

use skein_proto::v1 as pb;

use crate::join::join_all;
use crate::metrics;
use crate::peers::cluster_client;
use crate::shared::Shared;
use crate::types::NodeId;

/// Waits (bounded) until every other member's broker has folded log index `index`.
#[tracing::instrument(level = "debug", skip(shared), fields(node = shared.id))]
pub(crate) async fn await_members(shared: &Shared, index: u64) {
    let others = shared.other_members();
    if others.is_empty() {
        return;
    }
    let bound = Duration::from_millis(shared.settings.fold_wait_ms);
    let asks = others
        .iter()
        .map(|(id, addr)| ask(shared, *id, addr, index, bound));
    for ((id, addr), answer) in others.iter().zip(join_all(asks).await) {
        if let Err(why) = answer {
            metrics::in_force_skipped();
            tracing::debug!(member = id, %addr, index, %why, "a member did not confirm a subscription in time; SUBACK without it");
        }
    }
}

/// Waits (bounded) until member `id`'s broker has folded log index `index`: a takeover's
/// CONNACK waits for the node that held the client id, so that its connection has been
/// told to end (its `taken_over`) by then. Skipped and counted as in
/// [`await_members`] when it does not answer in time.
#[tracing::instrument(level = "debug", skip(shared), fields(node = shared.id))]
pub(crate) async fn await_member(shared: &Shared, id: NodeId, index: u64) {
    let addr = shared.member_grpc(id);
    let Some(addr) = addr else {
        // Not a member any more: nothing of it to wait for.
        return;
    };
    let bound = Duration::from_millis(shared.settings.fold_wait_ms);
    if let Err(why) = ask(shared, id, &addr, index, bound).await {
        metrics::in_force_skipped();
        tracing::debug!(member = id, %addr, index, %why, "the previous owner did not confirm a takeover in time; CONNACK without it");
    }
}

/// Asks member `id` at `addr` to answer once it has folded `index`.
async fn ask(
    shared: &Shared,
    id: NodeId,
    addr: &str,
    index: u64,
    bound: Duration,
) -> Result<(), String> {
    if addr.is_empty() {
        return Err("no gRPC address known".into());
    }
    let channel = shared.peers.channel(id, addr).map_err(|e| e.to_string())?;
    let mut request = tonic::Request::new(pb::AwaitFoldedRequest {
        index,
        wait_ms: u32::try_from(bound.as_millis()).unwrap_or(u32::MAX),
    });
    // The member answers by the bound; the margin covers the trip.
    let deadline = bound + Duration::from_millis(200);
    request.set_timeout(deadline);
    let answer = tokio::time::timeout(deadline, cluster_client(channel).await_folded(request))
        .await
        .map_err(|_| format!("no answer within {deadline:?}"))?
        .map_err(|status| status.to_string())?
        .into_inner();
    if answer.folded {
        Ok(())
    } else {
        Err(format!(
            "folded only up to {:?} within {bound:?}",
            answer.folded_index
        ))
    }
}
