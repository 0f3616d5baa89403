//! The `Forward.Publish` call with batches the queue encoded already: the codec writes
//! their bytes as they are, so a batch is encoded once (kept for a resend and sent from the
//! same buffers) instead of once for the queue and again for the wire.

use prost::bytes::{BufMut, Bytes};
use prost::Message as _;
use skein_proto::v1 as pb;
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::codegen::http::uri::PathAndQuery;
use tonic::transport::Channel;
use tonic::{Status, Streaming};

use crate::peers::MAX_MESSAGE_BYTES;

/// An encoded `PublishBatch`: its own fields, then its publishes (written into the queue's
/// chunks as they were queued: one slice per chunk the batch spans, each of whole entries).
#[derive(Debug, Clone)]
pub(crate) struct EncodedBatch {
    pub(crate) header: Bytes,
    pub(crate) publishes: Vec<Bytes>,
}

impl EncodedBatch {
    #[cfg(test)]
    pub(crate) fn to_vec(&self) -> Vec<u8> {
        let mut out = self.header.to_vec();
        for part in &self.publishes {
            out.extend_from_slice(part);
        }
        out
    }
}

/// Sends encoded `PublishBatch`es, reads `BatchAck`s.
#[derive(Debug, Clone, Copy, Default)]
struct EncodedCodec;

impl Codec for EncodedCodec {
    type Encode = EncodedBatch;
    type Decode = pb::BatchAck;
    type Encoder = EncodedCodec;
    type Decoder = EncodedCodec;

    fn encoder(&mut self) -> Self::Encoder {
        EncodedCodec
    }

    fn decoder(&mut self) -> Self::Decoder {
        EncodedCodec
    }
}

impl Encoder for EncodedCodec {
    type Item = EncodedBatch;
    type Error = Status;

    fn encode(&mut self, item: EncodedBatch, buf: &mut EncodeBuf<'_>) -> Result<(), Status> {
        // Reserved at once: grown part by part, the buffer would be reallocated (and what
        // it held copied) once per chunk the batch spans.
        let len = item.header.len() + item.publishes.iter().map(Bytes::len).sum::<usize>();
        buf.reserve(len);
        buf.put_slice(&item.header);
        for part in &item.publishes {
            buf.put_slice(part);
        }
        Ok(())
    }
}

impl Decoder for EncodedCodec {
    type Item = pb::BatchAck;
    type Error = Status;

    fn decode(&mut self, buf: &mut DecodeBuf<'_>) -> Result<Option<pb::BatchAck>, Status> {
        pb::BatchAck::decode(buf)
            .map(Some)
            .map_err(|e| Status::internal(e.to_string()))
    }
}

/// Opens a `Forward.Publish` stream sending `batches` (each an encoded `PublishBatch`).
pub(super) async fn publish(
    channel: Channel,
    batches: impl futures_util::Stream<Item = EncodedBatch> + Send + 'static,
) -> Result<Streaming<pb::BatchAck>, Status> {
    let mut grpc = tonic::client::Grpc::new(channel)
        .max_decoding_message_size(MAX_MESSAGE_BYTES)
        .max_encoding_message_size(MAX_MESSAGE_BYTES);
    grpc.ready()
        .await
        .map_err(|e| Status::unavailable(format!("the peer's channel is not ready: {e}")))?;
    let path = PathAndQuery::from_static("/skein.cluster.v1.Forward/Publish");
    let request = tonic::Request::new(batches);
    Ok(grpc
        .streaming(request, path, EncodedCodec)
        .await?
        .into_inner())
}
