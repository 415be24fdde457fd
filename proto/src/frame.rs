//! What the master sends on a Join stream: a `MasterFrame` whose deliveries
//! may be encoded already. A broadcast encodes its envelope once
//! ([`Encoded`]); every receiver's queue holds the same bytes, and a frame
//! of one or many deliveries is written around them. On the wire it is the
//! plain `MasterFrame` any client decodes.

use crate::pb;
use prost::bytes::{Buf, BufMut, Bytes};
use prost::encoding::{DecodeContext, WireType, encode_key, encode_varint, encoded_len_varint};
use prost::{DecodeError, Message};

/// `MasterFrame.deliver`.
const DELIVER: u32 = 2;
/// `MasterFrame.deliver_batch`.
const DELIVER_BATCH: u32 = 20;
/// `Envelopes.envelopes`.
const ENVELOPES: u32 = 1;

/// An `Envelope`, encoded once, shared by every queue it is in.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Encoded(Bytes);

impl Encoded {
    /// Encodes `env`.
    pub fn new(env: &pb::Envelope) -> Self {
        Self(env.encode_to_vec().into())
    }

    /// Its encoded length.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether it encodes an empty envelope.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// A `MasterFrame` on its way out.
#[derive(Debug)]
pub enum OutFrame {
    /// Any frame, to be encoded as it goes out (boxed: a queued delivery
    /// stays a few words).
    Frame(Box<pb::MasterFrame>),
    /// `deliver`, encoded already.
    Deliver(Encoded),
    /// `deliver_batch`, its envelopes encoded already.
    DeliverBatch(Vec<Encoded>),
}

impl Default for OutFrame {
    fn default() -> Self {
        Self::Frame(Box::default())
    }
}

impl From<pb::MasterFrame> for OutFrame {
    fn from(frame: pb::MasterFrame) -> Self {
        Self::Frame(Box::new(frame))
    }
}

/// Length of a length-delimited field holding `len` bytes, key included.
fn field_len(tag: u32, len: usize) -> usize {
    prost::encoding::key_len(tag) + encoded_len_varint(len as u64) + len
}

fn put_field(tag: u32, bytes: &[u8], buf: &mut impl BufMut) {
    encode_key(tag, WireType::LengthDelimited, buf);
    encode_varint(bytes.len() as u64, buf);
    buf.put_slice(bytes);
}

fn batch_len(envelopes: &[Encoded]) -> usize {
    envelopes
        .iter()
        .map(|e| field_len(ENVELOPES, e.len()))
        .sum()
}

impl Message for OutFrame {
    fn encode_raw(&self, buf: &mut impl BufMut) {
        match self {
            Self::Frame(f) => f.encode_raw(buf),
            Self::Deliver(e) => put_field(DELIVER, &e.0, buf),
            Self::DeliverBatch(envelopes) => {
                encode_key(DELIVER_BATCH, WireType::LengthDelimited, buf);
                encode_varint(batch_len(envelopes) as u64, buf);
                for e in envelopes {
                    put_field(ENVELOPES, &e.0, buf);
                }
            }
        }
    }

    /// Decodes as a plain `MasterFrame` (only tests decode what the master
    /// sends through this type).
    fn merge_field(
        &mut self,
        tag: u32,
        wire_type: WireType,
        buf: &mut impl Buf,
        ctx: DecodeContext,
    ) -> Result<(), DecodeError> {
        if !matches!(self, Self::Frame(_)) {
            *self = Self::default();
        }
        match self {
            Self::Frame(f) => f.merge_field(tag, wire_type, buf, ctx),
            _ => unreachable!("made a Frame above"),
        }
    }

    fn encoded_len(&self) -> usize {
        match self {
            Self::Frame(f) => f.encoded_len(),
            Self::Deliver(e) => field_len(DELIVER, e.len()),
            Self::DeliverBatch(envelopes) => field_len(DELIVER_BATCH, batch_len(envelopes)),
        }
    }

    fn clear(&mut self) {
        *self = Self::default();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use pb::master_frame::Kind;

    fn envelope(id: &str, data: usize) -> pb::Envelope {
        pb::Envelope {
            id: id.into(),
            from: "worker-1".into(),
            action: "refresh".into(),
            data: vec![7; data].into(),
            ..Default::default()
        }
    }

    fn same_bytes(out: OutFrame, plain: pb::MasterFrame) {
        assert_eq!(out.encoded_len(), plain.encoded_len());
        assert_eq!(out.encode_to_vec(), plain.encode_to_vec());
        let decoded = pb::MasterFrame::decode(out.encode_to_vec().as_slice()).expect("decodes");
        assert_eq!(decoded, plain);
    }

    #[test]
    fn an_encoded_delivery_is_the_plain_frame_on_the_wire() {
        // Sizes around the one- and two-byte length prefixes.
        for size in [0, 1, 100, 127, 128, 16_384, 300_000] {
            let env = envelope("a", size);
            same_bytes(
                OutFrame::Deliver(Encoded::new(&env)),
                pb::MasterFrame {
                    kind: Some(Kind::Deliver(env)),
                },
            );
        }
    }

    #[test]
    fn an_encoded_batch_is_the_plain_batch_on_the_wire() {
        let envelopes: Vec<_> = (0..50).map(|i| envelope(&i.to_string(), i * 10)).collect();
        same_bytes(
            OutFrame::DeliverBatch(envelopes.iter().map(Encoded::new).collect()),
            pb::MasterFrame {
                kind: Some(Kind::DeliverBatch(pb::Envelopes { envelopes })),
            },
        );
    }

    #[test]
    fn other_frames_pass_through() {
        let plain = pb::MasterFrame {
            kind: Some(Kind::HeartbeatAck(pb::HeartbeatAck::default())),
        };
        same_bytes(plain.clone().into(), plain);
    }
}
