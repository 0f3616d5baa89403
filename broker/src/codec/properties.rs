//! MQTT 5 properties (spec section 2.2.2): which packet may carry which, how
//! their values are validated, and their wire form.

use bytes::{BufMut, BytesMut};

use super::error::DecodeError;
use super::packet::Properties;
use super::wire::{bin_len, put_bin, put_str, put_vbi, str_len, vbi_len, Reader};

/// Where a property list sits; decides which properties are permitted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum PropCtx {
    Connect,
    ConnAck,
    Publish,
    /// The Will Properties in the CONNECT payload.
    Will,
    /// PUBACK, PUBREC, PUBREL and PUBCOMP.
    Ack,
    Subscribe,
    SubAck,
    Unsubscribe,
    UnsubAck,
    Disconnect,
    Auth,
}

impl PropCtx {
    fn bit(self) -> u16 {
        1 << self as u16
    }
}

pub(crate) mod id {
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

/// The contexts a property may appear in (spec table 2-4), or `None` for an
/// identifier the specification does not define.
fn permitted_in(property: u32) -> Option<u16> {
    use PropCtx::*;
    let mask = |ctxs: &[PropCtx]| ctxs.iter().fold(0u16, |m, c| m | c.bit());
    let Ok(property) = u8::try_from(property) else {
        return None;
    };
    Some(match property {
        id::PAYLOAD_FORMAT_INDICATOR
        | id::MESSAGE_EXPIRY_INTERVAL
        | id::CONTENT_TYPE
        | id::RESPONSE_TOPIC
        | id::CORRELATION_DATA => mask(&[Publish, Will]),
        id::SUBSCRIPTION_IDENTIFIER => mask(&[Publish, Subscribe]),
        id::SESSION_EXPIRY_INTERVAL => mask(&[Connect, ConnAck, Disconnect]),
        id::ASSIGNED_CLIENT_IDENTIFIER
        | id::SERVER_KEEP_ALIVE
        | id::RESPONSE_INFORMATION
        | id::MAXIMUM_QOS
        | id::RETAIN_AVAILABLE
        | id::WILDCARD_SUBSCRIPTION_AVAILABLE
        | id::SUBSCRIPTION_IDENTIFIER_AVAILABLE
        | id::SHARED_SUBSCRIPTION_AVAILABLE => mask(&[ConnAck]),
        id::AUTHENTICATION_METHOD | id::AUTHENTICATION_DATA => mask(&[Connect, ConnAck, Auth]),
        id::REQUEST_PROBLEM_INFORMATION | id::REQUEST_RESPONSE_INFORMATION => mask(&[Connect]),
        id::WILL_DELAY_INTERVAL => mask(&[Will]),
        id::SERVER_REFERENCE => mask(&[ConnAck, Disconnect]),
        id::REASON_STRING => mask(&[ConnAck, Ack, SubAck, UnsubAck, Disconnect, Auth]),
        id::RECEIVE_MAXIMUM | id::TOPIC_ALIAS_MAXIMUM | id::MAXIMUM_PACKET_SIZE => {
            mask(&[Connect, ConnAck])
        }
        id::TOPIC_ALIAS => mask(&[Publish]),
        id::USER_PROPERTY => u16::MAX,
        _ => return None,
    })
}

/// Whether `property` may appear in `ctx`; exposed for tests that generate
/// valid property sets.
#[cfg(test)]
pub(crate) fn is_permitted(property: u8, ctx: PropCtx) -> bool {
    permitted_in(u32::from(property)).is_some_and(|m| m & ctx.bit() != 0)
}

/// Reads a property length and the properties it covers.
pub(crate) fn decode_properties(r: &mut Reader, ctx: PropCtx) -> Result<Properties, DecodeError> {
    let len = r.vbi()?;
    let mut r = r.sub(len as usize)?;
    let mut props = Properties::default();
    // Identifiers are all below 64, so one bit each tracks repeats.
    let mut seen = 0u64;
    while !r.is_empty() {
        let property = r.vbi()?;
        let allowed =
            permitted_in(property).ok_or(DecodeError::Malformed("unknown property identifier"))?;
        if allowed & ctx.bit() == 0 {
            return Err(DecodeError::Protocol(
                "property not permitted in this packet type",
            ));
        }
        let repeatable = property == u32::from(id::USER_PROPERTY)
            || (property == u32::from(id::SUBSCRIPTION_IDENTIFIER) && ctx == PropCtx::Publish);
        if !repeatable {
            let bit = 1u64 << property;
            if seen & bit != 0 {
                return Err(DecodeError::Protocol("property included more than once"));
            }
            seen |= bit;
        }
        // permitted_in only accepts identifiers that fit a byte.
        read_value(&mut r, property as u8, &mut props)?;
    }
    Ok(props)
}

/// A byte property whose only legal values are 0 and 1.
fn flag(r: &mut Reader, what: &'static str) -> Result<Option<u8>, DecodeError> {
    match r.u8()? {
        v @ (0 | 1) => Ok(Some(v)),
        _ => Err(DecodeError::Protocol(what)),
    }
}

fn read_value(r: &mut Reader, property: u8, p: &mut Properties) -> Result<(), DecodeError> {
    use DecodeError::Protocol;
    match property {
        id::PAYLOAD_FORMAT_INDICATOR => {
            p.payload_format_indicator = flag(r, "payload format indicator not 0 or 1")?
        }
        id::MESSAGE_EXPIRY_INTERVAL => p.message_expiry_interval = Some(r.u32()?),
        id::CONTENT_TYPE => p.content_type = Some(r.string()?),
        id::RESPONSE_TOPIC => p.response_topic = Some(r.string()?),
        id::CORRELATION_DATA => p.correlation_data = Some(r.binary()?),
        id::SUBSCRIPTION_IDENTIFIER => match r.vbi()? {
            0 => return Err(Protocol("subscription identifier of 0")),
            v => p.subscription_identifiers.push(v),
        },
        id::SESSION_EXPIRY_INTERVAL => p.session_expiry_interval = Some(r.u32()?),
        id::ASSIGNED_CLIENT_IDENTIFIER => p.assigned_client_identifier = Some(r.string()?),
        id::SERVER_KEEP_ALIVE => p.server_keep_alive = Some(r.u16()?),
        id::AUTHENTICATION_METHOD => p.authentication_method = Some(r.string()?),
        id::AUTHENTICATION_DATA => p.authentication_data = Some(r.binary()?),
        id::REQUEST_PROBLEM_INFORMATION => {
            p.request_problem_information = flag(r, "request problem information not 0 or 1")?
        }
        id::WILL_DELAY_INTERVAL => p.will_delay_interval = Some(r.u32()?),
        id::REQUEST_RESPONSE_INFORMATION => {
            p.request_response_information = flag(r, "request response information not 0 or 1")?
        }
        id::RESPONSE_INFORMATION => p.response_information = Some(r.string()?),
        id::SERVER_REFERENCE => p.server_reference = Some(r.string()?),
        id::REASON_STRING => p.reason_string = Some(r.string()?),
        id::RECEIVE_MAXIMUM => match r.u16()? {
            0 => return Err(Protocol("receive maximum of 0")),
            v => p.receive_maximum = Some(v),
        },
        id::TOPIC_ALIAS_MAXIMUM => p.topic_alias_maximum = Some(r.u16()?),
        // Alias 0 is a protocol error too, but the broker reports it with its
        // own reason code (Topic Alias invalid), so it passes through here.
        id::TOPIC_ALIAS => p.topic_alias = Some(r.u16()?),
        id::MAXIMUM_QOS => p.maximum_qos = flag(r, "maximum QoS not 0 or 1")?,
        id::RETAIN_AVAILABLE => p.retain_available = flag(r, "retain available not 0 or 1")?,
        id::USER_PROPERTY => {
            let key = r.string()?;
            let value = r.string()?;
            p.user_properties.push((key, value));
        }
        id::MAXIMUM_PACKET_SIZE => match r.u32()? {
            0 => return Err(Protocol("maximum packet size of 0")),
            v => p.maximum_packet_size = Some(v),
        },
        id::WILDCARD_SUBSCRIPTION_AVAILABLE => {
            p.wildcard_subscription_available =
                flag(r, "wildcard subscription available not 0 or 1")?
        }
        id::SUBSCRIPTION_IDENTIFIER_AVAILABLE => {
            p.subscription_identifiers_available =
                flag(r, "subscription identifiers available not 0 or 1")?
        }
        id::SHARED_SUBSCRIPTION_AVAILABLE => {
            p.shared_subscription_available = flag(r, "shared subscription available not 0 or 1")?
        }
        _ => return Err(DecodeError::Malformed("unknown property identifier")),
    }
    Ok(())
}

/// Receives every set property in wire order. Length computation and writing
/// both walk through [`visit`], so they cannot disagree.
trait Sink {
    fn byte(&mut self, id: u8, v: u8);
    fn two(&mut self, id: u8, v: u16);
    fn four(&mut self, id: u8, v: u32);
    fn vbi(&mut self, id: u8, v: u32);
    fn string(&mut self, id: u8, v: &str);
    fn binary(&mut self, id: u8, v: &[u8]);
    fn pair(&mut self, id: u8, k: &str, v: &str);
}

fn visit<S: Sink>(p: &Properties, s: &mut S) {
    if let Some(v) = p.payload_format_indicator {
        s.byte(id::PAYLOAD_FORMAT_INDICATOR, v);
    }
    if let Some(v) = p.message_expiry_interval {
        s.four(id::MESSAGE_EXPIRY_INTERVAL, v);
    }
    if let Some(v) = &p.content_type {
        s.string(id::CONTENT_TYPE, v);
    }
    if let Some(v) = &p.response_topic {
        s.string(id::RESPONSE_TOPIC, v);
    }
    if let Some(v) = &p.correlation_data {
        s.binary(id::CORRELATION_DATA, v);
    }
    for &v in &p.subscription_identifiers {
        s.vbi(id::SUBSCRIPTION_IDENTIFIER, v);
    }
    if let Some(v) = p.session_expiry_interval {
        s.four(id::SESSION_EXPIRY_INTERVAL, v);
    }
    if let Some(v) = &p.assigned_client_identifier {
        s.string(id::ASSIGNED_CLIENT_IDENTIFIER, v);
    }
    if let Some(v) = p.server_keep_alive {
        s.two(id::SERVER_KEEP_ALIVE, v);
    }
    if let Some(v) = &p.authentication_method {
        s.string(id::AUTHENTICATION_METHOD, v);
    }
    if let Some(v) = &p.authentication_data {
        s.binary(id::AUTHENTICATION_DATA, v);
    }
    if let Some(v) = p.request_problem_information {
        s.byte(id::REQUEST_PROBLEM_INFORMATION, v);
    }
    if let Some(v) = p.will_delay_interval {
        s.four(id::WILL_DELAY_INTERVAL, v);
    }
    if let Some(v) = p.request_response_information {
        s.byte(id::REQUEST_RESPONSE_INFORMATION, v);
    }
    if let Some(v) = &p.response_information {
        s.string(id::RESPONSE_INFORMATION, v);
    }
    if let Some(v) = &p.server_reference {
        s.string(id::SERVER_REFERENCE, v);
    }
    if let Some(v) = &p.reason_string {
        s.string(id::REASON_STRING, v);
    }
    if let Some(v) = p.receive_maximum {
        s.two(id::RECEIVE_MAXIMUM, v);
    }
    if let Some(v) = p.topic_alias_maximum {
        s.two(id::TOPIC_ALIAS_MAXIMUM, v);
    }
    if let Some(v) = p.topic_alias {
        s.two(id::TOPIC_ALIAS, v);
    }
    if let Some(v) = p.maximum_qos {
        s.byte(id::MAXIMUM_QOS, v);
    }
    if let Some(v) = p.retain_available {
        s.byte(id::RETAIN_AVAILABLE, v);
    }
    for (k, v) in &p.user_properties {
        s.pair(id::USER_PROPERTY, k, v);
    }
    if let Some(v) = p.maximum_packet_size {
        s.four(id::MAXIMUM_PACKET_SIZE, v);
    }
    if let Some(v) = p.wildcard_subscription_available {
        s.byte(id::WILDCARD_SUBSCRIPTION_AVAILABLE, v);
    }
    if let Some(v) = p.subscription_identifiers_available {
        s.byte(id::SUBSCRIPTION_IDENTIFIER_AVAILABLE, v);
    }
    if let Some(v) = p.shared_subscription_available {
        s.byte(id::SHARED_SUBSCRIPTION_AVAILABLE, v);
    }
}

/// Every identifier defined so far is below 128, i.e. a one-byte VBI.
const ID_LEN: usize = 1;

struct LenSink(usize);

impl Sink for LenSink {
    fn byte(&mut self, _: u8, _: u8) {
        self.0 += ID_LEN + 1;
    }
    fn two(&mut self, _: u8, _: u16) {
        self.0 += ID_LEN + 2;
    }
    fn four(&mut self, _: u8, _: u32) {
        self.0 += ID_LEN + 4;
    }
    fn vbi(&mut self, _: u8, v: u32) {
        self.0 += ID_LEN + vbi_len(v as usize);
    }
    fn string(&mut self, _: u8, v: &str) {
        self.0 += ID_LEN + str_len(v);
    }
    fn binary(&mut self, _: u8, v: &[u8]) {
        self.0 += ID_LEN + bin_len(v);
    }
    fn pair(&mut self, _: u8, k: &str, v: &str) {
        self.0 += ID_LEN + str_len(k) + str_len(v);
    }
}

struct WriteSink<'a>(&'a mut BytesMut);

impl Sink for WriteSink<'_> {
    fn byte(&mut self, id: u8, v: u8) {
        self.0.put_u8(id);
        self.0.put_u8(v);
    }
    fn two(&mut self, id: u8, v: u16) {
        self.0.put_u8(id);
        self.0.put_u16(v);
    }
    fn four(&mut self, id: u8, v: u32) {
        self.0.put_u8(id);
        self.0.put_u32(v);
    }
    fn vbi(&mut self, id: u8, v: u32) {
        self.0.put_u8(id);
        put_vbi(self.0, v as usize);
    }
    fn string(&mut self, id: u8, v: &str) {
        self.0.put_u8(id);
        put_str(self.0, v);
    }
    fn binary(&mut self, id: u8, v: &[u8]) {
        self.0.put_u8(id);
        put_bin(self.0, v);
    }
    fn pair(&mut self, id: u8, k: &str, v: &str) {
        self.0.put_u8(id);
        put_str(self.0, k);
        put_str(self.0, v);
    }
}

impl Properties {
    /// True when no property is set, i.e. nothing would be encoded.
    pub fn is_empty(&self) -> bool {
        *self == Properties::default()
    }
}

/// Length of the properties themselves, without the length prefix.
pub(crate) fn properties_len(p: &Properties) -> usize {
    let mut sink = LenSink(0);
    visit(p, &mut sink);
    sink.0
}

/// Length of the property section: the length prefix plus the properties.
pub(crate) fn properties_section_len(p: &Properties) -> usize {
    let len = properties_len(p);
    vbi_len(len) + len
}

/// Writes the property section. The encoder writes whatever is set; keeping
/// properties to those the packet type permits is the caller's job.
pub(crate) fn put_properties(buf: &mut BytesMut, p: &Properties) {
    put_vbi(buf, properties_len(p));
    visit(p, &mut WriteSink(buf));
}
