//! The master's gRPC codec: prost, with a smaller first buffer per stream
//! direction than tonic's 8 KiB. A master holds a Join stream per member,
//! most of them idle, and every frame but a burst's is small; the buffers
//! still grow (by this size at a time) to what a message needs.

use tonic::codec::{BufferSettings, Codec};
use tonic_prost::{ProstCodec, ProstDecoder, ProstEncoder};

/// First capacity, and growth step, of a stream's encode and decode buffers.
pub const BUFFER: usize = 2 * 1024;
/// Bytes encoded before the stream yields to others (tonic's default).
const YIELD_THRESHOLD: usize = 32 * 1024;

/// [`ProstCodec`] with [`BUFFER`]-sized buffers.
#[derive(Debug, Clone)]
pub struct SmallCodec<T, U>(ProstCodec<T, U>);

impl<T, U> Default for SmallCodec<T, U> {
    fn default() -> Self {
        SmallCodec(ProstCodec::new())
    }
}

impl<T, U> Codec for SmallCodec<T, U>
where
    T: prost::Message + Send + 'static,
    U: prost::Message + Default + Send + 'static,
{
    type Encode = T;
    type Decode = U;
    type Encoder = ProstEncoder<T>;
    type Decoder = ProstDecoder<U>;

    fn encoder(&mut self) -> Self::Encoder {
        ProstCodec::<T, U>::raw_encoder(BufferSettings::new(BUFFER, YIELD_THRESHOLD))
    }

    fn decoder(&mut self) -> Self::Decoder {
        ProstCodec::<T, U>::raw_decoder(BufferSettings::new(BUFFER, YIELD_THRESHOLD))
    }
}
