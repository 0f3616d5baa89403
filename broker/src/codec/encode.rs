//! [`Packet`] → bytes.
//!
//! The remaining length is computed first so the buffer grows once and every
//! field is written straight into it.

use bytes::{BufMut, BytesMut};

use super::packet::*;
use super::properties::{properties_section_len, put_properties};
use super::wire::{bin_len, put_bin, put_str, put_vbi, str_len, vbi_len};

/// Appends `packet` to `buf` in the wire form of `version`.
///
/// For 3.1 and 3.1.1 all properties and MQTT 5-only fields (reason codes other
/// than CONNACK's return code and SUBACK's codes) are left out. A CONNECT is
/// always written in the protocol it names (`Connect::protocol`).
///
/// The packet must be representable: strings and binary fields up to 65,535
/// bytes and a whole packet within [`MAX_PACKET_SIZE`](super::MAX_PACKET_SIZE).
/// Anything decoded satisfies this; check [`encoded_len`] against a peer's
/// Maximum Packet Size before sending.
pub fn encode(packet: &Packet, version: ProtocolVersion, buf: &mut BytesMut) {
    let remaining = remaining_len(packet, version);
    let total = 1 + vbi_len(remaining) + remaining;
    buf.reserve(total);
    let start = buf.len();
    buf.put_u8(first_byte(packet));
    put_vbi(buf, remaining);
    put_body(packet, version, buf);
    debug_assert_eq!(
        buf.len() - start,
        total,
        "{} length mismatch",
        packet.name()
    );
}

/// Size in bytes of `packet` as [`encode`] would write it, fixed header included.
pub fn encoded_len(packet: &Packet, version: ProtocolVersion) -> usize {
    let remaining = remaining_len(packet, version);
    1 + vbi_len(remaining) + remaining
}

fn first_byte(packet: &Packet) -> u8 {
    match packet {
        Packet::Connect(_) => 0x10,
        Packet::ConnAck(_) => 0x20,
        Packet::Publish(p) => {
            0x30 | (u8::from(p.dup) << 3) | ((p.qos as u8) << 1) | u8::from(p.retain)
        }
        Packet::PubAck(_) => 0x40,
        Packet::PubRec(_) => 0x50,
        Packet::PubRel(_) => 0x62,
        Packet::PubComp(_) => 0x70,
        Packet::Subscribe(_) => 0x82,
        Packet::SubAck(_) => 0x90,
        Packet::Unsubscribe(_) => 0xA2,
        Packet::UnsubAck(_) => 0xB0,
        Packet::PingReq => 0xC0,
        Packet::PingResp => 0xD0,
        Packet::Disconnect(_) => 0xE0,
        Packet::Auth(_) => 0xF0,
    }
}

/// Length of a property section, or nothing before MQTT 5.
fn props_len(version: ProtocolVersion, p: &Properties) -> usize {
    if version.is_v5() {
        properties_section_len(p)
    } else {
        0
    }
}

fn put_props(buf: &mut BytesMut, version: ProtocolVersion, p: &Properties) {
    if version.is_v5() {
        put_properties(buf, p);
    }
}

/// How much of an MQTT 5 acknowledgement's tail (reason code, properties) is
/// written: the shortest form that still carries everything.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Tail {
    Nothing,
    Reason,
    ReasonAndProperties,
}

fn ack_tail(version: ProtocolVersion, reason: u8, props: &Properties) -> Tail {
    if !version.is_v5() {
        Tail::Nothing
    } else if !props.is_empty() {
        Tail::ReasonAndProperties
    } else if reason != 0 {
        Tail::Reason
    } else {
        Tail::Nothing
    }
}

fn tail_len(tail: Tail, props: &Properties) -> usize {
    match tail {
        Tail::Nothing => 0,
        Tail::Reason => 1,
        Tail::ReasonAndProperties => 1 + properties_section_len(props),
    }
}

fn put_tail(buf: &mut BytesMut, tail: Tail, reason: u8, props: &Properties) {
    if tail != Tail::Nothing {
        buf.put_u8(reason);
    }
    if tail == Tail::ReasonAndProperties {
        put_properties(buf, props);
    }
}

/// AUTH may only drop reason code and properties together (3.15.2).
fn auth_tail(a: &Auth) -> Tail {
    if a.reason == 0 && a.properties.is_empty() {
        Tail::Nothing
    } else {
        Tail::ReasonAndProperties
    }
}

fn protocol_name(protocol: ProtocolVersion) -> &'static str {
    match protocol {
        ProtocolVersion::V31 => "MQIsdp",
        ProtocolVersion::V311 | ProtocolVersion::V5 => "MQTT",
    }
}

fn remaining_len(packet: &Packet, v: ProtocolVersion) -> usize {
    match packet {
        Packet::Connect(c) => connect_len(c),
        Packet::ConnAck(c) => 2 + props_len(v, &c.properties),
        Packet::Publish(p) => {
            let id = if p.qos == QoS::AtMostOnce { 0 } else { 2 };
            str_len(&p.topic) + id + props_len(v, &p.properties) + p.payload.len()
        }
        Packet::PubAck(a) | Packet::PubRec(a) | Packet::PubRel(a) | Packet::PubComp(a) => {
            2 + tail_len(ack_tail(v, a.reason, &a.properties), &a.properties)
        }
        Packet::Subscribe(s) => {
            let filters: usize = s.filters.iter().map(|(f, _)| str_len(f) + 1).sum();
            2 + props_len(v, &s.properties) + filters
        }
        Packet::SubAck(s) => 2 + props_len(v, &s.properties) + s.reason_codes.len(),
        Packet::Unsubscribe(u) => {
            let filters: usize = u.filters.iter().map(|f| str_len(f)).sum();
            2 + props_len(v, &u.properties) + filters
        }
        Packet::UnsubAck(u) if v.is_v5() => {
            2 + properties_section_len(&u.properties) + u.reason_codes.len()
        }
        Packet::UnsubAck(_) => 2,
        Packet::PingReq | Packet::PingResp => 0,
        Packet::Disconnect(d) => tail_len(ack_tail(v, d.reason, &d.properties), &d.properties),
        Packet::Auth(a) => tail_len(auth_tail(a), &a.properties),
    }
}

fn connect_len(c: &Connect) -> usize {
    let v = c.protocol;
    // Name, level, flags, keep alive.
    let mut len = str_len(protocol_name(v)) + 1 + 1 + 2;
    len += props_len(v, &c.properties);
    len += str_len(&c.client_id);
    if let Some(w) = &c.will {
        len += props_len(v, &w.properties) + str_len(&w.topic) + bin_len(&w.payload);
    }
    if let Some(u) = &c.username {
        len += str_len(u);
    }
    if let Some(p) = &c.password {
        len += bin_len(p);
    }
    len
}

fn put_body(packet: &Packet, v: ProtocolVersion, buf: &mut BytesMut) {
    match packet {
        Packet::Connect(c) => put_connect(c, buf),
        Packet::ConnAck(c) => {
            // 3.1 had no session present flag; the byte was unused.
            let session_present = c.session_present && v != ProtocolVersion::V31;
            buf.put_u8(u8::from(session_present));
            buf.put_u8(c.code);
            put_props(buf, v, &c.properties);
        }
        Packet::Publish(p) => {
            put_str(buf, &p.topic);
            if p.qos != QoS::AtMostOnce {
                buf.put_u16(p.packet_id);
            }
            put_props(buf, v, &p.properties);
            buf.put_slice(&p.payload);
        }
        Packet::PubAck(a) | Packet::PubRec(a) | Packet::PubRel(a) | Packet::PubComp(a) => {
            buf.put_u16(a.packet_id);
            put_tail(
                buf,
                ack_tail(v, a.reason, &a.properties),
                a.reason,
                &a.properties,
            );
        }
        Packet::Subscribe(s) => {
            buf.put_u16(s.packet_id);
            put_props(buf, v, &s.properties);
            for (filter, options) in &s.filters {
                put_str(buf, filter);
                buf.put_u8(options_byte(options, v));
            }
        }
        Packet::SubAck(s) => {
            buf.put_u16(s.packet_id);
            put_props(buf, v, &s.properties);
            buf.put_slice(&s.reason_codes);
        }
        Packet::Unsubscribe(u) => {
            buf.put_u16(u.packet_id);
            put_props(buf, v, &u.properties);
            for filter in &u.filters {
                put_str(buf, filter);
            }
        }
        Packet::UnsubAck(u) => {
            buf.put_u16(u.packet_id);
            if v.is_v5() {
                put_properties(buf, &u.properties);
                buf.put_slice(&u.reason_codes);
            }
        }
        Packet::PingReq | Packet::PingResp => {}
        Packet::Disconnect(d) => {
            put_tail(
                buf,
                ack_tail(v, d.reason, &d.properties),
                d.reason,
                &d.properties,
            );
        }
        Packet::Auth(a) => put_tail(buf, auth_tail(a), a.reason, &a.properties),
    }
}

fn options_byte(o: &SubscriptionOptions, v: ProtocolVersion) -> u8 {
    let qos = o.qos as u8;
    if !v.is_v5() {
        return qos;
    }
    qos | (u8::from(o.no_local) << 2)
        | (u8::from(o.retain_as_published) << 3)
        | ((o.retain_handling & 0b11) << 4)
}

fn put_connect(c: &Connect, buf: &mut BytesMut) {
    let v = c.protocol;
    put_str(buf, protocol_name(v));
    buf.put_u8(v.level());
    let mut flags = u8::from(c.clean_start) << 1;
    if let Some(w) = &c.will {
        flags |= 0b100 | ((w.qos as u8) << 3) | (u8::from(w.retain) << 5);
    }
    flags |= u8::from(c.password.is_some()) << 6;
    flags |= u8::from(c.username.is_some()) << 7;
    buf.put_u8(flags);
    buf.put_u16(c.keep_alive);
    put_props(buf, v, &c.properties);
    put_str(buf, &c.client_id);
    if let Some(w) = &c.will {
        put_props(buf, v, &w.properties);
        put_str(buf, &w.topic);
        put_bin(buf, &w.payload);
    }
    if let Some(u) = &c.username {
        put_str(buf, u);
    }
    if let Some(p) = &c.password {
        put_bin(buf, p);
    }
}

/// A PUBLISH as borrowed parts, so the delivery hot path writes it without building an
/// owned [`Publish`] (no topic copy, no property struct when there are none).
#[derive(Debug, Clone, Copy)]
pub struct PublishRef<'a> {
    pub dup: bool,
    pub qos: QoS,
    pub retain: bool,
    pub topic: &'a str,
    pub packet_id: u16,
    pub payload: &'a [u8],
    /// MQTT 5 properties; None is an empty property section.
    pub properties: Option<&'a Properties>,
}

impl PublishRef<'_> {
    fn remaining_len(&self, version: ProtocolVersion) -> usize {
        let id = if self.qos == QoS::AtMostOnce { 0 } else { 2 };
        let props = match (version.is_v5(), self.properties) {
            (false, _) => 0,
            (true, None) => 1,
            (true, Some(p)) => properties_section_len(p),
        };
        str_len(self.topic) + id + props + self.payload.len()
    }

    /// Whole packet size, fixed header included.
    pub fn encoded_len(&self, version: ProtocolVersion) -> usize {
        let remaining = self.remaining_len(version);
        1 + vbi_len(remaining) + remaining
    }

    /// Appends the PUBLISH to `buf`, byte for byte as [`encode`] of the owned packet.
    pub fn encode(&self, version: ProtocolVersion, buf: &mut BytesMut) {
        let remaining = self.remaining_len(version);
        buf.reserve(1 + vbi_len(remaining) + remaining);
        buf.put_u8(
            0x30 | (u8::from(self.dup) << 3) | ((self.qos as u8) << 1) | u8::from(self.retain),
        );
        put_vbi(buf, remaining);
        put_str(buf, self.topic);
        if self.qos != QoS::AtMostOnce {
            buf.put_u16(self.packet_id);
        }
        if version.is_v5() {
            match self.properties {
                Some(p) => put_properties(buf, p),
                None => buf.put_u8(0),
            }
        }
        buf.put_slice(self.payload);
    }
}

#[cfg(test)]
mod publish_ref_tests {
    use super::*;
    use bytes::Bytes;

    #[test]
    fn borrowed_publish_encodes_like_the_owned_packet() {
        let props = Properties {
            user_properties: vec![("k".into(), "v".into())],
            subscription_identifiers: vec![3],
            ..Properties::default()
        };
        for version in [ProtocolVersion::V311, ProtocolVersion::V5] {
            for (qos, properties) in [
                (QoS::AtMostOnce, None),
                (QoS::AtLeastOnce, Some(&props)),
                (QoS::ExactlyOnce, None),
            ] {
                let owned = Packet::Publish(Publish {
                    dup: qos != QoS::AtMostOnce,
                    qos,
                    retain: true,
                    topic: "a/b".into(),
                    packet_id: if qos == QoS::AtMostOnce { 0 } else { 7 },
                    payload: Bytes::from_static(b"payload"),
                    properties: properties.cloned().unwrap_or_default(),
                });
                let mut expected = BytesMut::new();
                encode(&owned, version, &mut expected);
                let borrowed = PublishRef {
                    dup: qos != QoS::AtMostOnce,
                    qos,
                    retain: true,
                    topic: "a/b",
                    packet_id: if qos == QoS::AtMostOnce { 0 } else { 7 },
                    payload: b"payload",
                    properties,
                };
                let mut got = BytesMut::new();
                borrowed.encode(version, &mut got);
                assert_eq!(got, expected, "{version:?} {qos:?}");
                assert_eq!(borrowed.encoded_len(version), expected.len());
            }
        }
    }
}
