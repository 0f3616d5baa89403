//! Decoding what a server sends: [`Packet`] and [`decode`].

use bytes::{Buf, BytesMut};

use super::{get_str, need, DecodeError, Props, Proto, Publish};

/// Everything the client side may receive.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Packet {
    ConnAck {
        session_present: bool,
        code: u8,
        props: Props,
    },
    Publish(Publish),
    PubAck {
        pkid: u16,
        reason: u8,
        props: Props,
    },
    PubRec {
        pkid: u16,
        reason: u8,
        props: Props,
    },
    PubRel {
        pkid: u16,
        reason: u8,
        props: Props,
    },
    PubComp {
        pkid: u16,
        reason: u8,
        props: Props,
    },
    SubAck {
        pkid: u16,
        codes: Vec<u8>,
        props: Props,
    },
    UnsubAck {
        pkid: u16,
        codes: Vec<u8>,
        props: Props,
    },
    PingResp,
    PingReq,
    Disconnect {
        reason: u8,
        props: Props,
    },
    Auth {
        reason: u8,
        props: Props,
    },
    /// A packet type a server should never send (CONNECT, SUBSCRIBE, ...).
    Other {
        first_byte: u8,
        body: Vec<u8>,
    },
}

impl Packet {
    pub fn name(&self) -> &'static str {
        match self {
            Packet::ConnAck { .. } => "CONNACK",
            Packet::Publish(_) => "PUBLISH",
            Packet::PubAck { .. } => "PUBACK",
            Packet::PubRec { .. } => "PUBREC",
            Packet::PubRel { .. } => "PUBREL",
            Packet::PubComp { .. } => "PUBCOMP",
            Packet::SubAck { .. } => "SUBACK",
            Packet::UnsubAck { .. } => "UNSUBACK",
            Packet::PingResp => "PINGRESP",
            Packet::PingReq => "PINGREQ",
            Packet::Disconnect { .. } => "DISCONNECT",
            Packet::Auth { .. } => "AUTH",
            Packet::Other { .. } => "OTHER",
        }
    }
}

/// Tries to decode one packet from the front of `buf`. Returns the packet and
/// the raw bytes it was made of.
pub fn decode(buf: &mut BytesMut, proto: Proto) -> Result<(Packet, Vec<u8>), DecodeError> {
    if buf.len() < 2 {
        return Err(DecodeError::Incomplete);
    }
    // remaining length
    let mut mult = 1usize;
    let mut len = 0usize;
    let mut pos = 1;
    loop {
        if pos >= buf.len() {
            return Err(DecodeError::Incomplete);
        }
        let byte = buf[pos];
        len += (byte & 0x7F) as usize * mult;
        pos += 1;
        if byte & 0x80 == 0 {
            break;
        }
        if pos > 4 {
            return Err(DecodeError::Malformed("remaining length too long"));
        }
        mult *= 128;
    }
    if buf.len() < pos + len {
        return Err(DecodeError::Incomplete);
    }
    let raw = buf.split_to(pos + len).freeze();
    let first = raw[0];
    let mut body = raw.slice(pos..);
    let v5 = proto.is_v5();
    let pkt = match first >> 4 {
        2 => {
            need(&body, 2)?;
            let flags = body.get_u8();
            let code = body.get_u8();
            let props = if v5 && body.has_remaining() {
                Props::decode(&mut body)?
            } else {
                Props::new()
            };
            Packet::ConnAck {
                session_present: flags & 1 == 1,
                code,
                props,
            }
        }
        3 => {
            let qos = (first >> 1) & 3;
            let topic = get_str(&mut body)?;
            let pkid = if qos > 0 {
                need(&body, 2)?;
                body.get_u16()
            } else {
                0
            };
            let props = if v5 {
                Props::decode(&mut body)?
            } else {
                Props::new()
            };
            Packet::Publish(Publish {
                dup: first & 0x08 != 0,
                qos,
                retain: first & 1 == 1,
                topic,
                pkid,
                props,
                payload: body.to_vec(),
            })
        }
        4..=7 => {
            need(&body, 2)?;
            let pkid = body.get_u16();
            let reason = if body.has_remaining() {
                body.get_u8()
            } else {
                0
            };
            let props = if v5 && body.has_remaining() {
                Props::decode(&mut body)?
            } else {
                Props::new()
            };
            match first >> 4 {
                4 => Packet::PubAck {
                    pkid,
                    reason,
                    props,
                },
                5 => Packet::PubRec {
                    pkid,
                    reason,
                    props,
                },
                6 => Packet::PubRel {
                    pkid,
                    reason,
                    props,
                },
                _ => Packet::PubComp {
                    pkid,
                    reason,
                    props,
                },
            }
        }
        9 | 11 => {
            need(&body, 2)?;
            let pkid = body.get_u16();
            let props = if v5 {
                Props::decode(&mut body)?
            } else {
                Props::new()
            };
            let codes = body.to_vec();
            if first >> 4 == 9 {
                Packet::SubAck { pkid, codes, props }
            } else {
                Packet::UnsubAck { pkid, codes, props }
            }
        }
        12 => Packet::PingReq,
        13 => Packet::PingResp,
        14 | 15 => {
            let reason = if body.has_remaining() {
                body.get_u8()
            } else {
                0
            };
            let props = if body.has_remaining() {
                Props::decode(&mut body)?
            } else {
                Props::new()
            };
            if first >> 4 == 14 {
                Packet::Disconnect { reason, props }
            } else {
                Packet::Auth { reason, props }
            }
        }
        _ => Packet::Other {
            first_byte: first,
            body: body.to_vec(),
        },
    };
    Ok((pkt, raw.to_vec()))
}
