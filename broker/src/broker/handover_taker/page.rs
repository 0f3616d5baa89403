//! One page of a hand-over put into the session: what it brings that the session has
//! already is left out (see `session/arrivals.rs`).

use std::sync::Arc;

use skein_seam::{ClientId, HandedOverMessage, NodeId, SessionHandover};
use skein_storage::{PageWrite, StoredInflight};

use super::{HashSet, Stop, Taken};
use crate::broker::Broker;
use crate::codec::QoS;
use crate::hash::HashMap;
use crate::session::{
    publish_key, to_stored_delivery, Delivery, Inflight, InflightState, Queued, Session,
    SessionState,
};

impl Broker {
    /// Puts a page's messages into the session, in order, and (a persistent session)
    /// writes them with the cursor `up_to` of `holder` in one transaction. Nothing changes
    /// in memory unless the write succeeded. Returns how many it took.
    ///
    /// A handed-over message that reached this node directly too (see
    /// `session/arrivals.rs`) is kept once: the handed-over copy when it was in flight to
    /// the client and the direct one is still queued here (it is resent with DUP under
    /// the id the client saw), else the direct one. A message the holder may have sent
    /// (in flight there, or `possibly_sent`) goes out from here with DUP, whichever copy
    /// is kept.
    pub(super) fn adopt_page(
        &self,
        session: &Session,
        page: SessionHandover,
        holder: NodeId,
        up_to: u64,
        taken: &mut Taken,
    ) -> Result<usize, Stop> {
        let id = session.client_id.as_str();
        let mut st = session.state();
        let persistent = st.is_persistent();
        let direct = Direct::of(&st);
        let mut write = PageWrite::default();
        let mut inflight = Vec::new();
        let mut queued = Vec::new();
        let mut unqueued = Vec::new();
        let mut redeliver = Vec::new();
        let mut doubles = 0;
        let mut acknowledged = 0;
        let mut next_seq = taken.next_seq;
        for handed in page.messages {
            let Some(delivery) = delivery_of(&session.client_id, &handed) else {
                continue;
            };
            // The client acknowledged it already, here or on a holder of the chain.
            if delivery
                .message
                .publish_id
                .is_some_and(|id| taken.delivered.contains(&id))
            {
                acknowledged += 1;
                continue;
            }
            let key = publish_key(&delivery.message);
            let resend = handed.packet_id.filter(|p| {
                !taken.live
                    && !st.id_in_use(*p)
                    && !inflight.iter().any(|f: &Inflight| f.packet_id == *p)
            });
            match (direct.seen.contains(&key), direct.queued.get(&key)) {
                // Sent to the client from the holder: this copy goes, the direct one stays
                // out of the queue.
                (_, Some(seq)) if resend.is_some() => unqueued.push(*seq),
                (true, queued) => {
                    // The client may have it from the holder: the copy queued here goes
                    // with DUP.
                    if handed.packet_id.is_some() || handed.possibly_sent {
                        redeliver.extend(queued.copied());
                    }
                    doubles += 1;
                    continue;
                }
                _ => {}
            }
            let seq = next_seq;
            next_seq += 1;
            match resend {
                Some(packet_id) => {
                    let state = if handed.released {
                        InflightState::Released
                    } else {
                        InflightState::Sent
                    };
                    if persistent {
                        write.inflight.push(StoredInflight {
                            packet_id,
                            seq,
                            message: to_stored_delivery(&delivery),
                            released: handed.released,
                        });
                    }
                    inflight.push(Inflight {
                        seq,
                        packet_id,
                        delivery,
                        state,
                    });
                }
                // The client has the message; only PUBCOMP was missing, under an id taken
                // here by another message or on a running connection: nothing left to
                // deliver.
                None if handed.packet_id.is_some() && handed.released => {
                    tracing::debug!(
                        client_id = id,
                        live = taken.live,
                        "a released QoS 2 message's id is not free here; its PUBCOMP is not awaited"
                    );
                }
                None => {
                    if persistent && delivery.qos != QoS::AtMostOnce {
                        write.queued.push((seq, to_stored_delivery(&delivery)));
                    }
                    if handed.packet_id.is_some() || handed.possibly_sent {
                        redeliver.push(seq);
                    }
                    queued.push(Queued { seq, delivery });
                }
            }
        }
        if persistent {
            write.unqueued.clone_from(&unqueued);
            self.store
                .handover_write_page(id, holder.0, up_to, &write)
                .map_err(|e| Stop::Storage(e.to_string()))?;
        }
        taken.next_seq = next_seq;
        let n = inflight.len() + queued.len();
        if !unqueued.is_empty() {
            st.queue.retain(|q| !unqueued.contains(&q.seq));
        }
        // What the hand-over brought is noted too: a direct copy coming later is not
        // queued again.
        if let Some(a) = st.arrivals.as_mut() {
            for key in inflight
                .iter()
                .map(|f| &f.delivery)
                .chain(queued.iter().map(|q| &q.delivery))
                .map(|d| publish_key(&d.message))
            {
                a.note_key(key);
            }
        }
        for f in inflight {
            st.push_inflight(f);
        }
        for q in queued {
            st.insert_queued(q);
        }
        if !redeliver.is_empty() {
            st.redeliver
                .get_or_insert_with(Box::default)
                .extend(redeliver);
        }
        if let Some(a) = &st.attachment {
            a.kick.wake();
        }
        let doubles = doubles + unqueued.len() + acknowledged;
        if acknowledged > 0 {
            tracing::debug!(
                client_id = id,
                acknowledged,
                "handed-over copies of messages the client acknowledged already left out"
            );
        }
        if doubles > 0 {
            crate::metrics::handover_messages("duplicate", doubles);
            tracing::debug!(
                client_id = id,
                doubles,
                "messages that reached this node both directly and with the hand-over kept once"
            );
        }
        Ok(n)
    }
}

/// What the session here has already, by [`publish_key`]: every arrival it noted while
/// a holder could still hand copies over, plus everything queued or in flight (what
/// reached it directly during the hand-over, and what it kept from an earlier stay here:
/// a copy of the same publish is a duplicate either way); and of those, the ones still
/// queued (their sequences), which a handed-over in-flight copy may replace.
struct Direct {
    seen: HashSet<u64>,
    queued: HashMap<u64, u64>,
}

impl Direct {
    fn of(st: &SessionState) -> Direct {
        let mut seen: HashSet<u64> = st
            .arrivals
            .as_ref()
            .map(|a| a.keys().collect())
            .unwrap_or_default();
        let mut queued = HashMap::default();
        for q in st.queue.iter() {
            let key = publish_key(&q.delivery.message);
            seen.insert(key);
            queued.insert(key, q.seq);
        }
        for f in st.inflight.iter() {
            seen.insert(publish_key(&f.delivery.message));
        }
        Direct { seen, queued }
    }
}

/// The delivery a handed-over message describes; None (logged) when no publish could
/// carry it.
fn delivery_of(client_id: &ClientId, handed: &HandedOverMessage) -> Option<Delivery> {
    let message = match crate::broker::broker_handle::forwarded_message(handed.message.clone()) {
        Ok(m) => m,
        Err(e) => {
            tracing::warn!(%client_id, error = %e, "ignored an invalid handed-over message");
            return None;
        }
    };
    let qos = message.qos;
    let retain = message.retain;
    Some(Delivery {
        message: Arc::new(message),
        qos,
        retain,
        subscription_ids: handed.subscription_ids.clone(),
    })
}
