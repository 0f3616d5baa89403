//! Bytes → [`Packet`], validating as a server must (MQTT 3.1.1 and 5.0).

use bytes::{Buf, BytesMut};

use super::error::DecodeError;
use super::packet::*;
use super::properties::{decode_properties, PropCtx};
use super::wire::{parse_vbi, Reader, TRUNCATED};

type Result<T> = std::result::Result<T, DecodeError>;

/// Decodes one packet from the front of `buf`.
///
/// Returns `Ok(None)` without consuming anything while `buf` does not yet hold
/// a whole packet. On success exactly that packet's bytes are consumed; binary
/// fields and payloads borrow from them without copying.
///
/// `version` is the connection's negotiated protocol (V311 before CONNECT); a
/// CONNECT is always parsed by the protocol it names itself. `max_packet_size`
/// bounds the whole packet and is enforced as soon as the fixed header is
/// readable, so an oversized packet is refused before its body is awaited.
///
/// After an error the contents of `buf` are unspecified; the connection must
/// be closed.
pub fn decode(
    buf: &mut BytesMut,
    version: ProtocolVersion,
    max_packet_size: usize,
) -> Result<Option<Packet>> {
    let Some(&first) = buf.first() else {
        return Ok(None);
    };
    let (kind, flags) = (first >> 4, first & 0x0F);
    check_fixed_header(kind, flags, version)?;
    let Some((remaining, len_bytes)) = parse_vbi(&buf[1..])? else {
        return Ok(None);
    };
    let header = 1 + len_bytes;
    let total = header + remaining as usize;
    if total > max_packet_size {
        return Err(DecodeError::TooLarge {
            size: total,
            max: max_packet_size,
        });
    }
    if buf.len() < total {
        // No reserve here: a peer could announce large packets it never sends
        // and pin that memory; the buffer grows only as bytes really arrive.
        return Ok(None);
    }
    let mut frame = buf.split_to(total).freeze();
    frame.advance(header);
    decode_body(kind, flags, Reader::new(frame), version).map(Some)
}

/// Rejects what the first byte alone shows to be invalid, so garbage is refused
/// before waiting for more of it.
fn check_fixed_header(kind: u8, flags: u8, version: ProtocolVersion) -> Result<()> {
    match kind {
        0 => Err(DecodeError::Malformed("reserved packet type 0")),
        15 if !version.is_v5() => Err(DecodeError::Malformed(
            "packet type 15 (AUTH) outside MQTT 5",
        )),
        3 => {
            let qos = (flags >> 1) & 0b11;
            if qos == 3 {
                Err(DecodeError::Malformed("PUBLISH with QoS 3"))
            } else if flags & 0b1000 != 0 && qos == 0 {
                Err(DecodeError::Malformed("DUP flag set on a QoS 0 PUBLISH"))
            } else {
                Ok(())
            }
        }
        // PUBREL, SUBSCRIBE, UNSUBSCRIBE.
        6 | 8 | 10 if flags != 0b0010 => Err(DecodeError::Malformed(
            "fixed header flags must be 0010 for this packet type",
        )),
        6 | 8 | 10 => Ok(()),
        _ if flags != 0 => Err(DecodeError::Malformed(
            "fixed header flags must be 0000 for this packet type",
        )),
        _ => Ok(()),
    }
}

fn decode_body(kind: u8, flags: u8, r: Reader, version: ProtocolVersion) -> Result<Packet> {
    match kind {
        1 => decode_connect(r),
        2 => decode_connack(r, version).map(Packet::ConnAck),
        3 => decode_publish(flags, r, version).map(Packet::Publish),
        4 => decode_ack(r, version).map(Packet::PubAck),
        5 => decode_ack(r, version).map(Packet::PubRec),
        6 => decode_ack(r, version).map(Packet::PubRel),
        7 => decode_ack(r, version).map(Packet::PubComp),
        8 => decode_subscribe(r, version).map(Packet::Subscribe),
        9 => decode_suback(r, version).map(Packet::SubAck),
        10 => decode_unsubscribe(r, version).map(Packet::Unsubscribe),
        11 => decode_unsuback(r, version).map(Packet::UnsubAck),
        12 => r.finish().map(|()| Packet::PingReq),
        13 => r.finish().map(|()| Packet::PingResp),
        14 => decode_disconnect(r, version).map(Packet::Disconnect),
        15 => decode_auth(r).map(Packet::Auth),
        // check_fixed_header rejected type 0 and a nibble holds nothing above 15.
        _ => Err(DecodeError::Malformed("reserved packet type")),
    }
}

/// MQTT 5 calls some rule violations protocol errors where 3.x can only call
/// the packet malformed.
fn violation(version: ProtocolVersion, what: &'static str) -> DecodeError {
    if version.is_v5() {
        DecodeError::Protocol(what)
    } else {
        DecodeError::Malformed(what)
    }
}

fn props_if_v5(r: &mut Reader, version: ProtocolVersion, ctx: PropCtx) -> Result<Properties> {
    if version.is_v5() {
        decode_properties(r, ctx)
    } else {
        Ok(Properties::default())
    }
}

fn packet_id(r: &mut Reader, version: ProtocolVersion) -> Result<u16> {
    match r.u16()? {
        0 => Err(violation(version, "packet identifier 0")),
        id => Ok(id),
    }
}

fn decode_connect(mut r: Reader) -> Result<Packet> {
    let name = r.binary()?;
    let level = r.u8()?;
    let protocol = match (&name[..], level) {
        (b"MQTT", 4) => ProtocolVersion::V311,
        (b"MQTT", 5) => ProtocolVersion::V5,
        (b"MQIsdp", 3) => ProtocolVersion::V31,
        (b"MQTT" | b"MQIsdp", _) => return Err(DecodeError::UnsupportedProtocolVersion(level)),
        _ => return Err(DecodeError::InvalidProtocolName),
    };

    let flags = r.u8()?;
    if flags & 0b0000_0001 != 0 {
        return Err(DecodeError::Malformed("reserved CONNECT flag set"));
    }
    let clean_start = flags & 0b0000_0010 != 0;
    let will_flag = flags & 0b0000_0100 != 0;
    let will_qos = (flags >> 3) & 0b11;
    let will_retain = flags & 0b0010_0000 != 0;
    let password_flag = flags & 0b0100_0000 != 0;
    let username_flag = flags & 0b1000_0000 != 0;
    if !will_flag && (will_qos != 0 || will_retain) {
        return Err(DecodeError::BadWill(
            "will QoS or will retain set without the will flag",
        ));
    }
    let will_qos = QoS::from_u8(will_qos).ok_or(DecodeError::BadWill("will QoS 3"))?;
    // 3.1 and 3.1.1 require a user name with a password; 5.0 dropped that.
    if !protocol.is_v5() && password_flag && !username_flag {
        return Err(DecodeError::Malformed(
            "password flag set without the user name flag",
        ));
    }

    let keep_alive = r.u16()?;
    let properties = props_if_v5(&mut r, protocol, PropCtx::Connect)?;
    if properties.authentication_data.is_some() && properties.authentication_method.is_none() {
        return Err(DecodeError::Protocol(
            "authentication data without an authentication method",
        ));
    }

    let client_id = r.string()?;
    let will = if will_flag {
        let properties = props_if_v5(&mut r, protocol, PropCtx::Will).map_err(bad_will)?;
        let topic = r.string().map_err(bad_will)?;
        let payload = r.binary()?;
        Some(Will {
            topic,
            payload,
            qos: will_qos,
            retain: will_retain,
            properties,
        })
    } else {
        None
    };
    let username = if username_flag {
        Some(r.string()?)
    } else {
        None
    };
    let password = if password_flag {
        Some(r.binary()?)
    } else {
        None
    };
    r.finish()?;

    Ok(Packet::Connect(Box::new(Connect {
        protocol,
        clean_start,
        keep_alive,
        client_id,
        will,
        username,
        password,
        properties,
    })))
}

/// An error inside the will is a bad will; a packet that ends too early stays malformed
/// (the damage is the framing, not the will).
fn bad_will(e: DecodeError) -> DecodeError {
    match e {
        e if e == TRUNCATED => e,
        DecodeError::Malformed(what) | DecodeError::Protocol(what) => DecodeError::BadWill(what),
        other => other,
    }
}

/// The protocol a CONNECT at the front of `buf` names, as soon as enough of it is there to
/// tell (None otherwise, or if it is no CONNECT): lets a refusal of a CONNECT that fails
/// to decode answer in the client's protocol.
pub fn connect_protocol(buf: &[u8]) -> Option<ProtocolVersion> {
    if buf.first()? >> 4 != 1 {
        return None;
    }
    let (_, len_bytes) = parse_vbi(&buf[1..]).ok()??;
    let rest = &buf[1 + len_bytes..];
    let name_len = usize::from(u16::from_be_bytes([*rest.first()?, *rest.get(1)?]));
    let name = rest.get(2..2 + name_len)?;
    match (name, *rest.get(2 + name_len)?) {
        (b"MQTT", 4) => Some(ProtocolVersion::V311),
        (b"MQTT", 5) => Some(ProtocolVersion::V5),
        (b"MQIsdp", 3) => Some(ProtocolVersion::V31),
        _ => None,
    }
}

fn decode_connack(mut r: Reader, version: ProtocolVersion) -> Result<ConnAck> {
    let ack_flags = r.u8()?;
    // 3.1 had no session present flag; the whole byte was unused there.
    let session_present = match version {
        ProtocolVersion::V31 => false,
        _ if ack_flags & 0xFE != 0 => {
            return Err(DecodeError::Malformed(
                "reserved CONNACK acknowledge flags set",
            ))
        }
        _ => ack_flags & 1 != 0,
    };
    let code = r.u8()?;
    let properties = props_if_v5(&mut r, version, PropCtx::ConnAck)?;
    r.finish()?;
    Ok(ConnAck {
        session_present,
        code,
        properties,
    })
}

fn decode_publish(flags: u8, mut r: Reader, version: ProtocolVersion) -> Result<Publish> {
    // check_fixed_header already refused QoS 3; this only avoids an unwrap.
    let qos =
        QoS::from_u8((flags >> 1) & 0b11).ok_or(DecodeError::Malformed("PUBLISH with QoS 3"))?;
    let topic = r.string()?;
    let packet_id = if qos == QoS::AtMostOnce {
        0
    } else {
        packet_id(&mut r, version)?
    };
    let properties = props_if_v5(&mut r, version, PropCtx::Publish)?;
    Ok(Publish {
        dup: flags & 0b1000 != 0,
        qos,
        retain: flags & 0b0001 != 0,
        topic,
        packet_id,
        payload: r.rest(),
        properties,
    })
}

/// PUBACK, PUBREC, PUBREL, PUBCOMP. In MQTT 5 the reason code may be left out
/// when it is 0 and the property length when there are no properties.
fn decode_ack(mut r: Reader, version: ProtocolVersion) -> Result<Ack> {
    let packet_id = r.u16()?;
    let mut ack = Ack::new(packet_id);
    if version.is_v5() && !r.is_empty() {
        ack.reason = r.u8()?;
        if !r.is_empty() {
            ack.properties = decode_properties(&mut r, PropCtx::Ack)?;
        }
    }
    r.finish()?;
    Ok(ack)
}

fn decode_subscribe(mut r: Reader, version: ProtocolVersion) -> Result<Subscribe> {
    let packet_id = packet_id(&mut r, version)?;
    let properties = props_if_v5(&mut r, version, PropCtx::Subscribe)?;
    let mut filters = Vec::new();
    while !r.is_empty() {
        let filter = r.string()?;
        let options = subscription_options(r.u8()?, version)?;
        filters.push((filter, options));
    }
    if filters.is_empty() {
        return Err(violation(version, "SUBSCRIBE without topic filters"));
    }
    Ok(Subscribe {
        packet_id,
        filters,
        properties,
    })
}

fn subscription_options(byte: u8, version: ProtocolVersion) -> Result<SubscriptionOptions> {
    let qos_bits = byte & 0b11;
    if !version.is_v5() {
        if byte & 0b1111_1100 != 0 {
            return Err(DecodeError::Malformed(
                "reserved subscription option bits set",
            ));
        }
        let qos = QoS::from_u8(qos_bits).ok_or(DecodeError::Malformed("subscription QoS 3"))?;
        return Ok(SubscriptionOptions {
            qos,
            ..SubscriptionOptions::default()
        });
    }
    if byte & 0b1100_0000 != 0 {
        return Err(DecodeError::Malformed(
            "reserved subscription option bits set",
        ));
    }
    // MQTT 5 (3.8.3.1) calls maximum QoS 3 a protocol error, not malformed.
    let qos = QoS::from_u8(qos_bits).ok_or(DecodeError::Protocol("subscription QoS 3"))?;
    let retain_handling = (byte >> 4) & 0b11;
    if retain_handling == 3 {
        return Err(DecodeError::Protocol("retain handling 3"));
    }
    Ok(SubscriptionOptions {
        qos,
        no_local: byte & 0b0000_0100 != 0,
        retain_as_published: byte & 0b0000_1000 != 0,
        retain_handling,
    })
}

fn decode_suback(mut r: Reader, version: ProtocolVersion) -> Result<SubAck> {
    let packet_id = r.u16()?;
    let properties = props_if_v5(&mut r, version, PropCtx::SubAck)?;
    let reason_codes = r.rest().to_vec();
    if reason_codes.is_empty() {
        return Err(violation(version, "SUBACK without reason codes"));
    }
    Ok(SubAck {
        packet_id,
        reason_codes,
        properties,
    })
}

fn decode_unsubscribe(mut r: Reader, version: ProtocolVersion) -> Result<Unsubscribe> {
    let packet_id = packet_id(&mut r, version)?;
    let properties = props_if_v5(&mut r, version, PropCtx::Unsubscribe)?;
    let mut filters = Vec::new();
    while !r.is_empty() {
        filters.push(r.string()?);
    }
    if filters.is_empty() {
        return Err(violation(version, "UNSUBSCRIBE without topic filters"));
    }
    Ok(Unsubscribe {
        packet_id,
        filters,
        properties,
    })
}

fn decode_unsuback(mut r: Reader, version: ProtocolVersion) -> Result<UnsubAck> {
    let packet_id = r.u16()?;
    let mut ack = UnsubAck {
        packet_id,
        reason_codes: Vec::new(),
        properties: Properties::default(),
    };
    if version.is_v5() {
        ack.properties = decode_properties(&mut r, PropCtx::UnsubAck)?;
        ack.reason_codes = r.rest().to_vec();
        if ack.reason_codes.is_empty() {
            return Err(DecodeError::Protocol("UNSUBACK without reason codes"));
        }
    }
    r.finish()?;
    Ok(ack)
}

/// In MQTT 5 the reason code may be left out when it is 0, and the property
/// length when there are no properties (3.14.2).
fn decode_disconnect(mut r: Reader, version: ProtocolVersion) -> Result<Disconnect> {
    let mut disconnect = Disconnect::default();
    if version.is_v5() && !r.is_empty() {
        disconnect.reason = r.u8()?;
        if !r.is_empty() {
            disconnect.properties = decode_properties(&mut r, PropCtx::Disconnect)?;
        }
    }
    r.finish()?;
    Ok(disconnect)
}

/// Only reason code and property length together may be left out (3.15.2), so
/// unlike DISCONNECT a lone reason code is malformed.
fn decode_auth(mut r: Reader) -> Result<Auth> {
    let mut auth = Auth::default();
    if !r.is_empty() {
        auth.reason = r.u8()?;
        auth.properties = decode_properties(&mut r, PropCtx::Auth)?;
    }
    r.finish()?;
    Ok(auth)
}

/// Decodes `bytes` as exactly one packet (or an incomplete one): a test helper
/// that also checks nothing is left over.
#[cfg(test)]
pub(crate) fn decode_all(
    bytes: &[u8],
    version: ProtocolVersion,
) -> std::result::Result<Option<Packet>, DecodeError> {
    let mut buf = BytesMut::from(bytes);
    let packet = decode(&mut buf, version, usize::MAX)?;
    if packet.is_some() {
        assert!(buf.is_empty(), "decode left {} bytes", buf.len());
    }
    Ok(packet)
}
