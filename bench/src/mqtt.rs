//! A minimal MQTT 3.1.1 codec: just the packets the load generator sends and receives.
//!
//! Encoding appends to a caller-owned `BytesMut` (one reusable buffer per connection, so a
//! batch of packets becomes one write). Parsing borrows from the read buffer: a PUBLISH's
//! topic and payload are slices into it, so no allocation happens per message.

use bytes::{BufMut, BytesMut};

pub const CONNECT: u8 = 1;
pub const CONNACK: u8 = 2;
pub const PUBLISH: u8 = 3;
pub const PUBACK: u8 = 4;
pub const PUBREC: u8 = 5;
pub const PUBREL: u8 = 6;
pub const PUBCOMP: u8 = 7;
pub const SUBSCRIBE: u8 = 8;
pub const SUBACK: u8 = 9;
pub const PINGREQ: u8 = 12;
pub const PINGRESP: u8 = 13;
pub const DISCONNECT: u8 = 14;

/// Largest value of the variable-length Remaining Length field.
pub const MAX_REMAINING: usize = 268_435_455;

/// Appends the Remaining Length variable byte integer.
fn put_remaining(buf: &mut BytesMut, mut len: usize) {
    debug_assert!(len <= MAX_REMAINING);
    loop {
        let mut byte = (len % 128) as u8;
        len /= 128;
        if len > 0 {
            byte |= 0x80;
        }
        buf.put_u8(byte);
        if len == 0 {
            break;
        }
    }
}

fn put_str(buf: &mut BytesMut, s: &[u8]) {
    buf.put_u16(s.len() as u16);
    buf.put_slice(s);
}

/// CONNECT, protocol level 4 (3.1.1), no will, no credentials.
pub fn encode_connect(buf: &mut BytesMut, client_id: &str, keepalive: u16, clean: bool) {
    let remaining = 10 + 2 + client_id.len();
    buf.put_u8(CONNECT << 4);
    put_remaining(buf, remaining);
    put_str(buf, b"MQTT");
    buf.put_u8(4);
    buf.put_u8(if clean { 0x02 } else { 0x00 });
    buf.put_u16(keepalive);
    put_str(buf, client_id.as_bytes());
}

/// SUBSCRIBE to one filter.
pub fn encode_subscribe(buf: &mut BytesMut, packet_id: u16, filter: &str, qos: u8) {
    let remaining = 2 + 2 + filter.len() + 1;
    buf.put_u8((SUBSCRIBE << 4) | 0x02);
    put_remaining(buf, remaining);
    buf.put_u16(packet_id);
    put_str(buf, filter.as_bytes());
    buf.put_u8(qos);
}

/// Fixed header, topic and packet id of a PUBLISH whose payload (`payload_len` bytes)
/// the caller appends right after.
pub fn encode_publish_head(
    buf: &mut BytesMut,
    topic: &[u8],
    qos: u8,
    packet_id: u16,
    payload_len: usize,
) {
    let id_len = if qos > 0 { 2 } else { 0 };
    let remaining = 2 + topic.len() + id_len + payload_len;
    buf.put_u8((PUBLISH << 4) | (qos << 1));
    put_remaining(buf, remaining);
    put_str(buf, topic);
    if qos > 0 {
        buf.put_u16(packet_id);
    }
}

/// PUBACK, PUBREC, PUBREL or PUBCOMP.
pub fn encode_ack(buf: &mut BytesMut, kind: u8, packet_id: u16) {
    let flags = if kind == PUBREL { 0x02 } else { 0 };
    buf.put_u8((kind << 4) | flags);
    buf.put_u8(2);
    buf.put_u16(packet_id);
}

pub fn encode_pingreq(buf: &mut BytesMut) {
    buf.put_slice(&[PINGREQ << 4, 0]);
}

pub fn encode_disconnect(buf: &mut BytesMut) {
    buf.put_slice(&[DISCONNECT << 4, 0]);
}

/// An incoming packet, borrowing from the read buffer.
#[derive(Debug, PartialEq, Eq)]
pub enum Packet<'a> {
    ConnAck {
        session_present: bool,
        code: u8,
    },
    SubAck {
        packet_id: u16,
        codes: &'a [u8],
    },
    Publish {
        qos: u8,
        dup: bool,
        packet_id: u16,
        topic: &'a [u8],
        payload: &'a [u8],
    },
    PubAck(u16),
    PubRec(u16),
    PubRel(u16),
    PubComp(u16),
    PingResp,
    /// Anything else the broker may send; the load generator ignores it.
    Other(u8),
}

#[derive(Debug, PartialEq, Eq)]
pub enum ParseError {
    MalformedLength,
    TooShort(u8),
    BadQos,
}

impl std::fmt::Display for ParseError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ParseError::MalformedLength => write!(f, "malformed remaining length"),
            ParseError::TooShort(t) => write!(f, "packet type {t} too short"),
            ParseError::BadQos => write!(f, "PUBLISH with QoS 3"),
        }
    }
}

impl std::error::Error for ParseError {}

/// Decodes the fixed header: `Some((header_len, remaining_len))` once enough bytes are
/// there, `None` if more are needed.
pub fn parse_fixed_header(buf: &[u8]) -> Result<Option<(usize, usize)>, ParseError> {
    let mut remaining = 0usize;
    for i in 0..4 {
        let Some(&byte) = buf.get(1 + i) else {
            return Ok(None);
        };
        remaining |= ((byte & 0x7f) as usize) << (7 * i);
        if byte & 0x80 == 0 {
            return Ok(Some((2 + i, remaining)));
        }
    }
    Err(ParseError::MalformedLength)
}

fn u16_at(b: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([b[at], b[at + 1]])
}

/// Parses one packet from the front of `buf`: `Ok(Some((packet, consumed)))`, or
/// `Ok(None)` when the buffer holds only part of a packet.
pub fn parse_packet(buf: &[u8]) -> Result<Option<(Packet<'_>, usize)>, ParseError> {
    let Some((head, remaining)) = parse_fixed_header(buf)? else {
        return Ok(None);
    };
    let total = head + remaining;
    if buf.len() < total {
        return Ok(None);
    }
    let first = buf[0];
    let kind = first >> 4;
    let body = &buf[head..total];
    let need = |n: usize| {
        if body.len() < n {
            Err(ParseError::TooShort(kind))
        } else {
            Ok(())
        }
    };
    let packet = match kind {
        CONNACK => {
            need(2)?;
            Packet::ConnAck {
                session_present: body[0] & 1 == 1,
                code: body[1],
            }
        }
        SUBACK => {
            need(3)?;
            Packet::SubAck {
                packet_id: u16_at(body, 0),
                codes: &body[2..],
            }
        }
        PUBLISH => {
            let qos = (first >> 1) & 0x03;
            if qos == 3 {
                return Err(ParseError::BadQos);
            }
            need(2)?;
            let topic_len = u16_at(body, 0) as usize;
            let id_len = if qos > 0 { 2 } else { 0 };
            need(2 + topic_len + id_len)?;
            let topic = &body[2..2 + topic_len];
            let packet_id = if qos > 0 {
                u16_at(body, 2 + topic_len)
            } else {
                0
            };
            Packet::Publish {
                qos,
                dup: first & 0x08 != 0,
                packet_id,
                topic,
                payload: &body[2 + topic_len + id_len..],
            }
        }
        PUBACK | PUBREC | PUBREL | PUBCOMP => {
            need(2)?;
            let id = u16_at(body, 0);
            match kind {
                PUBACK => Packet::PubAck(id),
                PUBREC => Packet::PubRec(id),
                PUBREL => Packet::PubRel(id),
                _ => Packet::PubComp(id),
            }
        }
        PINGRESP => Packet::PingResp,
        other => Packet::Other(other),
    };
    Ok(Some((packet, total)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn one(buf: &[u8]) -> (Packet<'_>, usize) {
        parse_packet(buf).unwrap().unwrap()
    }

    #[test]
    fn connect_bytes_match_the_spec() {
        let mut buf = BytesMut::new();
        encode_connect(&mut buf, "ab", 60, true);
        assert_eq!(
            &buf[..],
            &[0x10, 14, 0, 4, b'M', b'Q', b'T', b'T', 4, 0x02, 0, 60, 0, 2, b'a', b'b']
        );
    }

    #[test]
    fn subscribe_bytes_match_the_spec() {
        let mut buf = BytesMut::new();
        encode_subscribe(&mut buf, 7, "a/b", 1);
        assert_eq!(&buf[..], &[0x82, 8, 0, 7, 0, 3, b'a', b'/', b'b', 1]);
    }

    #[test]
    fn acks_ping_and_disconnect() {
        let mut buf = BytesMut::new();
        encode_ack(&mut buf, PUBACK, 0x0102);
        encode_ack(&mut buf, PUBREC, 1);
        encode_ack(&mut buf, PUBREL, 1);
        encode_ack(&mut buf, PUBCOMP, 1);
        encode_pingreq(&mut buf);
        encode_disconnect(&mut buf);
        assert_eq!(
            &buf[..],
            &[0x40, 2, 1, 2, 0x50, 2, 0, 1, 0x62, 2, 0, 1, 0x70, 2, 0, 1, 0xc0, 0, 0xe0, 0]
        );
    }

    #[test]
    fn publish_round_trips_through_the_parser() {
        for qos in 0..=2u8 {
            let mut buf = BytesMut::new();
            encode_publish_head(&mut buf, b"t/1", qos, 42, 5);
            buf.put_slice(b"hello");
            let (p, used) = one(&buf);
            assert_eq!(used, buf.len());
            assert_eq!(
                p,
                Packet::Publish {
                    qos,
                    dup: false,
                    packet_id: if qos > 0 { 42 } else { 0 },
                    topic: b"t/1",
                    payload: b"hello",
                }
            );
        }
    }

    #[test]
    fn long_remaining_length_uses_several_bytes() {
        let payload = vec![7u8; 200_000];
        let mut buf = BytesMut::new();
        encode_publish_head(&mut buf, b"x", 1, 1, payload.len());
        buf.put_slice(&payload);
        // 200_000 + 2 + 1 + 2 needs three length bytes.
        assert_eq!(parse_fixed_header(&buf).unwrap(), Some((4, 200_005)));
        let (p, used) = one(&buf);
        assert_eq!(used, 4 + 200_005);
        match p {
            Packet::Publish { payload: got, .. } => assert_eq!(got.len(), 200_000),
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn partial_packets_ask_for_more() {
        let mut buf = BytesMut::new();
        encode_publish_head(&mut buf, b"topic", 1, 9, 3);
        buf.put_slice(b"abc");
        for cut in 0..buf.len() {
            assert_eq!(parse_packet(&buf[..cut]).unwrap(), None, "cut at {cut}");
        }
    }

    #[test]
    fn several_packets_in_one_buffer() {
        let bytes = [
            0x20, 2, 0, 0, // CONNACK accepted
            0x90, 3, 0, 1, 1, // SUBACK id 1 granted QoS 1
            0x40, 2, 0, 5, // PUBACK 5
            0x50, 2, 0, 6, // PUBREC 6
            0x62, 2, 0, 7, // PUBREL 7
            0x70, 2, 0, 8, // PUBCOMP 8
            0xd0, 0, // PINGRESP
            0xb0, 2, 0, 1, // UNSUBACK: other
        ];
        let mut at = 0;
        let mut got = Vec::new();
        while let Some((p, used)) = parse_packet(&bytes[at..]).unwrap() {
            got.push(format!("{p:?}"));
            at += used;
        }
        assert_eq!(at, bytes.len());
        assert_eq!(
            got,
            [
                "ConnAck { session_present: false, code: 0 }",
                "SubAck { packet_id: 1, codes: [1] }",
                "PubAck(5)",
                "PubRec(6)",
                "PubRel(7)",
                "PubComp(8)",
                "PingResp",
                "Other(11)",
            ]
        );
    }

    #[test]
    fn malformed_input_is_an_error() {
        assert_eq!(
            parse_packet(&[0x30, 0xff, 0xff, 0xff, 0xff]),
            Err(ParseError::MalformedLength)
        );
        assert_eq!(parse_packet(&[0x36, 2, 0, 0]), Err(ParseError::BadQos));
        assert_eq!(
            parse_packet(&[0x40, 1, 0]),
            Err(ParseError::TooShort(PUBACK))
        );
        // A topic length longer than the packet.
        assert_eq!(
            parse_packet(&[0x30, 2, 0, 9]),
            Err(ParseError::TooShort(PUBLISH))
        );
    }
}
