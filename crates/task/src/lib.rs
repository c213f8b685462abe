//! Task events for mixbus: accepting, connecting, sending, receiving and closing.
//!
//! This layer is being built; see BRIEF section 3.
//! It holds the frame codec already: a 4-byte big-endian length, then the payload
//! ([`FrameDecoder`], [`encode`], [`check_len`]).
#![forbid(unsafe_code)]

mod codec;
mod error;

pub use bytes::{Bytes, BytesMut};
pub use codec::{
    DEFAULT_MAX_FRAME_LEN, FrameDecoder, HEADER_LEN, check_len, encode, encode_header,
};
pub use error::{Error, FrameError, Result};
pub use mixbus_pump as pump;
