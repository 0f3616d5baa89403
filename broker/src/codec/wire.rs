//! MQTT's primitive data representations (spec section 1.5): variable byte
//! integers, big-endian integers, length-prefixed UTF-8 strings and binary data.

use bytes::{Buf, BufMut, Bytes, BytesMut};

use super::error::DecodeError;

/// Largest value a four-byte variable byte integer can carry.
pub(crate) const VBI_MAX: u32 = 268_435_455;

/// Largest length a two-byte length prefix can announce.
const PREFIXED_MAX: usize = u16::MAX as usize;

pub(crate) const TRUNCATED: DecodeError =
    DecodeError::Malformed("field runs past the end of the packet");

/// Bytes needed to encode `v` as a variable byte integer.
pub(crate) fn vbi_len(v: usize) -> usize {
    match v {
        0..=127 => 1,
        128..=16_383 => 2,
        16_384..=2_097_151 => 3,
        _ => 4,
    }
}

/// Appends `v` as a variable byte integer. Callers keep `v <= VBI_MAX`; the
/// decoder never produces larger values, so only a broker bug can violate it.
pub(crate) fn put_vbi(buf: &mut BytesMut, v: usize) {
    debug_assert!(v <= VBI_MAX as usize, "variable byte integer {v} too large");
    let mut v = v;
    loop {
        let digit = (v % 128) as u8;
        v /= 128;
        if v == 0 {
            buf.put_u8(digit);
            return;
        }
        buf.put_u8(digit | 0x80);
    }
}

/// Parses a variable byte integer at the start of `bytes`, returning the value and
/// the number of bytes it took, or `None` if `bytes` ends before it does.
pub(crate) fn parse_vbi(bytes: &[u8]) -> Result<Option<(u32, usize)>, DecodeError> {
    let mut value = 0u32;
    for (i, &b) in bytes.iter().take(4).enumerate() {
        value |= u32::from(b & 0x7F) << (7 * i);
        if b & 0x80 == 0 {
            // A trailing zero digit means a shorter encoding existed [MQTT-1.5.5-1].
            if i > 0 && b == 0 {
                return Err(DecodeError::Malformed(
                    "variable byte integer not minimally encoded",
                ));
            }
            return Ok(Some((value, i + 1)));
        }
    }
    if bytes.len() >= 4 {
        Err(DecodeError::Malformed(
            "variable byte integer longer than four bytes",
        ))
    } else {
        Ok(None)
    }
}

/// Cursor over one packet's body. Every read checks bounds so that no input can
/// make decoding panic; reads past the end are malformed packets.
pub(crate) struct Reader {
    data: Bytes,
}

impl Reader {
    pub(crate) fn new(data: Bytes) -> Reader {
        Reader { data }
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.data.is_empty()
    }

    pub(crate) fn u8(&mut self) -> Result<u8, DecodeError> {
        if self.data.is_empty() {
            return Err(TRUNCATED);
        }
        Ok(self.data.get_u8())
    }

    pub(crate) fn u16(&mut self) -> Result<u16, DecodeError> {
        if self.data.len() < 2 {
            return Err(TRUNCATED);
        }
        Ok(self.data.get_u16())
    }

    pub(crate) fn u32(&mut self) -> Result<u32, DecodeError> {
        if self.data.len() < 4 {
            return Err(TRUNCATED);
        }
        Ok(self.data.get_u32())
    }

    pub(crate) fn vbi(&mut self) -> Result<u32, DecodeError> {
        let (value, len) = parse_vbi(&self.data)?.ok_or(TRUNCATED)?;
        self.data.advance(len);
        Ok(value)
    }

    /// The next `n` bytes as a slice of the frame (no copy).
    pub(crate) fn take(&mut self, n: usize) -> Result<Bytes, DecodeError> {
        if self.data.len() < n {
            return Err(TRUNCATED);
        }
        Ok(self.data.split_to(n))
    }

    /// The next `n` bytes as their own reader, for length-delimited sections.
    pub(crate) fn sub(&mut self, n: usize) -> Result<Reader, DecodeError> {
        self.take(n).map(Reader::new)
    }

    /// Everything left, e.g. a PUBLISH payload.
    pub(crate) fn rest(&mut self) -> Bytes {
        std::mem::take(&mut self.data)
    }

    /// Two-byte length-prefixed binary data.
    pub(crate) fn binary(&mut self) -> Result<Bytes, DecodeError> {
        let len = self.u16()?;
        self.take(usize::from(len))
    }

    /// Two-byte length-prefixed UTF-8 string. Ill-formed UTF-8 (including
    /// surrogates, which `from_utf8` rejects) and U+0000 are malformed
    /// [MQTT-1.5.4-1, MQTT-1.5.4-2].
    pub(crate) fn string(&mut self) -> Result<String, DecodeError> {
        let raw = self.binary()?;
        if raw.contains(&0) {
            return Err(DecodeError::Malformed("UTF-8 string contains U+0000"));
        }
        match std::str::from_utf8(&raw) {
            Ok(s) => Ok(s.to_owned()),
            Err(_) => Err(DecodeError::Malformed("string is not valid UTF-8")),
        }
    }

    /// Fails if any bytes are left: every packet's fields must fill its
    /// remaining length exactly.
    pub(crate) fn finish(&self) -> Result<(), DecodeError> {
        if self.data.is_empty() {
            Ok(())
        } else {
            Err(DecodeError::Malformed(
                "unexpected bytes after the packet's fields",
            ))
        }
    }
}

/// Cuts `s` to what a two-byte length prefix can announce, on a character
/// boundary so the result stays valid UTF-8. Longer strings never come out of
/// the decoder; cutting keeps the stream framed if a caller builds one anyway.
fn clamp_str(s: &str) -> &str {
    debug_assert!(s.len() <= PREFIXED_MAX, "string of {} bytes", s.len());
    if s.len() <= PREFIXED_MAX {
        return s;
    }
    let mut end = PREFIXED_MAX;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

fn clamp_bin(b: &[u8]) -> &[u8] {
    debug_assert!(b.len() <= PREFIXED_MAX, "binary field of {} bytes", b.len());
    &b[..b.len().min(PREFIXED_MAX)]
}

pub(crate) fn str_len(s: &str) -> usize {
    2 + clamp_str(s).len()
}

pub(crate) fn bin_len(b: &[u8]) -> usize {
    2 + clamp_bin(b).len()
}

pub(crate) fn put_str(buf: &mut BytesMut, s: &str) {
    put_bin(buf, clamp_str(s).as_bytes());
}

pub(crate) fn put_bin(buf: &mut BytesMut, b: &[u8]) {
    let b = clamp_bin(b);
    // clamp_bin bounds the length to u16::MAX.
    buf.put_u16(b.len() as u16);
    buf.put_slice(b);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vbi_boundaries_round_trip() {
        for v in [
            0usize,
            127,
            128,
            16_383,
            16_384,
            2_097_151,
            2_097_152,
            268_435_455,
        ] {
            let mut buf = BytesMut::new();
            put_vbi(&mut buf, v);
            assert_eq!(buf.len(), vbi_len(v), "length of {v}");
            assert_eq!(parse_vbi(&buf), Ok(Some((v as u32, buf.len()))));
            // Every proper prefix is incomplete, not an error.
            for cut in 0..buf.len() {
                assert_eq!(parse_vbi(&buf[..cut]), Ok(None));
            }
        }
    }

    #[test]
    fn vbi_rejects_five_bytes_and_padding() {
        assert!(matches!(
            parse_vbi(&[0xFF, 0xFF, 0xFF, 0xFF, 0x01]),
            Err(DecodeError::Malformed(_))
        ));
        assert!(matches!(
            parse_vbi(&[0x80, 0x80, 0x80, 0x80]),
            Err(DecodeError::Malformed(_))
        ));
        assert!(matches!(
            parse_vbi(&[0x80, 0x00]),
            Err(DecodeError::Malformed(_))
        ));
    }

    #[test]
    fn strings_reject_nul_and_bad_utf8() {
        let mut r = Reader::new(Bytes::from_static(&[0, 3, b'a', 0, b'b']));
        assert!(matches!(r.string(), Err(DecodeError::Malformed(_))));
        // An encoded surrogate half (U+D800).
        let mut r = Reader::new(Bytes::from_static(&[0, 3, 0xED, 0xA0, 0x80]));
        assert!(matches!(r.string(), Err(DecodeError::Malformed(_))));
        let mut r = Reader::new(Bytes::from_static(&[0, 4, b'a']));
        assert!(matches!(r.string(), Err(DecodeError::Malformed(_))));
        let mut r = Reader::new(Bytes::from_static(&[0, 2, 0xC3, 0xA9]));
        assert_eq!(r.string().as_deref(), Ok("é"));
    }
}
