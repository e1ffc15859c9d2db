//! The protobuf codec of the generated code: prost's, except that a request that
//! does not decode is the sender's fault.
//!
//! tonic-prost answers undecodable bytes (random bytes, invalid UTF-8 in a string,
//! a wrong wire type) with a bare INTERNAL, which tells a caller to page the
//! gateway's operator. The caller sent a bad message: INVALID_ARGUMENT with
//! ErrorInfo `MALFORMED_REQUEST`, like every other refusal.

use std::marker::PhantomData;

use prost::Message;
use tonic::{
    Status,
    codec::{BufferSettings, Codec, DecodeBuf, Decoder},
};
use tonic_prost::{ProstCodec, ProstEncoder};

use super::{error::CallError, status};

/// [`ProstCodec`] with [`MessageDecoder`] (the client in the tests uses it too,
/// where a decode error would be the gateway's, and never happens).
#[derive(Debug)]
pub struct GatewayCodec<T, U>(PhantomData<(T, U)>);

impl<T, U> Default for GatewayCodec<T, U> {
    fn default() -> Self {
        Self(PhantomData)
    }
}

impl<T, U> Codec for GatewayCodec<T, U>
where
    T: Message + Send + 'static,
    U: Message + Default + Send + 'static,
{
    type Encode = T;
    type Decode = U;
    type Encoder = ProstEncoder<T>;
    type Decoder = MessageDecoder<U>;

    fn encoder(&mut self) -> Self::Encoder {
        ProstCodec::<T, U>::raw_encoder(BufferSettings::default())
    }

    fn decoder(&mut self) -> Self::Decoder {
        MessageDecoder(PhantomData)
    }
}

/// Decodes a `U`, refusing bytes that are not one as the caller's error.
#[derive(Debug)]
pub struct MessageDecoder<U>(PhantomData<U>);

impl<U: Message + Default> Decoder for MessageDecoder<U> {
    type Item = U;
    type Error = Status;

    fn decode(&mut self, buf: &mut DecodeBuf<'_>) -> Result<Option<U>, Status> {
        U::decode(buf)
            .map(Some)
            .map_err(|error| status::refuse(CallError::MalformedRequest(error.to_string())).status)
    }

    fn buffer_settings(&self) -> BufferSettings {
        BufferSettings::default()
    }
}
