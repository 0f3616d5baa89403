//! Hand-written binary encoding of stored values.
//!
//! Payloads and correlation data are arbitrary bytes, so a text format such as
//! JSON would bloat and escape them; this format copies them verbatim.
//!
//! # Layout (format version 2; version 1 lacks `publish_id`)
//!
//! Every value starts with a format version byte. Then, per record:
//!
//! - message (queue, retained): `topic`, `payload` (bytes), `qos` u8,
//!   flags u8 (bit 0 retain), `received_at_ms` u64,
//!   opt `message_expiry_interval` u32, opt `payload_format_indicator` u8,
//!   opt `content_type` str, opt `response_topic` str,
//!   opt `correlation_data` bytes, `user_properties` (count, then str pairs),
//!   `subscription_identifiers` (count, then u32s), `publisher` str,
//!   opt `publish_id` u64 (version 2).
//! - session: `client_id` str, `protocol_level` u8,
//!   `session_expiry_interval` u32, opt `disconnected_at_ms` u64,
//!   subscriptions (count, then each: `filter` str, `qos` u8, flags u8
//!   (bit 0 no_local, bit 1 retain_as_published), `retain_handling` u8,
//!   opt `subscription_identifier` u32), opt pending will (message without
//!   its own version byte, then due time u64).
//! - inflight: `seq` u64, flags u8 (bit 0 released), message (without its own
//!   version byte). The packet id lives only in the key.
//! - incoming QoS 2 marker: just the version byte.
//!
//! Integers are big-endian and fixed-width. Lengths and counts are LEB128
//! varints (short topics cost one length byte, and no length can overflow).
//! str is a length then UTF-8; bytes is a length then raw bytes; opt is a tag
//! byte 0 (absent) or 1 (present) then the value.
//!
//! # Evolving the format
//!
//! Records persist across upgrades, so the format is append-only: new fields
//! go at the end of a record and `FORMAT_VERSION` is bumped, keeping the
//! decoder for every older version. Existing fields are never reordered,
//! resized or reinterpreted. A decoder rejects versions it does not know and
//! trailing bytes, so a newer record is never half-read as an older one.
//!
//! Decoding never panics: every malformed input, including any truncation,
//! is a [`DecodeError`].

use bytes::Bytes;

use crate::error::StorageError;
use crate::types::{StoredInflight, StoredMessage, StoredSession, StoredSubscription};

/// Current version byte written at the start of every value.
pub(crate) const FORMAT_VERSION: u8 = 2;

/// The oldest version still read (a message without its publish id).
const OLDEST_VERSION: u8 = 1;

const MSG_FLAG_RETAIN: u8 = 0b0000_0001;
const SUB_FLAG_NO_LOCAL: u8 = 0b0000_0001;
const SUB_FLAG_RETAIN_AS_PUBLISHED: u8 = 0b0000_0010;
const INFLIGHT_FLAG_RELEASED: u8 = 0b0000_0001;

/// Why a value could not be decoded; the store adds which tree it came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct DecodeError(pub(crate) String);

impl DecodeError {
    pub(crate) fn in_tree(self, tree: &'static str) -> StorageError {
        StorageError::Corrupt {
            tree,
            reason: self.0,
        }
    }
}

type DecodeResult<T> = std::result::Result<T, DecodeError>;

fn err<T>(reason: impl Into<String>) -> DecodeResult<T> {
    Err(DecodeError(reason.into()))
}

// ---------------------------------------------------------------- public API

pub(crate) fn encode_message(msg: &StoredMessage) -> Vec<u8> {
    let mut w = Writer::with_version();
    w.message(msg);
    w.0
}

pub(crate) fn decode_message(buf: &[u8]) -> DecodeResult<StoredMessage> {
    let mut r = Reader::with_version(buf)?;
    let msg = r.message()?;
    r.finish()?;
    Ok(msg)
}

pub(crate) fn encode_session(s: &StoredSession) -> Vec<u8> {
    let mut w = Writer::with_version();
    w.str(&s.client_id);
    w.u8(s.protocol_level);
    w.u32(s.session_expiry_interval);
    w.opt(s.disconnected_at_ms, Writer::u64);
    w.len(s.subscriptions.len());
    for sub in &s.subscriptions {
        w.str(&sub.filter);
        w.u8(sub.qos);
        let mut flags = 0;
        if sub.no_local {
            flags |= SUB_FLAG_NO_LOCAL;
        }
        if sub.retain_as_published {
            flags |= SUB_FLAG_RETAIN_AS_PUBLISHED;
        }
        w.u8(flags);
        w.u8(sub.retain_handling);
        w.opt(sub.subscription_identifier, Writer::u32);
    }
    w.opt(s.pending_will.as_ref(), |w, (msg, due)| {
        w.message(msg);
        w.u64(*due);
    });
    w.0
}

pub(crate) fn decode_session(buf: &[u8]) -> DecodeResult<StoredSession> {
    let mut r = Reader::with_version(buf)?;
    let client_id = r.string()?;
    let protocol_level = r.u8()?;
    let session_expiry_interval = r.u32()?;
    let disconnected_at_ms = r.opt(Reader::u64)?;
    let count = r.count()?;
    let mut subscriptions = Vec::with_capacity(count);
    for _ in 0..count {
        let filter = r.string()?;
        let qos = r.u8()?;
        let flags = r.flags(SUB_FLAG_NO_LOCAL | SUB_FLAG_RETAIN_AS_PUBLISHED)?;
        let retain_handling = r.u8()?;
        let subscription_identifier = r.opt(Reader::u32)?;
        subscriptions.push(StoredSubscription {
            filter,
            qos,
            no_local: flags & SUB_FLAG_NO_LOCAL != 0,
            retain_as_published: flags & SUB_FLAG_RETAIN_AS_PUBLISHED != 0,
            retain_handling,
            subscription_identifier,
        });
    }
    let pending_will = r.opt(|r| Ok((r.message()?, r.u64()?)))?;
    r.finish()?;
    Ok(StoredSession {
        client_id,
        protocol_level,
        session_expiry_interval,
        disconnected_at_ms,
        subscriptions,
        pending_will,
    })
}

pub(crate) fn encode_inflight(f: &StoredInflight) -> Vec<u8> {
    let mut w = Writer::with_version();
    w.u64(f.seq);
    w.u8(if f.released {
        INFLIGHT_FLAG_RELEASED
    } else {
        0
    });
    w.message(&f.message);
    w.0
}

/// `packet_id` comes from the key, which is the single source of truth for it.
pub(crate) fn decode_inflight(packet_id: u16, buf: &[u8]) -> DecodeResult<StoredInflight> {
    let mut r = Reader::with_version(buf)?;
    let seq = r.u64()?;
    let flags = r.flags(INFLIGHT_FLAG_RELEASED)?;
    let message = r.message()?;
    r.finish()?;
    Ok(StoredInflight {
        packet_id,
        seq,
        message,
        released: flags & INFLIGHT_FLAG_RELEASED != 0,
    })
}

/// Value of an incoming-QoS 2 entry: carries nothing yet, but is versioned so
/// fields (e.g. a timestamp) can be added later.
pub(crate) fn encode_marker() -> Vec<u8> {
    Writer::with_version().0
}

pub(crate) fn decode_marker(buf: &[u8]) -> DecodeResult<()> {
    Reader::with_version(buf)?.finish()
}

// ------------------------------------------------------------------- writing

struct Writer(Vec<u8>);

impl Writer {
    fn with_version() -> Self {
        Writer(vec![FORMAT_VERSION])
    }

    fn u8(&mut self, v: u8) {
        self.0.push(v);
    }

    fn u32(&mut self, v: u32) {
        self.0.extend_from_slice(&v.to_be_bytes());
    }

    fn u64(&mut self, v: u64) {
        self.0.extend_from_slice(&v.to_be_bytes());
    }

    fn len(&mut self, len: usize) {
        // usize fits in u64 on every platform Rust supports.
        let mut v = len as u64;
        while v >= 0x80 {
            self.0.push((v as u8 & 0x7f) | 0x80);
            v >>= 7;
        }
        self.0.push(v as u8);
    }

    fn bytes(&mut self, b: &[u8]) {
        self.len(b.len());
        self.0.extend_from_slice(b);
    }

    fn str(&mut self, s: &str) {
        self.bytes(s.as_bytes());
    }

    fn opt<T>(&mut self, v: Option<T>, put: impl FnOnce(&mut Self, T)) {
        match v {
            None => self.u8(0),
            Some(v) => {
                self.u8(1);
                put(self, v);
            }
        }
    }

    /// A message body without a version byte (the enclosing record has one).
    fn message(&mut self, m: &StoredMessage) {
        self.str(&m.topic);
        self.bytes(&m.payload);
        self.u8(m.qos);
        self.u8(if m.retain { MSG_FLAG_RETAIN } else { 0 });
        self.u64(m.received_at_ms);
        self.opt(m.message_expiry_interval, Writer::u32);
        self.opt(m.payload_format_indicator, Writer::u8);
        self.opt(m.content_type.as_deref(), Writer::str);
        self.opt(m.response_topic.as_deref(), Writer::str);
        self.opt(m.correlation_data.as_deref(), Writer::bytes);
        self.len(m.user_properties.len());
        for (k, v) in &m.user_properties {
            self.str(k);
            self.str(v);
        }
        self.len(m.subscription_identifiers.len());
        for id in &m.subscription_identifiers {
            self.u32(*id);
        }
        self.str(&m.publisher);
        self.opt(m.publish_id, Writer::u64);
    }
}

// ------------------------------------------------------------------- reading

struct Reader<'a> {
    buf: &'a [u8],
    /// The record's format version: what its messages end with.
    version: u8,
}

impl<'a> Reader<'a> {
    fn with_version(buf: &'a [u8]) -> DecodeResult<Self> {
        let mut r = Reader { buf, version: 0 };
        match r.u8() {
            Ok(v @ OLDEST_VERSION..=FORMAT_VERSION) => {
                r.version = v;
                Ok(r)
            }
            Ok(v) => err(format!("unsupported format version {v}")),
            Err(_) => err("empty value"),
        }
    }

    fn finish(&self) -> DecodeResult<()> {
        if self.buf.is_empty() {
            Ok(())
        } else {
            err(format!("{} trailing bytes", self.buf.len()))
        }
    }

    fn take(&mut self, n: usize) -> DecodeResult<&'a [u8]> {
        if n > self.buf.len() {
            return err(format!(
                "truncated: needed {n} bytes, {} left",
                self.buf.len()
            ));
        }
        let (head, tail) = self.buf.split_at(n);
        self.buf = tail;
        Ok(head)
    }

    fn array<const N: usize>(&mut self) -> DecodeResult<[u8; N]> {
        let mut out = [0; N];
        out.copy_from_slice(self.take(N)?);
        Ok(out)
    }

    fn u8(&mut self) -> DecodeResult<u8> {
        Ok(self.array::<1>()?[0])
    }

    fn u32(&mut self) -> DecodeResult<u32> {
        Ok(u32::from_be_bytes(self.array()?))
    }

    fn u64(&mut self) -> DecodeResult<u64> {
        Ok(u64::from_be_bytes(self.array()?))
    }

    /// A flags byte; unknown bits mean the value is not what we think it is.
    fn flags(&mut self, known: u8) -> DecodeResult<u8> {
        let f = self.u8()?;
        if f & !known != 0 {
            return err(format!("unknown flag bits {f:#010b}"));
        }
        Ok(f)
    }

    fn varint(&mut self) -> DecodeResult<u64> {
        let mut value = 0u64;
        for i in 0..10 {
            let b = self.u8()?;
            // The tenth byte may only contribute bit 63.
            if i == 9 && b > 1 {
                return err("varint overflows u64");
            }
            value |= u64::from(b & 0x7f) << (7 * i);
            if b & 0x80 == 0 {
                return Ok(value);
            }
        }
        err("varint overflows u64")
    }

    /// A byte length, checked against what is left so a corrupt length can
    /// neither over-read nor cause a huge allocation.
    fn len(&mut self) -> DecodeResult<usize> {
        let n = self.varint()?;
        match usize::try_from(n) {
            Ok(n) if n <= self.buf.len() => Ok(n),
            _ => err(format!(
                "length {n} exceeds the {} bytes left",
                self.buf.len()
            )),
        }
    }

    /// An element count. Every element takes at least one byte, so bounding
    /// it by the bytes left also bounds the allocation `with_capacity` makes.
    fn count(&mut self) -> DecodeResult<usize> {
        self.len()
    }

    fn bytes(&mut self) -> DecodeResult<&'a [u8]> {
        let n = self.len()?;
        self.take(n)
    }

    fn string(&mut self) -> DecodeResult<String> {
        let b = self.bytes()?;
        match std::str::from_utf8(b) {
            Ok(s) => Ok(s.to_owned()),
            Err(e) => err(format!("invalid UTF-8: {e}")),
        }
    }

    fn opt<T>(
        &mut self,
        get: impl FnOnce(&mut Self) -> DecodeResult<T>,
    ) -> DecodeResult<Option<T>> {
        match self.u8()? {
            0 => Ok(None),
            1 => get(self).map(Some),
            t => err(format!("invalid option tag {t}")),
        }
    }

    fn message(&mut self) -> DecodeResult<StoredMessage> {
        let topic = self.string()?;
        let payload = Bytes::copy_from_slice(self.bytes()?);
        let qos = self.u8()?;
        let flags = self.flags(MSG_FLAG_RETAIN)?;
        let received_at_ms = self.u64()?;
        let message_expiry_interval = self.opt(Reader::u32)?;
        let payload_format_indicator = self.opt(Reader::u8)?;
        let content_type = self.opt(Reader::string)?;
        let response_topic = self.opt(Reader::string)?;
        let correlation_data = self.opt(|r| r.bytes().map(Bytes::copy_from_slice))?;
        let count = self.count()?;
        let mut user_properties = Vec::with_capacity(count);
        for _ in 0..count {
            user_properties.push((self.string()?, self.string()?));
        }
        let count = self.count()?;
        let mut subscription_identifiers = Vec::with_capacity(count);
        for _ in 0..count {
            subscription_identifiers.push(self.u32()?);
        }
        let publisher = self.string()?;
        let publish_id = if self.version >= 2 {
            self.opt(Reader::u64)?
        } else {
            None
        };
        Ok(StoredMessage {
            topic,
            payload,
            qos,
            retain: flags & MSG_FLAG_RETAIN != 0,
            received_at_ms,
            message_expiry_interval,
            payload_format_indicator,
            content_type,
            response_topic,
            correlation_data,
            user_properties,
            subscription_identifiers,
            publisher,
            publish_id,
        })
    }
}

#[cfg(test)]
mod tests;
