//! Feeds arbitrary bytes to the MQTT decoder under every protocol version.
//! Decoding must never panic, and whatever decodes must re-encode to bytes
//! that decode to the same packet.

#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use skein_broker::codec::{decode, encode, encoded_len, ProtocolVersion};

const VERSIONS: [ProtocolVersion; 3] = [
    ProtocolVersion::V31,
    ProtocolVersion::V311,
    ProtocolVersion::V5,
];

/// Small enough that the size check triggers on fuzzed lengths, large enough
/// for any input libFuzzer generates by default.
const MAX_PACKET_SIZE: usize = 1 << 20;

fuzz_target!(|data: &[u8]| {
    for version in VERSIONS {
        let mut buf = BytesMut::from(data);
        while let Ok(Some(packet)) = decode(&mut buf, version, MAX_PACKET_SIZE) {
            let mut wire = BytesMut::new();
            encode(&packet, version, &mut wire);
            assert_eq!(wire.len(), encoded_len(&packet, version));
            let again = decode(&mut wire, version, usize::MAX);
            assert_eq!(
                again,
                Ok(Some(packet)),
                "re-encoded packet decoded differently"
            );
            assert!(wire.is_empty(), "re-encoded packet left bytes behind");
        }
    }
});
