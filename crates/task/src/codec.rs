//! The frame codec: a 4-byte big-endian length, then the payload.
//!
//! ```text
//! +----------------------+--------------------------------+
//! | length: u32, big end | payload: `length` bytes        |
//! +----------------------+--------------------------------+
//!   0x00 0x00 0x00 0x05    h  e  l  l  o
//! ```
//!
//! The length counts the payload only, not the header. A frame longer than the maximum frame length
//! (default [`DEFAULT_MAX_FRAME_LEN`], 16 MiB) is refused on both sides: [`check_len`] refuses it
//! before sending, and [`FrameDecoder::decode`] reports it as soon as the header arrives.

use std::io;

use bytes::{Buf, Bytes, BytesMut};

use crate::error::FrameError;
use crate::pump::eventq::net::TcpStream;

/// The default maximum payload length of one frame: 16 MiB.
pub const DEFAULT_MAX_FRAME_LEN: usize = 16 * 1024 * 1024;

/// The length of a frame header: a big-endian `u32` payload length.
pub const HEADER_LEN: usize = 4;

/// The largest payload length the header can express.
const HEADER_MAX: usize = u32::MAX as usize;

/// The 4-byte header announcing a payload of `len` bytes.
///
/// # Panics
/// If `len` does not fit in a `u32`; call [`check_len`] first (any limit it accepts fits).
///
/// # Examples
/// ```
/// assert_eq!(mixbus_task::encode_header(5), [0, 0, 0, 5]);
/// ```
pub fn encode_header(len: usize) -> [u8; HEADER_LEN] {
    let len = u32::try_from(len).expect("frame length checked against the limit before encoding");
    len.to_be_bytes()
}

/// Refuses a payload of `len` bytes if it exceeds `max` (or what the header can express).
///
/// # Errors
/// [`FrameError::TooLarge`] if `len > max` or `len > u32::MAX`.
///
/// # Examples
/// ```
/// use mixbus_task::{DEFAULT_MAX_FRAME_LEN, FrameError, check_len};
///
/// assert!(check_len(1024, DEFAULT_MAX_FRAME_LEN).is_ok());
/// let err = check_len(20 * 1024 * 1024, DEFAULT_MAX_FRAME_LEN).unwrap_err();
/// assert_eq!(err.to_string(), "frame of 20971520 bytes exceeds the 16777216-byte limit");
/// ```
pub fn check_len(len: usize, max: usize) -> Result<(), FrameError> {
    let max = max.min(HEADER_MAX);
    if len > max {
        return Err(FrameError::TooLarge { len, max });
    }
    Ok(())
}

/// Appends one frame (header and payload) to `dst`.
///
/// This does not apply a maximum frame length; call [`check_len`] first.
///
/// # Panics
/// If `payload` is longer than `u32::MAX` bytes.
///
/// # Examples
/// ```
/// let mut dst = mixbus_task::BytesMut::new();
/// mixbus_task::encode(b"hi", &mut dst);
/// assert_eq!(&dst[..], b"\0\0\0\x02hi");
/// ```
pub fn encode(payload: &[u8], dst: &mut BytesMut) {
    let header = encode_header(payload.len());
    dst.reserve(HEADER_LEN + payload.len());
    dst.extend_from_slice(&header);
    dst.extend_from_slice(payload);
}

/// Splits a byte stream into frames, handing out each payload as a zero-copy [`Bytes`].
///
/// Read socket data straight into the decoder with [`read_from`](Self::read_from), or append bytes
/// you already hold with [`extend_from_slice`](Self::extend_from_slice); then call
/// [`decode`](Self::decode) until it returns `Ok(None)`. Payloads share the decoder's buffer
/// (reference counted, no copy and no allocation per frame); a payload kept for long keeps that
/// buffer alive, so copy it with [`Bytes::copy_from_slice`] if it must outlive the others by far.
///
/// # Examples
/// ```
/// use mixbus_task::{BytesMut, FrameDecoder, encode};
///
/// let mut wire = BytesMut::new();
/// encode(b"hello", &mut wire);
/// encode(b"", &mut wire);
///
/// let mut decoder = FrameDecoder::default();
/// let mut socket = &wire[..7]; // Anything that implements `std::io::Read`.
/// decoder.read_from(&mut socket, 64 * 1024)?;
/// assert_eq!(decoder.decode()?, None); // Only 3 of the 5 payload bytes so far.
/// decoder.extend_from_slice(&wire[7..]);
/// assert_eq!(decoder.decode()?.as_deref(), Some(&b"hello"[..]));
/// assert_eq!(decoder.decode()?.as_deref(), Some(&b""[..]));
/// assert_eq!(decoder.decode()?, None);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug)]
pub struct FrameDecoder {
    max_frame_len: usize,
    /// `buf[..filled]` is received data; `buf[filled..]` is initialised spare room for the next
    /// read, kept in the length so that reads do not zero it again.
    buf: BytesMut,
    filled: usize,
}

impl FrameDecoder {
    /// A decoder that refuses frames whose payload is longer than `max_frame_len` bytes.
    pub fn new(max_frame_len: usize) -> FrameDecoder {
        FrameDecoder {
            max_frame_len,
            buf: BytesMut::new(),
            filled: 0,
        }
    }

    /// The maximum payload length this decoder accepts.
    pub fn max_frame_len(&self) -> usize {
        self.max_frame_len
    }

    /// How many received bytes are waiting to be decoded (headers included).
    pub fn buffered(&self) -> usize {
        self.filled
    }

    /// Makes room for at least `chunk` more bytes after the received ones.
    ///
    /// Room freed by earlier reads stays initialised, so only growth is zero-filled: a steady
    /// stream costs one `memset` per byte at most, never one per read.
    fn reserve_spare(&mut self, chunk: usize) {
        let spare = self.buf.len() - self.filled;
        if spare < chunk {
            self.buf.resize(self.filled + chunk, 0);
        }
    }

    /// Reads once from `r` straight into the buffer, with room for at least `chunk` bytes.
    ///
    /// Returns what [`io::Read::read`] returned: the number of bytes read, `0` at end of stream.
    /// An interrupted read is retried; `WouldBlock` and other errors are returned as they are.
    /// A `chunk` of zero is taken as one byte, so `Ok(0)` always means end of stream.
    ///
    /// # Errors
    /// Any error of `r` other than [`io::ErrorKind::Interrupted`].
    pub fn read_from(&mut self, r: &mut impl io::Read, chunk: usize) -> io::Result<usize> {
        self.reserve_spare(chunk.max(1));
        loop {
            match r.read(&mut self.buf[self.filled..]) {
                Ok(n) => {
                    self.filled += n;
                    return Ok(n);
                }
                Err(err) if err.kind() == io::ErrorKind::Interrupted => continue,
                Err(err) => return Err(err),
            }
        }
    }

    /// Reads once from a non-blocking `stream` into the buffer, with room for at least `chunk`
    /// bytes that is not zero-filled first ([`TcpStream::read_buf`]): the path of
    /// [`ReceiveTask`](crate::ReceiveTask), where zeroing every byte received cost more than
    /// the frames' decoding. Otherwise as [`read_from`](Self::read_from).
    ///
    /// # Errors
    /// As the socket reports; `WouldBlock` when nothing is ready.
    pub fn read_stream(&mut self, stream: &TcpStream, chunk: usize) -> io::Result<usize> {
        // Spare room zeroed by an earlier `read_from` is given up: the socket writes over it.
        self.buf.truncate(self.filled);
        let n = stream.read_buf(&mut self.buf, chunk.max(1))?;
        self.filled += n;
        Ok(n)
    }

    /// Appends bytes that were received some other way.
    pub fn extend_from_slice(&mut self, data: &[u8]) {
        self.reserve_spare(data.len());
        self.buf[self.filled..self.filled + data.len()].copy_from_slice(data);
        self.filled += data.len();
    }

    /// Splits off the next whole frame and returns its payload, or `Ok(None)` if it is incomplete.
    ///
    /// Call it until it returns `Ok(None)`: one read may bring many frames.
    ///
    /// # Errors
    /// [`FrameError::TooLarge`] as soon as a header announces more than the maximum frame length,
    /// before its payload arrives. The decoder stays stuck on that header (every later call returns
    /// the same error): the stream cannot be resynchronised, so close the connection.
    pub fn decode(&mut self) -> Result<Option<Bytes>, FrameError> {
        if self.filled < HEADER_LEN {
            return Ok(None);
        }
        let header: [u8; HEADER_LEN] = self.buf[..HEADER_LEN]
            .try_into()
            .expect("the slice is HEADER_LEN long");
        let len = u32::from_be_bytes(header) as usize;
        if len > self.max_frame_len {
            return Err(FrameError::TooLarge {
                len,
                max: self.max_frame_len,
            });
        }
        let total = HEADER_LEN + len;
        if self.filled < total {
            return Ok(None);
        }
        self.buf.advance(HEADER_LEN);
        self.filled -= total;
        Ok(Some(self.buf.split_to(len).freeze()))
    }

    /// Splits off up to `max` whole frames at once into `frames` (which is cleared first) and
    /// returns how many: the batched [`decode`](Self::decode).
    ///
    /// The frames share one buffer split off the decoder in a single step, so a batch costs one
    /// reference count however many frames it holds; read them in place with [`Frames::iter`], or
    /// take a zero-copy [`Bytes`] of one with [`Frames::bytes`]. `Ok(0)` means no whole frame is
    /// buffered (or `max` is zero).
    ///
    /// # Errors
    /// [`FrameError::TooLarge`] when the first buffered header announces more than the maximum
    /// frame length. Frames before a bad header are returned first; the next call reports it, and
    /// every later one too (the decoder stays stuck on it, as with `decode`).
    ///
    /// # Examples
    /// ```
    /// use mixbus_task::{BytesMut, FrameDecoder, Frames, encode};
    ///
    /// let mut wire = BytesMut::new();
    /// for word in ["one", "two", "three"] {
    ///     encode(word.as_bytes(), &mut wire);
    /// }
    /// let mut decoder = FrameDecoder::default();
    /// decoder.extend_from_slice(&wire);
    /// let mut frames = Frames::new();
    /// assert_eq!(decoder.decode_frames(&mut frames, 64)?, 3);
    /// let words: Vec<&[u8]> = frames.iter().collect();
    /// assert_eq!(words, [&b"one"[..], b"two", b"three"]);
    /// assert_eq!(frames.bytes(2), "three"); // A zero-copy handle that may outlive the batch.
    /// assert_eq!(decoder.decode_frames(&mut frames, 64)?, 0);
    /// # Ok::<(), mixbus_task::FrameError>(())
    /// ```
    pub fn decode_frames(&mut self, frames: &mut Frames, max: usize) -> Result<usize, FrameError> {
        frames.clear();
        let data = &self.buf[..self.filled];
        let mut pos = 0;
        while frames.spans.len() < max {
            let Some(header) = data.get(pos..pos + HEADER_LEN) else {
                break;
            };
            let header: [u8; HEADER_LEN] = header.try_into().expect("the slice is HEADER_LEN long");
            let len = u32::from_be_bytes(header) as usize;
            if len > self.max_frame_len {
                if frames.spans.is_empty() {
                    return Err(FrameError::TooLarge {
                        len,
                        max: self.max_frame_len,
                    });
                }
                break;
            }
            let start = pos + HEADER_LEN;
            let end = start + len;
            if end > data.len() {
                break;
            }
            frames.spans.push((start, end));
            pos = end;
        }
        if pos > 0 {
            frames.chunk = self.buf.split_to(pos).freeze();
            self.filled -= pos;
        }
        Ok(frames.spans.len())
    }
}

/// A batch of whole frames from [`FrameDecoder::decode_frames`]: the payloads, in order, all in
/// one shared buffer.
///
/// Reading them in place ([`iter`](Self::iter), [`get`](Self::get)) costs nothing per frame;
/// [`bytes`](Self::bytes) hands out one payload as a zero-copy [`Bytes`] that may outlive the
/// batch (one reference count each).
#[derive(Debug, Default, Clone)]
pub struct Frames {
    chunk: Bytes,
    /// Where each payload lies in `chunk`.
    spans: Vec<(usize, usize)>,
}

impl Frames {
    /// An empty batch, to be filled by [`FrameDecoder::decode_frames`].
    pub fn new() -> Frames {
        Frames::default()
    }

    /// How many frames the batch holds.
    pub fn len(&self) -> usize {
        self.spans.len()
    }

    /// Whether the batch holds no frame.
    pub fn is_empty(&self) -> bool {
        self.spans.is_empty()
    }

    /// The payload of frame `i`, in place, if there is one.
    pub fn get(&self, i: usize) -> Option<&[u8]> {
        self.spans
            .get(i)
            .map(|&(start, end)| &self.chunk[start..end])
    }

    /// The payload of frame `i` as a zero-copy [`Bytes`] sharing the batch's buffer.
    ///
    /// # Panics
    /// If `i >= self.len()`.
    pub fn bytes(&self, i: usize) -> Bytes {
        let (start, end) = self.spans[i];
        self.chunk.slice(start..end)
    }

    /// The payloads, in order, in place.
    pub fn iter(&self) -> impl ExactSizeIterator<Item = &[u8]> + '_ {
        self.spans
            .iter()
            .map(|&(start, end)| &self.chunk[start..end])
    }

    /// The buffer every payload of the batch lies in: `chunk().slice_ref(payload)` makes a
    /// zero-copy [`Bytes`] of a payload from [`iter`](Self::iter), or of any part of one, with
    /// one reference count taken only for what is kept.
    pub fn chunk(&self) -> &Bytes {
        &self.chunk
    }

    /// The payloads, in order, each as a zero-copy [`Bytes`].
    pub fn iter_bytes(&self) -> impl ExactSizeIterator<Item = Bytes> + '_ {
        self.spans
            .iter()
            .map(|&(start, end)| self.chunk.slice(start..end))
    }

    /// Empties the batch and lets go of its buffer.
    pub fn clear(&mut self) {
        self.spans.clear();
        self.chunk = Bytes::new();
    }
}

impl Default for FrameDecoder {
    /// A decoder with the default maximum frame length, [`DEFAULT_MAX_FRAME_LEN`].
    fn default() -> Self {
        FrameDecoder::new(DEFAULT_MAX_FRAME_LEN)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Frames of the given sizes, each payload a distinct pattern, and the whole encoded stream.
    fn stream(sizes: &[usize]) -> (Vec<Vec<u8>>, Vec<u8>) {
        let payloads: Vec<Vec<u8>> = sizes
            .iter()
            .enumerate()
            .map(|(f, &n)| (0..n).map(|i| (i * 31 + f * 7 + 1) as u8).collect())
            .collect();
        let mut wire = BytesMut::new();
        for p in &payloads {
            check_len(p.len(), DEFAULT_MAX_FRAME_LEN).unwrap();
            encode(p, &mut wire);
        }
        (payloads, wire.to_vec())
    }

    /// Feeds `wire` in the given pieces through `read_from`, decoding after each read.
    fn decode_pieces(decoder: &mut FrameDecoder, pieces: &[&[u8]]) -> Vec<Bytes> {
        let mut out = Vec::new();
        for piece in pieces {
            let mut r = *piece;
            while !r.is_empty() {
                decoder.read_from(&mut r, 64).unwrap();
                while let Some(frame) = decoder.decode().unwrap() {
                    out.push(frame);
                }
            }
        }
        out
    }

    const SIZES: [usize; 4] = [0, 1, 5, 300];

    #[test]
    fn one_byte_at_a_time() {
        let (payloads, wire) = stream(&SIZES);
        let pieces: Vec<&[u8]> = wire.chunks(1).collect();
        let mut decoder = FrameDecoder::default();
        assert_eq!(decode_pieces(&mut decoder, &pieces), payloads);
        assert_eq!(decoder.buffered(), 0);
    }

    #[test]
    fn every_split_point() {
        let (payloads, wire) = stream(&SIZES);
        for at in 0..=wire.len() {
            let (a, b) = wire.split_at(at);
            let mut decoder = FrameDecoder::default();
            let got = decode_pieces(&mut decoder, &[a, b]);
            assert_eq!(got, payloads, "split at {at}");
            assert_eq!(decoder.buffered(), 0, "split at {at}");
        }
    }

    #[test]
    fn every_pair_of_split_points() {
        let (payloads, wire) = stream(&SIZES);
        for i in 0..=wire.len() {
            for j in i..=wire.len() {
                let mut decoder = FrameDecoder::default();
                let got = decode_pieces(&mut decoder, &[&wire[..i], &wire[i..j], &wire[j..]]);
                assert_eq!(got, payloads, "split at {i} and {j}");
            }
        }
    }

    #[test]
    fn every_split_point_with_extend_from_slice() {
        let (payloads, wire) = stream(&SIZES);
        for at in 0..=wire.len() {
            let mut decoder = FrameDecoder::default();
            let mut got = Vec::new();
            // Mix both ways in: reads leave initialised spare room that appends must reuse.
            let mut r = &wire[..at];
            decoder.read_from(&mut r, 1024).unwrap();
            while let Some(frame) = decoder.decode().unwrap() {
                got.push(frame);
            }
            decoder.extend_from_slice(&wire[at..]);
            while let Some(frame) = decoder.decode().unwrap() {
                got.push(frame);
            }
            assert_eq!(got, payloads, "split at {at}");
        }
    }

    #[test]
    fn empty_frame() {
        let mut decoder = FrameDecoder::default();
        decoder.extend_from_slice(&[0, 0, 0]);
        assert_eq!(decoder.decode(), Ok(None));
        decoder.extend_from_slice(&[0]);
        assert_eq!(decoder.decode(), Ok(Some(Bytes::new())));
        assert_eq!(decoder.decode(), Ok(None));
        assert_eq!(decoder.buffered(), 0);
    }

    #[test]
    fn frame_exactly_at_the_max() {
        const MAX: usize = 1024;
        let payload = vec![0xab; MAX];
        check_len(MAX, MAX).unwrap();
        let mut wire = BytesMut::new();
        encode(&payload, &mut wire);
        let mut decoder = FrameDecoder::new(MAX);
        decoder.extend_from_slice(&wire[..wire.len() - 1]);
        assert_eq!(decoder.decode(), Ok(None));
        decoder.extend_from_slice(&wire[wire.len() - 1..]);
        assert_eq!(decoder.decode().unwrap().as_deref(), Some(&payload[..]));
    }

    #[test]
    fn frame_exactly_at_the_default_max() {
        let payload = vec![7; DEFAULT_MAX_FRAME_LEN];
        let mut wire = BytesMut::new();
        encode(&payload, &mut wire);
        let mut decoder = FrameDecoder::default();
        let mut r = &wire[..];
        while !r.is_empty() {
            decoder.read_from(&mut r, 256 * 1024).unwrap();
        }
        assert_eq!(decoder.decode().unwrap().as_deref(), Some(&payload[..]));
    }

    #[test]
    fn over_the_max_errors_on_the_header_alone() {
        let mut decoder = FrameDecoder::default();
        decoder.extend_from_slice(&encode_header(20 * 1024 * 1024)[..3]);
        assert_eq!(decoder.decode(), Ok(None));
        decoder.extend_from_slice(&encode_header(20 * 1024 * 1024)[3..]);
        let err = decoder.decode().unwrap_err();
        assert_eq!(
            err,
            FrameError::TooLarge {
                len: 20_971_520,
                max: DEFAULT_MAX_FRAME_LEN
            }
        );
        assert_eq!(
            err.to_string(),
            "frame of 20971520 bytes exceeds the 16777216-byte limit"
        );
        // The decoder stays stuck on the bad header.
        assert_eq!(decoder.decode(), Err(err));
    }

    #[test]
    fn one_over_a_small_max_errors() {
        let mut decoder = FrameDecoder::new(4);
        decoder.extend_from_slice(&encode_header(5));
        assert_eq!(
            decoder.decode(),
            Err(FrameError::TooLarge { len: 5, max: 4 })
        );
    }

    #[test]
    fn many_frames_in_one_read() {
        let sizes: Vec<usize> = (0..1000).map(|i| i % 37).collect();
        let (payloads, wire) = stream(&sizes);
        let mut decoder = FrameDecoder::default();
        let mut r = &wire[..];
        assert_eq!(decoder.read_from(&mut r, wire.len()).unwrap(), wire.len());
        let mut got = Vec::new();
        while let Some(frame) = decoder.decode().unwrap() {
            got.push(frame);
        }
        assert_eq!(got, payloads);
        assert_eq!(decoder.buffered(), 0);
    }

    #[test]
    fn read_from_retries_interrupts_and_passes_would_block() {
        struct Flaky(Vec<io::Result<Vec<u8>>>);
        impl io::Read for Flaky {
            fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
                let data = self.0.remove(0)?;
                buf[..data.len()].copy_from_slice(&data);
                Ok(data.len())
            }
        }
        let mut r = Flaky(vec![
            Err(io::ErrorKind::Interrupted.into()),
            Ok(vec![0, 0, 0, 2, b'o']),
            Err(io::ErrorKind::WouldBlock.into()),
            Ok(vec![b'k']),
            Ok(vec![]),
        ]);
        let mut decoder = FrameDecoder::default();
        assert_eq!(decoder.read_from(&mut r, 16).unwrap(), 5);
        assert_eq!(decoder.decode(), Ok(None));
        let err = decoder.read_from(&mut r, 16).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::WouldBlock);
        assert_eq!(decoder.read_from(&mut r, 0).unwrap(), 1);
        assert_eq!(decoder.decode().unwrap().as_deref(), Some(&b"ok"[..]));
        assert_eq!(decoder.read_from(&mut r, 16).unwrap(), 0, "end of stream");
    }

    #[test]
    fn payloads_share_the_read_buffer() {
        let (_, wire) = stream(&[8, 8]);
        let mut decoder = FrameDecoder::default();
        decoder.extend_from_slice(&wire);
        let a = decoder.decode().unwrap().unwrap();
        let b = decoder.decode().unwrap().unwrap();
        // Zero-copy: the second payload starts right after the first one's end and its header.
        assert_eq!(b.as_ptr() as usize, a.as_ptr() as usize + 8 + HEADER_LEN);
    }

    /// Feeds `wire` in the given pieces, decoding batches of at most `max` after each read.
    fn decode_frame_pieces(pieces: &[&[u8]], max: usize) -> Vec<Bytes> {
        let mut decoder = FrameDecoder::default();
        let mut frames = Frames::new();
        let mut out = Vec::new();
        for piece in pieces {
            let mut r = *piece;
            while !r.is_empty() {
                decoder.read_from(&mut r, 64).unwrap();
                while decoder.decode_frames(&mut frames, max).unwrap() > 0 {
                    assert!(frames.len() <= max);
                    let in_place: Vec<&[u8]> = frames.iter().collect();
                    let shared: Vec<Bytes> = frames.iter_bytes().collect();
                    assert_eq!(in_place, shared);
                    out.extend(shared);
                }
            }
        }
        assert_eq!(decoder.buffered(), 0);
        out
    }

    #[test]
    fn batches_at_every_pair_of_split_points() {
        let (payloads, wire) = stream(&SIZES);
        for max in [1, 2, 64] {
            for i in 0..=wire.len() {
                for j in i..=wire.len() {
                    let got = decode_frame_pieces(&[&wire[..i], &wire[i..j], &wire[j..]], max);
                    assert_eq!(got, payloads, "max {max}, split at {i} and {j}");
                }
            }
        }
    }

    #[test]
    fn batch_stops_before_a_bad_header_then_reports_it() {
        let mut wire = BytesMut::new();
        encode(b"ok", &mut wire);
        encode(b"fine", &mut wire);
        wire.extend_from_slice(&encode_header(100));
        let mut decoder = FrameDecoder::new(10);
        decoder.extend_from_slice(&wire);
        let mut frames = Frames::new();
        assert_eq!(decoder.decode_frames(&mut frames, 64), Ok(2));
        assert_eq!(frames.get(0), Some(&b"ok"[..]));
        assert_eq!(frames.bytes(1), "fine");
        assert_eq!(frames.get(2), None);
        let err = FrameError::TooLarge { len: 100, max: 10 };
        assert_eq!(decoder.decode_frames(&mut frames, 64), Err(err.clone()));
        assert!(frames.is_empty());
        assert_eq!(decoder.decode_frames(&mut frames, 64), Err(err));
    }

    #[test]
    fn batch_payloads_share_one_buffer_and_outlive_it() {
        let (_, wire) = stream(&[8, 8]);
        let mut decoder = FrameDecoder::default();
        decoder.extend_from_slice(&wire);
        let mut frames = Frames::new();
        assert_eq!(decoder.decode_frames(&mut frames, 64), Ok(2));
        let a = frames.bytes(0);
        let b = frames.bytes(1);
        assert_eq!(b.as_ptr() as usize, a.as_ptr() as usize + 8 + HEADER_LEN);
        frames.clear();
        assert!(frames.is_empty());
        assert_eq!(
            a.len() + b.len(),
            16,
            "handles stay valid after the batch is cleared"
        );
    }

    #[test]
    fn check_len_and_header() {
        assert_eq!(encode_header(0), [0; 4]);
        assert_eq!(encode_header(0x0102_0304), [1, 2, 3, 4]);
        assert_eq!(check_len(10, 10), Ok(()));
        assert_eq!(
            check_len(11, 10),
            Err(FrameError::TooLarge { len: 11, max: 10 })
        );
        // No limit can exceed what the header can express.
        let huge = u32::MAX as usize + 1;
        assert_eq!(
            check_len(huge, usize::MAX),
            Err(FrameError::TooLarge {
                len: huge,
                max: u32::MAX as usize
            })
        );
    }
}
