use super::*;

fn empty_message() -> StoredMessage {
    StoredMessage::default()
}

fn full_message() -> StoredMessage {
    StoredMessage {
        topic: "sensors/käse/€/温度".into(),
        payload: Bytes::from_static(&[0, 1, 2, 0xff, 0x80, 0x7f, 0]),
        qos: 2,
        retain: true,
        received_at_ms: u64::MAX,
        message_expiry_interval: Some(u32::MAX),
        payload_format_indicator: Some(1),
        content_type: Some("application/octet-stream".into()),
        response_topic: Some("reply/to/me".into()),
        correlation_data: Some(Bytes::from_static(b"\x00corr\xff")),
        user_properties: vec![
            ("k".into(), "v".into()),
            ("k".into(), "duplicate keys are allowed".into()),
            (String::new(), String::new()),
        ],
        subscription_identifiers: vec![1, 268_435_455, 0, u32::MAX],
        publisher: "pub-client".into(),
        publish_id: Some(u64::MAX),
    }
}

/// Present-but-empty optionals must stay distinct from absent ones.
fn empty_optionals_message() -> StoredMessage {
    StoredMessage {
        topic: "t".into(),
        qos: 1,
        message_expiry_interval: Some(0),
        payload_format_indicator: Some(0),
        content_type: Some(String::new()),
        response_topic: Some(String::new()),
        correlation_data: Some(Bytes::new()),
        ..StoredMessage::default()
    }
}

/// Payload and topic long enough to need multi-byte varint lengths.
fn large_message() -> StoredMessage {
    StoredMessage {
        topic: "a/".repeat(100),
        payload: Bytes::from(vec![0xab; 70_000]),
        user_properties: (0..200).map(|i| (i.to_string(), "x".repeat(i))).collect(),
        subscription_identifiers: (0..300).collect(),
        ..full_message()
    }
}

fn messages() -> Vec<StoredMessage> {
    vec![
        empty_message(),
        full_message(),
        empty_optionals_message(),
        large_message(),
    ]
}

fn sessions() -> Vec<StoredSession> {
    vec![
        StoredSession::default(),
        StoredSession {
            client_id: "client/with/slashes and spaces ✓".into(),
            protocol_level: 5,
            session_expiry_interval: u32::MAX,
            disconnected_at_ms: Some(1_700_000_000_000),
            subscriptions: vec![
                StoredSubscription {
                    filter: "$share/group/a/+/#".into(),
                    qos: 2,
                    no_local: true,
                    retain_as_published: true,
                    retain_handling: 2,
                    subscription_identifier: Some(268_435_455),
                },
                StoredSubscription {
                    filter: "#".into(),
                    qos: 0,
                    no_local: false,
                    retain_as_published: true,
                    retain_handling: 1,
                    subscription_identifier: None,
                },
                StoredSubscription {
                    no_local: true,
                    ..StoredSubscription::default()
                },
            ],
            pending_will: Some((full_message(), 42)),
        },
        StoredSession {
            client_id: "v311".into(),
            protocol_level: 4,
            session_expiry_interval: 0,
            disconnected_at_ms: Some(0),
            subscriptions: vec![],
            pending_will: Some((empty_message(), u64::MAX)),
        },
    ]
}

fn inflights() -> Vec<StoredInflight> {
    vec![
        StoredInflight::default(),
        StoredInflight {
            packet_id: 1,
            seq: u64::MAX,
            message: full_message(),
            released: false,
        },
        StoredInflight {
            packet_id: u16::MAX,
            seq: 7,
            message: empty_optionals_message(),
            released: true,
        },
    ]
}

/// Every encoded record of every type, with a decoder that reports only
/// success or failure, for the generic corruption tests.
type Decoder = fn(&[u8]) -> bool;

fn all_encodings() -> Vec<(String, Vec<u8>, Decoder)> {
    let mut out: Vec<(String, Vec<u8>, Decoder)> = Vec::new();
    for (i, m) in messages().iter().enumerate() {
        out.push((format!("message {i}"), encode_message(m), |b| {
            decode_message(b).is_ok()
        }));
    }
    for (i, s) in sessions().iter().enumerate() {
        out.push((format!("session {i}"), encode_session(s), |b| {
            decode_session(b).is_ok()
        }));
    }
    for (i, f) in inflights().iter().enumerate() {
        out.push((format!("inflight {i}"), encode_inflight(f), |b| {
            decode_inflight(0, b).is_ok()
        }));
    }
    out.push(("marker".into(), encode_marker(), |b| {
        decode_marker(b).is_ok()
    }));
    out
}

#[test]
fn message_round_trips() {
    for m in messages() {
        let enc = encode_message(&m);
        assert_eq!(enc[0], FORMAT_VERSION);
        assert_eq!(decode_message(&enc).unwrap(), m);
    }
}

#[test]
fn session_round_trips() {
    for s in sessions() {
        assert_eq!(decode_session(&encode_session(&s)).unwrap(), s);
    }
}

#[test]
fn inflight_round_trips_with_packet_id_from_key() {
    for f in inflights() {
        let enc = encode_inflight(&f);
        assert_eq!(decode_inflight(f.packet_id, &enc).unwrap(), f);
    }
}

#[test]
fn marker_round_trips() {
    assert_eq!(encode_marker(), vec![FORMAT_VERSION]);
    decode_marker(&encode_marker()).unwrap();
}

#[test]
fn empty_message_is_compact() {
    // version, topic len, payload len, qos, flags, 8 time, 5 option tags,
    // 2 counts, publisher len, publish id option tag.
    assert_eq!(
        encode_message(&empty_message()).len(),
        1 + 1 + 1 + 1 + 1 + 8 + 5 + 2 + 1 + 1
    );
}

/// Records written before publish ids (format version 1) still read, without one; the
/// same record as version 2 needs its option tag.
#[test]
fn version_1_records_read_without_a_publish_id() {
    let m = StoredMessage {
        publish_id: None,
        ..full_message()
    };
    let mut v1 = encode_message(&m);
    assert_eq!(v1.pop(), Some(0), "the absent publish id's tag");
    v1[0] = 1;
    assert_eq!(decode_message(&v1).unwrap(), m);
    v1[0] = 2;
    assert!(decode_message(&v1).is_err());

    let f = StoredInflight {
        packet_id: 9,
        seq: 4,
        message: m.clone(),
        released: true,
    };
    let mut v1 = encode_inflight(&f);
    assert_eq!(v1.pop(), Some(0));
    v1[0] = 1;
    assert_eq!(decode_inflight(9, &v1).unwrap(), f);
}

#[test]
fn every_truncation_is_an_error() {
    for (name, enc, decodes) in all_encodings() {
        assert!(decodes(&enc), "{name} should decode");
        for len in 0..enc.len() {
            assert!(!decodes(&enc[..len]), "{name} truncated to {len} decoded");
        }
    }
}

#[test]
fn trailing_bytes_are_an_error() {
    for (name, mut enc, decodes) in all_encodings() {
        enc.push(0);
        assert!(!decodes(&enc), "{name} with a trailing byte decoded");
    }
}

#[test]
fn unknown_versions_are_an_error() {
    for (name, mut enc, decodes) in all_encodings() {
        for v in [0, FORMAT_VERSION + 1, 0xff] {
            enc[0] = v;
            assert!(!decodes(&enc), "{name} with version {v} decoded");
        }
    }
}

#[test]
fn flipping_any_byte_never_panics() {
    // Not every flip is detectable (payload bytes are opaque), but none may panic.
    for (_, enc, decodes) in all_encodings() {
        if enc.len() > 2_000 {
            continue; // keep the test quick; the large record is covered by truncation
        }
        for i in 0..enc.len() {
            for mask in [0x01, 0x80, 0xff] {
                let mut bad = enc.clone();
                bad[i] ^= mask;
                let _ = decodes(&bad);
            }
        }
    }
}

/// Offsets inside the empty message (after the version byte).
const TOPIC_LEN: usize = 1;
const QOS: usize = 3;
const FLAGS: usize = 4;
const FIRST_OPTION_TAG: usize = 13;

#[test]
fn invalid_option_tag_is_an_error() {
    let mut enc = encode_message(&empty_message());
    enc[FIRST_OPTION_TAG] = 2;
    let e = decode_message(&enc).unwrap_err();
    assert!(e.0.contains("option tag"), "{e:?}");
}

#[test]
fn unknown_flag_bits_are_an_error() {
    let mut enc = encode_message(&empty_message());
    enc[FLAGS] = 0b10;
    assert!(decode_message(&enc).unwrap_err().0.contains("flag"));

    let f = StoredInflight::default();
    let mut enc = encode_inflight(&f);
    enc[1 + 8] = 0b100; // after version and seq
    assert!(decode_inflight(0, &enc).is_err());
}

#[test]
fn qos_byte_is_stored_verbatim() {
    // Range checks belong to the broker; the codec must just not lose data.
    let mut enc = encode_message(&empty_message());
    enc[QOS] = 7;
    assert_eq!(decode_message(&enc).unwrap().qos, 7);
}

#[test]
fn invalid_utf8_is_an_error() {
    let mut m = empty_message();
    m.topic = "ab".into();
    let mut enc = encode_message(&m);
    enc[TOPIC_LEN + 1] = 0xff;
    assert!(decode_message(&enc).unwrap_err().0.contains("UTF-8"));
}

#[test]
fn huge_lengths_are_an_error_without_allocating() {
    // A topic length of u64::MAX, and of one past what is left.
    let mut enc = vec![FORMAT_VERSION];
    enc.extend_from_slice(&[0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01]);
    assert!(decode_message(&enc).unwrap_err().0.contains("length"));

    let mut enc = encode_message(&empty_message());
    enc[TOPIC_LEN] = 100;
    assert!(decode_message(&enc).is_err());

    // A user-property count far beyond the bytes left.
    let mut s = encode_session(&StoredSession::default());
    let count_at = 1 + 1 + 1 + 4 + 1; // version, id len, level, expiry, opt tag
    s.splice(count_at..=count_at, [0xff, 0xff, 0xff, 0xff, 0x0f]);
    assert!(decode_session(&s).is_err());
}

#[test]
fn varint_edges() {
    for v in [0u64, 1, 127, 128, 16_383, 16_384, u32::MAX as u64, u64::MAX] {
        let mut w = Writer(Vec::new());
        w.len(v as usize);
        let mut r = Reader {
            buf: &w.0,
            version: FORMAT_VERSION,
        };
        assert_eq!(r.varint().unwrap(), v);
        r.finish().unwrap();
    }
    // 11 bytes, and a tenth byte carrying more than bit 63.
    let too_long = [0x80; 11];
    assert!(Reader {
        buf: &too_long,
        version: FORMAT_VERSION
    }
    .varint()
    .is_err());
    let mut overflow = [0xff; 10];
    overflow[9] = 0x02;
    assert!(Reader {
        buf: &overflow,
        version: FORMAT_VERSION
    }
    .varint()
    .is_err());
}

#[test]
fn decode_error_names_the_tree() {
    let e = decode_message(&[]).unwrap_err().in_tree("queue");
    assert!(matches!(e, StorageError::Corrupt { tree: "queue", .. }));
    assert!(e.to_string().contains("queue"), "{e}");
}
