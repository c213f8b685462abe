//! The error types of the task layer: [`Error`] for the crate and [`FrameError`] for the codec.

/// What went wrong in the task layer.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A frame broke the framing rules (for example: it announced more than the maximum length).
    #[error("invalid frame")]
    Frame(#[from] FrameError),
}

/// A frame the codec refuses to encode or decode.
///
/// Incomplete input is not an error: [`crate::FrameDecoder::decode`] returns `Ok(None)` for it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum FrameError {
    /// A frame is longer than the maximum frame length (or than the 4-byte header can express).
    #[error("frame of {len} bytes exceeds the {max}-byte limit")]
    TooLarge {
        /// The payload length announced by the header or asked to be sent.
        len: usize,
        /// The limit it exceeds.
        max: usize,
    },
}

/// The result type of the task layer.
pub type Result<T, E = Error> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;
    use std::error::Error as _;

    #[test]
    fn too_large_names_both_numbers() {
        let err = FrameError::TooLarge {
            len: 20_971_520,
            max: 16_777_216,
        };
        assert_eq!(
            err.to_string(),
            "frame of 20971520 bytes exceeds the 16777216-byte limit"
        );
    }

    #[test]
    fn frame_error_is_the_source() {
        let err = Error::from(FrameError::TooLarge { len: 2, max: 1 });
        let source = err.source().expect("a frame error has a source");
        assert_eq!(
            source.to_string(),
            "frame of 2 bytes exceeds the 1-byte limit"
        );
    }
}
