//! A small, deliberately permissive MQTT 3.1 / 3.1.1 / 5.0 codec used by the
//! raw-socket client. It can encode well-formed packets (and the tests can
//! then corrupt the bytes) and decodes everything a server may send, keeping
//! v5 properties as a generic list so tests can assert on any of them.

use bytes::{Buf, BufMut, Bytes, BytesMut};

mod decode;
pub use decode::{decode, Packet};

/// Protocol level, as written in the CONNECT variable header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Proto {
    /// MQTT 3.1 ("MQIsdp", level 3)
    V31,
    /// MQTT 3.1.1 ("MQTT", level 4)
    V311,
    /// MQTT 5.0 ("MQTT", level 5)
    V5,
}

impl Proto {
    pub fn is_v5(self) -> bool {
        self == Proto::V5
    }
}

/// MQTT 5 property identifiers.
pub mod prop {
    pub const PAYLOAD_FORMAT_INDICATOR: u8 = 0x01;
    pub const MESSAGE_EXPIRY_INTERVAL: u8 = 0x02;
    pub const CONTENT_TYPE: u8 = 0x03;
    pub const RESPONSE_TOPIC: u8 = 0x08;
    pub const CORRELATION_DATA: u8 = 0x09;
    pub const SUBSCRIPTION_IDENTIFIER: u8 = 0x0B;
    pub const SESSION_EXPIRY_INTERVAL: u8 = 0x11;
    pub const ASSIGNED_CLIENT_IDENTIFIER: u8 = 0x12;
    pub const SERVER_KEEP_ALIVE: u8 = 0x13;
    pub const AUTHENTICATION_METHOD: u8 = 0x15;
    pub const AUTHENTICATION_DATA: u8 = 0x16;
    pub const REQUEST_PROBLEM_INFORMATION: u8 = 0x17;
    pub const WILL_DELAY_INTERVAL: u8 = 0x18;
    pub const REQUEST_RESPONSE_INFORMATION: u8 = 0x19;
    pub const RESPONSE_INFORMATION: u8 = 0x1A;
    pub const SERVER_REFERENCE: u8 = 0x1C;
    pub const REASON_STRING: u8 = 0x1F;
    pub const RECEIVE_MAXIMUM: u8 = 0x21;
    pub const TOPIC_ALIAS_MAXIMUM: u8 = 0x22;
    pub const TOPIC_ALIAS: u8 = 0x23;
    pub const MAXIMUM_QOS: u8 = 0x24;
    pub const RETAIN_AVAILABLE: u8 = 0x25;
    pub const USER_PROPERTY: u8 = 0x26;
    pub const MAXIMUM_PACKET_SIZE: u8 = 0x27;
    pub const WILDCARD_SUBSCRIPTION_AVAILABLE: u8 = 0x28;
    pub const SUBSCRIPTION_IDENTIFIER_AVAILABLE: u8 = 0x29;
    pub const SHARED_SUBSCRIPTION_AVAILABLE: u8 = 0x2A;
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PropValue {
    Byte(u8),
    U16(u16),
    U32(u32),
    VarInt(u32),
    Str(String),
    Bin(Vec<u8>),
    Pair(String, String),
}

/// A v5 property list, in wire order (duplicates allowed, as the spec allows
/// for user properties and subscription identifiers).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Props(pub Vec<(u8, PropValue)>);

impl Props {
    pub fn new() -> Self {
        Props(Vec::new())
    }
    pub fn with(mut self, id: u8, v: PropValue) -> Self {
        self.0.push((id, v));
        self
    }
    pub fn push(&mut self, id: u8, v: PropValue) {
        self.0.push((id, v));
    }
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
    pub fn get(&self, id: u8) -> Option<&PropValue> {
        self.0.iter().find(|(i, _)| *i == id).map(|(_, v)| v)
    }
    pub fn has(&self, id: u8) -> bool {
        self.get(id).is_some()
    }
    /// Integer value of a byte / two byte / four byte / varint property.
    pub fn int(&self, id: u8) -> Option<u32> {
        match self.get(id)? {
            PropValue::Byte(b) => Some(*b as u32),
            PropValue::U16(v) => Some(*v as u32),
            PropValue::U32(v) | PropValue::VarInt(v) => Some(*v),
            _ => None,
        }
    }
    pub fn str(&self, id: u8) -> Option<&str> {
        match self.get(id)? {
            PropValue::Str(s) => Some(s),
            _ => None,
        }
    }
    pub fn bin(&self, id: u8) -> Option<&[u8]> {
        match self.get(id)? {
            PropValue::Bin(b) => Some(b),
            _ => None,
        }
    }
    /// All values of a repeated integer property (e.g. subscription identifiers).
    pub fn all_ints(&self, id: u8) -> Vec<u32> {
        self.0
            .iter()
            .filter(|(i, _)| *i == id)
            .filter_map(|(_, v)| match v {
                PropValue::Byte(b) => Some(*b as u32),
                PropValue::U16(v) => Some(*v as u32),
                PropValue::U32(v) | PropValue::VarInt(v) => Some(*v),
                _ => None,
            })
            .collect()
    }
    pub fn user_properties(&self) -> Vec<(String, String)> {
        self.0
            .iter()
            .filter_map(|(_, v)| match v {
                PropValue::Pair(k, v) => Some((k.clone(), v.clone())),
                _ => None,
            })
            .collect()
    }

    fn encode(&self, out: &mut BytesMut) {
        let mut body = BytesMut::new();
        for (id, v) in &self.0 {
            body.put_u8(*id);
            match v {
                PropValue::Byte(b) => body.put_u8(*b),
                PropValue::U16(x) => body.put_u16(*x),
                PropValue::U32(x) => body.put_u32(*x),
                PropValue::VarInt(x) => put_varint(&mut body, *x),
                PropValue::Str(s) => put_str(&mut body, s),
                PropValue::Bin(b) => put_bin(&mut body, b),
                PropValue::Pair(k, v) => {
                    put_str(&mut body, k);
                    put_str(&mut body, v);
                }
            }
        }
        put_varint(out, body.len() as u32);
        out.put_slice(&body);
    }

    fn decode(buf: &mut Bytes) -> Result<Props, DecodeError> {
        let len = get_varint(buf)? as usize;
        if buf.remaining() < len {
            return Err(DecodeError::Malformed("property length beyond packet"));
        }
        let mut p = buf.split_to(len);
        let mut props = Props::new();
        while p.has_remaining() {
            let id = get_varint(&mut p)? as u8;
            let v = match id {
                0x01 | 0x17 | 0x19 | 0x24 | 0x25 | 0x28 | 0x29 | 0x2A => {
                    PropValue::Byte(need(&p, 1).map(|_| p.get_u8())?)
                }
                0x13 | 0x21 | 0x22 | 0x23 => PropValue::U16(need(&p, 2).map(|_| p.get_u16())?),
                0x02 | 0x11 | 0x18 | 0x27 => PropValue::U32(need(&p, 4).map(|_| p.get_u32())?),
                0x0B => PropValue::VarInt(get_varint(&mut p)?),
                0x03 | 0x08 | 0x12 | 0x15 | 0x1A | 0x1C | 0x1F => PropValue::Str(get_str(&mut p)?),
                0x09 | 0x16 => PropValue::Bin(get_bin(&mut p)?.to_vec()),
                0x26 => {
                    let k = get_str(&mut p)?;
                    let v = get_str(&mut p)?;
                    PropValue::Pair(k, v)
                }
                _ => return Err(DecodeError::Malformed("unknown property identifier")),
            };
            props.0.push((id, v));
        }
        Ok(props)
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DecodeError {
    /// More bytes are needed.
    Incomplete,
    Malformed(&'static str),
}

fn need(b: &Bytes, n: usize) -> Result<(), DecodeError> {
    if b.remaining() < n {
        Err(DecodeError::Malformed("truncated field"))
    } else {
        Ok(())
    }
}

pub fn put_varint(out: &mut BytesMut, mut v: u32) {
    loop {
        let mut byte = (v % 128) as u8;
        v /= 128;
        if v > 0 {
            byte |= 0x80;
        }
        out.put_u8(byte);
        if v == 0 {
            break;
        }
    }
}

fn get_varint(b: &mut Bytes) -> Result<u32, DecodeError> {
    let mut mult = 1u32;
    let mut v = 0u32;
    for i in 0..4 {
        need(b, 1)?;
        let byte = b.get_u8();
        v += (byte & 0x7F) as u32 * mult;
        if byte & 0x80 == 0 {
            return Ok(v);
        }
        if i == 3 {
            break;
        }
        mult *= 128;
    }
    Err(DecodeError::Malformed("variable byte integer too long"))
}

pub fn put_str(out: &mut BytesMut, s: &str) {
    put_bin(out, s.as_bytes());
}

pub fn put_bin(out: &mut BytesMut, b: &[u8]) {
    out.put_u16(b.len() as u16);
    out.put_slice(b);
}

fn get_bin(b: &mut Bytes) -> Result<Bytes, DecodeError> {
    need(b, 2)?;
    let len = b.get_u16() as usize;
    need(b, len)?;
    Ok(b.split_to(len))
}

fn get_str(b: &mut Bytes) -> Result<String, DecodeError> {
    let raw = get_bin(b)?;
    String::from_utf8(raw.to_vec()).map_err(|_| DecodeError::Malformed("invalid UTF-8 string"))
}

/// Wraps a variable header + payload in a fixed header.
pub fn frame(first_byte: u8, body: &[u8]) -> Vec<u8> {
    let mut out = BytesMut::new();
    out.put_u8(first_byte);
    put_varint(&mut out, body.len() as u32);
    out.put_slice(body);
    out.to_vec()
}

/// A will message for [`Connect`].
#[derive(Debug, Clone)]
pub struct Will {
    pub topic: String,
    pub payload: Vec<u8>,
    pub qos: u8,
    pub retain: bool,
    pub props: Props,
}

impl Will {
    pub fn new(topic: &str, payload: &[u8]) -> Self {
        Will {
            topic: topic.into(),
            payload: payload.to_vec(),
            qos: 0,
            retain: false,
            props: Props::new(),
        }
    }
    pub fn qos(mut self, q: u8) -> Self {
        self.qos = q;
        self
    }
    pub fn retain(mut self, r: bool) -> Self {
        self.retain = r;
        self
    }
    pub fn delay(mut self, secs: u32) -> Self {
        self.props
            .push(prop::WILL_DELAY_INTERVAL, PropValue::U32(secs));
        self
    }
}

/// CONNECT packet builder.
#[derive(Debug, Clone)]
pub struct Connect {
    pub proto: Proto,
    pub client_id: String,
    pub clean: bool,
    pub keep_alive: u16,
    pub will: Option<Will>,
    pub username: Option<String>,
    pub password: Option<Vec<u8>>,
    pub props: Props,
}

impl Connect {
    pub fn new(proto: Proto, client_id: &str) -> Self {
        Connect {
            proto,
            client_id: client_id.into(),
            clean: true,
            keep_alive: 60,
            will: None,
            username: None,
            password: None,
            props: Props::new(),
        }
    }
    pub fn v311(client_id: &str) -> Self {
        Self::new(Proto::V311, client_id)
    }
    pub fn v5(client_id: &str) -> Self {
        Self::new(Proto::V5, client_id)
    }
    pub fn clean(mut self, c: bool) -> Self {
        self.clean = c;
        self
    }
    pub fn keep_alive(mut self, k: u16) -> Self {
        self.keep_alive = k;
        self
    }
    pub fn will(mut self, w: Will) -> Self {
        self.will = Some(w);
        self
    }
    pub fn prop(mut self, id: u8, v: PropValue) -> Self {
        self.props.push(id, v);
        self
    }
    pub fn session_expiry(self, secs: u32) -> Self {
        self.prop(prop::SESSION_EXPIRY_INTERVAL, PropValue::U32(secs))
    }
    /// A session that outlives the connection: clean = false and, for v5,
    /// Session Expiry Interval `v5_expiry_secs`.
    pub fn persistent(self, v5_expiry_secs: u32) -> Self {
        let c = self.clean(false);
        if c.proto.is_v5() {
            c.session_expiry(v5_expiry_secs)
        } else {
            c
        }
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut b = BytesMut::new();
        let (name, level) = match self.proto {
            Proto::V31 => ("MQIsdp", 3u8),
            Proto::V311 => ("MQTT", 4),
            Proto::V5 => ("MQTT", 5),
        };
        put_str(&mut b, name);
        b.put_u8(level);
        let mut flags = 0u8;
        if self.clean {
            flags |= 0x02;
        }
        if let Some(w) = &self.will {
            flags |= 0x04 | (w.qos << 3);
            if w.retain {
                flags |= 0x20;
            }
        }
        if self.password.is_some() {
            flags |= 0x40;
        }
        if self.username.is_some() {
            flags |= 0x80;
        }
        b.put_u8(flags);
        b.put_u16(self.keep_alive);
        if self.proto.is_v5() {
            self.props.encode(&mut b);
        }
        put_str(&mut b, &self.client_id);
        if let Some(w) = &self.will {
            if self.proto.is_v5() {
                w.props.encode(&mut b);
            }
            put_str(&mut b, &w.topic);
            put_bin(&mut b, &w.payload);
        }
        if let Some(u) = &self.username {
            put_str(&mut b, u);
        }
        if let Some(p) = &self.password {
            put_bin(&mut b, p);
        }
        frame(0x10, &b)
    }
}

/// A PUBLISH packet (both for encoding and as decoded from the server).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Publish {
    pub dup: bool,
    pub qos: u8,
    pub retain: bool,
    pub topic: String,
    pub pkid: u16,
    pub props: Props,
    pub payload: Vec<u8>,
}

impl Publish {
    pub fn new(topic: &str, qos: u8, payload: &[u8]) -> Self {
        Publish {
            dup: false,
            qos,
            retain: false,
            topic: topic.into(),
            pkid: if qos > 0 { 1 } else { 0 },
            props: Props::new(),
            payload: payload.to_vec(),
        }
    }
    pub fn pkid(mut self, id: u16) -> Self {
        self.pkid = id;
        self
    }
    pub fn retain(mut self, r: bool) -> Self {
        self.retain = r;
        self
    }
    pub fn dup(mut self, d: bool) -> Self {
        self.dup = d;
        self
    }
    pub fn prop(mut self, id: u8, v: PropValue) -> Self {
        self.props.push(id, v);
        self
    }

    pub fn encode(&self, proto: Proto) -> Vec<u8> {
        let mut b = BytesMut::new();
        put_str(&mut b, &self.topic);
        if self.qos > 0 {
            b.put_u16(self.pkid);
        }
        if proto.is_v5() {
            self.props.encode(&mut b);
        }
        b.put_slice(&self.payload);
        let mut first = 0x30 | (self.qos << 1);
        if self.dup {
            first |= 0x08;
        }
        if self.retain {
            first |= 0x01;
        }
        frame(first, &b)
    }
}

/// One filter of a SUBSCRIBE packet. `options` is the full v5 options byte
/// (for v3 only the QoS bits may be set).
#[derive(Debug, Clone)]
pub struct SubFilter {
    pub filter: String,
    pub options: u8,
}

impl SubFilter {
    pub fn new(filter: &str, qos: u8) -> Self {
        SubFilter {
            filter: filter.into(),
            options: qos,
        }
    }
    pub fn no_local(mut self) -> Self {
        self.options |= 0x04;
        self
    }
    pub fn retain_as_published(mut self) -> Self {
        self.options |= 0x08;
        self
    }
    pub fn retain_handling(mut self, rh: u8) -> Self {
        self.options = (self.options & !0x30) | (rh << 4);
        self
    }
}

pub fn subscribe(proto: Proto, pkid: u16, filters: &[SubFilter], props: &Props) -> Vec<u8> {
    let mut b = BytesMut::new();
    b.put_u16(pkid);
    if proto.is_v5() {
        props.encode(&mut b);
    }
    for f in filters {
        put_str(&mut b, &f.filter);
        b.put_u8(f.options);
    }
    frame(0x82, &b)
}

/// SUBSCRIBE with a subscription identifier property (v5).
pub fn subscribe_with_id(pkid: u16, sub_id: u32, filters: &[SubFilter]) -> Vec<u8> {
    subscribe(
        Proto::V5,
        pkid,
        filters,
        &Props::new().with(prop::SUBSCRIPTION_IDENTIFIER, PropValue::VarInt(sub_id)),
    )
}

pub fn unsubscribe(proto: Proto, pkid: u16, filters: &[&str]) -> Vec<u8> {
    let mut b = BytesMut::new();
    b.put_u16(pkid);
    if proto.is_v5() {
        Props::new().encode(&mut b);
    }
    for f in filters {
        put_str(&mut b, f);
    }
    frame(0xA2, &b)
}

/// PUBACK (0x40), PUBREC (0x50), PUBREL (0x62), PUBCOMP (0x70) in their
/// shortest form (reason code omitted = success).
pub fn ack(first_byte: u8, pkid: u16) -> Vec<u8> {
    frame(first_byte, &pkid.to_be_bytes())
}
pub fn puback(pkid: u16) -> Vec<u8> {
    ack(0x40, pkid)
}
pub fn pubrec(pkid: u16) -> Vec<u8> {
    ack(0x50, pkid)
}
pub fn pubrel(pkid: u16) -> Vec<u8> {
    ack(0x62, pkid)
}
pub fn pubcomp(pkid: u16) -> Vec<u8> {
    ack(0x70, pkid)
}
pub fn pingreq() -> Vec<u8> {
    vec![0xC0, 0x00]
}
/// DISCONNECT; for v3 pass `None`.
pub fn disconnect(reason: Option<u8>, props: &Props) -> Vec<u8> {
    match reason {
        None => vec![0xE0, 0x00],
        Some(rc) => {
            let mut b = BytesMut::new();
            b.put_u8(rc);
            props.encode(&mut b);
            frame(0xE0, &b)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roundtrip_publish_v5() {
        let p = Publish::new("a/b", 1, b"hi")
            .pkid(7)
            .prop(prop::MESSAGE_EXPIRY_INTERVAL, PropValue::U32(9))
            .prop(prop::SUBSCRIPTION_IDENTIFIER, PropValue::VarInt(300))
            .prop(prop::USER_PROPERTY, PropValue::Pair("k".into(), "v".into()));
        let bytes = p.encode(Proto::V5);
        let mut buf = BytesMut::from(&bytes[..]);
        let (got, raw) = decode(&mut buf, Proto::V5).unwrap();
        assert_eq!(raw, bytes);
        assert_eq!(got, Packet::Publish(p));
        assert!(buf.is_empty());
    }

    #[test]
    fn incomplete_and_varint() {
        let bytes = Publish::new("t", 0, &[0u8; 200]).encode(Proto::V311);
        assert_eq!(bytes[1], 0xCB); // 203 = 0x4B | 0x80, then 0x01
        assert_eq!(bytes[2], 0x01);
        let mut buf = BytesMut::from(&bytes[..10]);
        assert_eq!(decode(&mut buf, Proto::V311), Err(DecodeError::Incomplete));
    }

    #[test]
    fn connect_v31_bytes() {
        let c = Connect::new(Proto::V31, "c").encode();
        assert_eq!(
            c,
            vec![0x10, 15, 0, 6, b'M', b'Q', b'I', b's', b'd', b'p', 3, 2, 0, 60, 0, 1, b'c']
        );
    }
}
