use std::sync::Arc;
use std::time::Duration;

use super::*;

use prost::bytes::Bytes;
use prost::Message as _;
use skein_proto::v1 as pb;

fn decoded(batch: Option<EncodedBatch>) -> pb::PublishBatch {
    pb::PublishBatch::decode(&batch.expect("a batch").to_vec()[..]).unwrap()
}

fn publish(topic: &str, payload: usize) -> ForwardedPublish {
    ForwardedPublish {
        topic: topic.into(),
        payload: Bytes::from(vec![7u8; payload]),
        qos: 1,
        to_subscribers: true,
        ..Default::default()
    }
}

fn settings() -> ForwardSettings {
    ForwardSettings {
        queue_messages: 4,
        queue_bytes: 1000,
        batch_messages: 2,
        batch_bytes: 300,
        window_batches: 2,
        ..Default::default()
    }
}

/// Waits (bounded) until every forward of `tally` is answered; each ticket's outcome.
async fn outcomes(tally: &ForwardTally, tickets: u32) -> Vec<Result<(), ForwardError>> {
    tokio::time::timeout(Duration::from_secs(5), tally.settled())
        .await
        .expect("the tally settles");
    (0..tickets).map(|t| tally.outcome(t)).collect()
}

fn refused(node: u64, detail: &str) -> ForwardError {
    ForwardError::Refused {
        node: skein_seam::NodeId(node),
        detail: detail.into(),
    }
}

#[tokio::test]
async fn batches_keep_order_fill_the_window_and_acks_free_room() {
    let q = PeerQueue::new(2, 99, settings());
    let tally = ForwardTally::new();
    for i in 0..4 {
        q.push(&publish(&format!("t/{i}"), 10), &tally, i).unwrap();
    }
    assert_eq!(
        q.push(&publish("t/4", 10), &tally, 4).unwrap_err(),
        ForwardError::QueueFull(skein_seam::NodeId(2))
    );
    assert_eq!(tally.outstanding(), 4, "a refused forward is not counted");
    let first = decoded(q.next_batch(1, 7));
    let second = decoded(q.next_batch(1, 0));
    assert!(q.next_batch(1, 0).is_none(), "window of two batches");
    assert_eq!((first.sequence, second.sequence), (1, 2));
    assert_eq!(
        (
            first.from_node,
            first.to_node,
            first.stream_id,
            first.folded_index
        ),
        (1, 2, 99, 7)
    );
    let topics: Vec<&str> = first
        .publishes
        .iter()
        .chain(&second.publishes)
        .map(|p| p.topic.as_str())
        .collect();
    assert_eq!(topics, ["t/0", "t/1", "t/2", "t/3"]);

    assert!(q.accepted(2).is_err(), "acks come in order");
    q.accepted(1).unwrap();
    assert_eq!(q.held(), 2);
    assert_eq!(
        tally.outstanding(),
        2,
        "one acknowledgement answers its batch"
    );
    // A new stream gets the unacknowledged batch again, same sequence, marked resent.
    let again = q.resend();
    assert_eq!(again.len(), 1);
    assert_eq!(
        decoded(Some(again[0].clone())),
        pb::PublishBatch {
            resent: true,
            ..second
        }
    );
    q.accepted(2).unwrap();
    assert_eq!(q.held(), 0);
    assert_eq!(outcomes(&tally, 4).await, vec![Ok(()); 4]);
}

#[tokio::test]
async fn a_run_split_between_batches_is_answered_batch_by_batch() {
    let q = PeerQueue::new(2, 1, settings());
    let tally = ForwardTally::new();
    for i in 0..3 {
        q.push(&publish(&format!("t/{i}"), 1), &tally, i).unwrap();
    }
    let first = decoded(q.next_batch(1, 0));
    let second = decoded(q.next_batch(1, 0));
    assert_eq!((first.publishes.len(), second.publishes.len()), (2, 1));
    // The second batch's answer first: it is refused (the batch stays for a retry), then
    // the first is accepted.
    q.refused(second.sequence, "disk full");
    assert_eq!(tally.outstanding(), 2);
    q.accepted(first.sequence).unwrap();
    assert_eq!(
        outcomes(&tally, 3).await,
        [Ok(()), Ok(()), Err(refused(2, "disk full"))]
    );
    // Retried and accepted later: the ticket was answered already and is not again.
    assert_eq!(q.resend().len(), 1);
    q.accepted(second.sequence).unwrap();
    assert_eq!(tally.outstanding(), 0);
    assert_eq!(q.held(), 0);
}

#[tokio::test]
async fn runs_follow_publishers_tickets_and_ticks_and_answer_out_of_order() {
    let settings = ForwardSettings {
        queue_messages: 100,
        batch_messages: 100,
        window_batches: 4,
        ..settings()
    };
    let to_2 = PeerQueue::new(2, 1, settings.clone());
    let to_3 = PeerQueue::new(3, 1, settings);
    let a = ForwardTally::new();
    let b = ForwardTally::new();
    // Publisher a's tickets 0 and 1 go to both peers, 2 to node 2 only; publisher b's
    // forwards come in between (another run), and a's ticket 4 skips one (another run).
    for (q, tally, ticket) in [
        (&to_2, &a, 0),
        (&to_3, &a, 0),
        (&to_2, &b, 0),
        (&to_2, &a, 1),
        (&to_3, &a, 1),
        (&to_2, &a, 2),
        (&to_2, &a, 4),
    ] {
        q.push(&publish("t", 1), tally, ticket).unwrap();
    }
    assert!(!to_2.tick(Duration::from_secs(5)));
    to_2.push(&publish("t", 1), &a, 5).unwrap();
    assert_eq!((a.outstanding(), b.outstanding()), (7, 1));
    let to_2_batch = decoded(to_2.next_batch(1, 0));
    let to_3_batch = decoded(to_3.next_batch(1, 0));
    assert_eq!(to_2_batch.publishes.len(), 6);
    // Node 3 answers first (refused), then node 2 (accepted): a publish is not taken when
    // any node it went to did not take it.
    to_3.refused(to_3_batch.sequence, "busy");
    to_2.accepted(to_2_batch.sequence).unwrap();
    assert_eq!(
        outcomes(&a, 6).await,
        [
            Err(refused(3, "busy")),
            Err(refused(3, "busy")),
            Ok(()),
            Ok(()),
            Ok(()),
            Ok(()),
        ]
    );
    assert_eq!(outcomes(&b, 1).await, [Ok(())]);
}

#[tokio::test]
async fn publishers_wait_for_room_above_half_the_bound_until_acks_free_it() {
    let q = PeerQueue::new(2, 1, settings());
    let tally = ForwardTally::new();
    for i in 0..3 {
        q.push(&publish(&format!("t/{i}"), 1), &tally, i).unwrap();
    }
    assert!(!q.has_room(), "3 of 4 held: over half");
    let first = decoded(q.next_batch(1, 0));
    let short = std::time::Duration::from_millis(50);
    assert!(tokio::time::timeout(short, q.room()).await.is_err());
    let waiting = tokio::spawn({
        let q = Arc::new(q);
        let waiter = q.clone();
        let sequence = first.sequence;
        async move {
            let room = tokio::spawn(async move { waiter.room().await });
            tokio::task::yield_now().await;
            q.accepted(sequence).unwrap();
            room.await.unwrap();
            q
        }
    });
    let q = tokio::time::timeout(std::time::Duration::from_secs(5), waiting)
        .await
        .expect("room once the batch was acknowledged")
        .unwrap();
    assert!(q.has_room());
    // A closed queue never keeps a publisher waiting.
    for i in 0..2 {
        q.push_unanswered(&publish(&format!("u/{i}"), 1)).unwrap();
    }
    assert!(!q.has_room());
    q.close(Closed::ShuttingDown);
    assert!(q.has_room());
}

#[tokio::test]
async fn callers_past_the_timeout_are_told_but_their_messages_stay_queued() {
    let q = PeerQueue::new(2, 1, settings());
    let timeout = std::time::Duration::from_secs(5);
    let old = ForwardTally::new();
    q.push(&publish("old", 1), &old, 0).unwrap();
    let sent = decoded(q.next_batch(1, 0));
    for _ in 0..5 {
        assert!(!q.tick(timeout));
    }
    q.push_unanswered(&publish("nobody waits", 1)).unwrap();
    let young = ForwardTally::new();
    q.push(&publish("young", 1), &young, 0).unwrap();
    for _ in 5..TICKS_PER_TIMEOUT {
        assert!(!q.tick(timeout));
    }
    assert_eq!(
        old.outstanding(),
        1,
        "a timeout of ticks, but maybe queued late in its tick"
    );
    assert!(!q.tick(timeout));
    assert!(matches!(
        &outcomes(&old, 1).await[0],
        Err(ForwardError::Unavailable { detail, .. }) if detail.contains("stays queued")
    ));
    assert_eq!(young.outstanding(), 1, "still within the timeout");
    // Still sent, still answered when acknowledged (to nobody, for the expired one).
    assert_eq!(q.held(), 3);
    q.accepted(sent.sequence).unwrap();
    let rest = decoded(q.next_batch(1, 0));
    assert_eq!(rest.publishes.len(), 2);
    q.accepted(rest.sequence).unwrap();
    assert_eq!(outcomes(&young, 1).await, [Ok(())]);
    q.close(Closed::Removed);
    assert!(q.tick(timeout), "a closed queue ends its task");
}

#[test]
fn a_batch_closes_at_its_byte_bound_but_a_large_message_travels_alone() {
    let q = PeerQueue::new(2, 1, settings());
    q.push_unanswered(&publish("a", 200)).unwrap();
    q.push_unanswered(&publish("b", 200)).unwrap();
    assert_eq!(decoded(q.next_batch(1, 0)).publishes.len(), 1);
    assert_eq!(decoded(q.next_batch(1, 0)).publishes.len(), 1);
    // Larger than the whole byte bound: refused, never queued.
    assert!(matches!(
        q.push_unanswered(&publish("huge", 2000)),
        Err(ForwardError::QueueFull(_))
    ));
}

#[tokio::test]
async fn closing_fails_every_caller_and_refusals_answer_but_keep_the_batch() {
    let settings = ForwardSettings {
        queue_messages: 100,
        ..settings()
    };
    let q = PeerQueue::new(3, 1, settings);
    let tally = ForwardTally::new();
    q.push(&publish("a", 1), &tally, 0).unwrap();
    q.push(&publish("b", 1), &tally, 1).unwrap();
    let batch = decoded(q.next_batch(1, 0));
    q.refused(batch.sequence, "disk full");
    assert_eq!(
        outcomes(&tally, 2).await,
        vec![Err(refused(3, "disk full")); 2]
    );
    assert_eq!(q.resend().len(), 1, "still held for another try");

    // Peer loss: whatever is held, sent or waiting, is answered as unavailable.
    let lost = ForwardTally::new();
    q.push(&publish("c", 1), &lost, 0).unwrap();
    q.push(&publish("d", 1), &lost, 1).unwrap();
    assert!(q.next_batch(1, 0).is_some());
    q.push(&publish("e", 1), &lost, 2).unwrap();
    q.close(Closed::Removed);
    for outcome in outcomes(&lost, 3).await {
        assert!(matches!(outcome, Err(ForwardError::Unavailable { .. })));
    }
    assert_eq!(q.held(), 0);
    assert!(matches!(
        q.push(&publish("f", 1), &lost, 3),
        Err(ForwardError::Unavailable { .. })
    ));
    assert_eq!(lost.outstanding(), 0);
}

#[tokio::test]
async fn a_queue_emptied_for_a_redirect_hands_each_message_its_ticket() {
    let settings = ForwardSettings {
        queue_messages: 100,
        ..settings()
    };
    let q = PeerQueue::new(2, 1, settings);
    let tally = ForwardTally::new();
    q.push(&publish("0", 1), &tally, 0).unwrap();
    q.push_unanswered(&publish("qos0", 1)).unwrap();
    q.push(&publish("1", 1), &tally, 1).unwrap();
    q.push(&publish("2", 1), &tally, 2).unwrap();
    q.push(&publish("3", 1), &tally, 3).unwrap();
    // Sent: [0, qos0], [1, 2]; waiting: [3].
    assert!(q.next_batch(1, 0).is_some());
    assert!(q.next_batch(1, 0).is_some());
    let held = q.take_all(Closed::MarkedDown);
    let shape: Vec<Vec<bool>> = held
        .iter()
        .map(|h| h.waiters.iter().map(Option::is_some).collect())
        .collect();
    assert_eq!(shape, [vec![true, false], vec![true, true], vec![true]]);
    assert_eq!(tally.outstanding(), 4, "nobody answered yet");
    let mut tickets = held.into_iter().flat_map(|h| h.waiters).flatten();
    tickets.next().unwrap().answer(Ok(()));
    tickets
        .next()
        .unwrap()
        .answer(Err(refused(4, "the adopter refused")));
    // Tickets dropped unanswered (a redirect that lost them) still answer: as failed.
    drop(tickets);
    let outcomes = outcomes(&tally, 4).await;
    assert_eq!(outcomes[0], Ok(()));
    assert_eq!(outcomes[1], Err(refused(4, "the adopter refused")));
    for outcome in &outcomes[2..] {
        assert!(matches!(outcome, Err(ForwardError::Unavailable { .. })));
    }
}

/// A batch names the index its messages were queued at, not the sender's index when it
/// is built (they may have waited for the window meanwhile), and holds only messages
/// queued at one index: the receiver takes the batch's index as each message's bound of
/// the registry it was routed by, so one routed before a session came there must not go
/// under a later message's index. Unknown (0), the sender's index goes.
#[tokio::test]
async fn a_batch_holds_messages_routed_at_one_index_and_names_it() {
    let q = PeerQueue::new(
        2,
        1,
        ForwardSettings {
            queue_messages: 8,
            batch_messages: 8,
            batch_bytes: 1000,
            window_batches: 8,
            ..settings()
        },
    );
    let tally = ForwardTally::new();
    q.push_routed(&publish("t/1", 1), &tally, 0, 5).unwrap();
    q.push_routed(&publish("t/2", 1), &tally, 1, 5).unwrap();
    q.push_routed(&publish("t/3", 1), &tally, 2, 6).unwrap();
    q.push_routed(&publish("t/4", 1), &tally, 3, 7).unwrap();
    q.push(&publish("t/5", 1), &tally, 4).unwrap();
    q.push(&publish("t/6", 1), &tally, 5).unwrap();
    let batches: Vec<(u64, Vec<String>)> = std::iter::from_fn(|| q.next_batch(1, 40))
        .map(|b| {
            let b = decoded(Some(b));
            let topics = b.publishes.iter().map(|p| p.topic.clone()).collect();
            (b.folded_index, topics)
        })
        .collect();
    let topics = |ts: &[&str]| ts.iter().map(|t| t.to_string()).collect::<Vec<_>>();
    assert_eq!(
        batches,
        vec![
            (5, topics(&["t/1", "t/2"])),
            (6, topics(&["t/3"])),
            (7, topics(&["t/4"])),
            (40, topics(&["t/5", "t/6"])),
        ]
    );
    // Never above the sender's index now.
    q.push_routed(&publish("t/7", 1), &tally, 6, 50).unwrap();
    assert_eq!(decoded(q.next_batch(1, 45)).folded_index, 45);
}

/// Bounds large enough that many chunks of waiting messages pile up, as behind a slow peer.
fn deep_settings() -> ForwardSettings {
    ForwardSettings {
        queue_messages: 10_000,
        queue_bytes: 64 * 1024 * 1024,
        batch_messages: 1024,
        batch_bytes: 1024 * 1024,
        window_batches: 4,
        ..Default::default()
    }
}

/// Waiting messages fill chunks that are sealed, not one buffer grown (and copied) as the
/// queue deepens: however many wait, the chunk being written stays one chunk's size.
#[test]
fn a_deep_queue_seals_chunks_instead_of_growing_one_buffer() {
    let q = PeerQueue::new(2, 1, deep_settings());
    // A batch sent and unacknowledged shares the first chunk, as under load.
    q.push_unanswered(&publish("first", 100)).unwrap();
    assert!(q.next_batch(1, 0).is_some());
    for i in 0..2000 {
        q.push_unanswered(&publish(&format!("t/{i}"), 100)).unwrap();
    }
    let st = q.state();
    assert!(
        st.pending.capacity() <= PENDING_CHUNK,
        "the chunk being written grew to {} bytes",
        st.pending.capacity()
    );
    assert!(st.sealed.len() >= 2, "{} sealed chunks", st.sealed.len());
    let waiting: usize = st.waiting.iter().map(|w| w.bytes).sum();
    let chunked: usize = st.sealed.iter().map(Bytes::len).sum::<usize>() + st.pending.len();
    assert_eq!(
        chunked, waiting,
        "every waiting byte is in exactly one chunk"
    );
}

/// Batches spanning chunk boundaries carry every message once, in order, each whole; a
/// message larger than a chunk gets one of its own.
#[test]
fn batches_across_chunks_keep_every_message_whole_and_in_order() {
    let q = PeerQueue::new(2, 1, deep_settings());
    let payload = |i: usize| {
        if i == 700 {
            PENDING_CHUNK + 10
        } else {
            90 + i % 40
        }
    };
    for i in 0..1500 {
        q.push_unanswered(&publish(&format!("t/{i}"), payload(i)))
            .unwrap();
    }
    let mut seen = Vec::new();
    let mut spanning = 0;
    while let Some(batch) = q.next_batch(1, 0) {
        spanning += usize::from(batch.publishes.len() > 1);
        let sequence = decoded(Some(batch.clone())).sequence;
        for p in decoded(Some(batch)).publishes {
            seen.push((p.topic, p.payload.len()));
        }
        q.accepted(sequence).unwrap();
    }
    let expected: Vec<(String, usize)> =
        (0..1500).map(|i| (format!("t/{i}"), payload(i))).collect();
    assert_eq!(seen, expected);
    assert!(spanning > 0, "some batch spans chunks");
    assert_eq!(q.held(), 0);
}

/// A queue handed over for a redirect gives back every message, the sent batches' and the
/// waiting ones', across chunk boundaries, each readable on its own.
#[tokio::test]
async fn a_queue_emptied_across_chunks_hands_over_every_message() {
    let q = PeerQueue::new(2, 1, deep_settings());
    for i in 0..3000 {
        q.push_unanswered(&publish(&format!("t/{i}"), 100)).unwrap();
    }
    // Two batches sent (spanning chunks), the rest waiting in sealed chunks and the last.
    assert!(q.next_batch(1, 0).is_some_and(|b| b.publishes.len() > 1));
    assert!(q.next_batch(1, 0).is_some());
    let held = q.take_all(Closed::MarkedDown);
    assert_eq!(
        (held[0].sent, held[1].sent, held[2].sent),
        (true, true, false)
    );
    let topics: Vec<String> = held
        .into_iter()
        .flat_map(|h| wire::read_batch_entries(h.entries))
        .map(|p| p.expect("a whole entry").topic.to_string())
        .collect();
    let expected: Vec<String> = (0..3000).map(|i| format!("t/{i}")).collect();
    assert_eq!(topics, expected);
}
