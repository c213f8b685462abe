//! [`SendTask`] and its [`Outbox`]: frames queued from any thread, written with vectored writes.

use std::collections::VecDeque;
use std::collections::vec_deque::Drain;
use std::fmt;
use std::io::{self, IoSlice, Write};
use std::net::Shutdown;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use bytes::Bytes;

use crate::codec::{DEFAULT_MAX_FRAME_LEN, HEADER_LEN, encode_header};
use crate::pump::eventq::Interest;
use crate::pump::eventq::net::TcpStream;
use crate::pump::{Context, IoSource, Next, OnceTask, Owner, PumpHandle, Task, Wake};

/// Most slices handed to one `writev`: a large message takes two (its header is copied into
/// the scratch run), so 256 lets one write carry 1 MiB of 4 KiB messages (64 stopped it at
/// 128 KiB, and 4 KiB throughput was 1.5 to 2 times slower for it).
const MAX_SLICES: usize = 256;
/// Most bytes gathered for one `writev`.
const MAX_BATCH_BYTES: usize = 1 << 20;
/// Bytes a thread writing in place (see [`Outbox::set_write_in_place`]) writes at most before it
/// leaves the rest to the send task.
const IN_PLACE_BYTES: usize = 256 << 10;
/// Payloads up to this size are copied next to their header into one buffer instead of taking
/// slices of their own: cheaper than two iovecs for small frames.
const COPY_BELOW: usize = 512;
/// While nothing is handed back, payloads up to this size are copied into a run when pushed
/// (see [`Outbox::set_hand_back`]); larger ones are kept until written. Copying costs the
/// producer a copy, keeping costs it nothing but costs the writer a reference count on a handle
/// the producer touched last: the copy wins for small payloads only (measured: at 16 bytes it
/// is far ahead, at 256 bytes behind).
const COPY_AT_PUSH_BELOW: usize = 128;
/// Capacity of one run of frames copied at push time (see [`Outbox::set_hand_back`]).
const RUN_BYTES: usize = 64 * 1024;
/// Most emptied runs kept for reuse.
const SPARE_RUNS: usize = 16;
/// A batch copied outside the lock and smaller than this is appended to the run at the back of
/// the queue (if it has room) rather than queued as a run of its own: runs stay full, so fewer
/// buffers are in flight and the spare ones go round instead of being allocated afresh.
const APPEND_BELOW: usize = 32 * 1024;
/// Payloads shorter than this fit an empty run with their header: [`Outbox::push_copies`]
/// copies them into runs.
const COPY_LIMIT: usize = RUN_BYTES - HEADER_LEN + 1;
/// [`Outbox::push_copies`] copies this many messages or fewer under the pending lock, straight
/// into the run at the back of the queue; more are copied outside it, into runs of their own.
const COPY_FEW: usize = 8;
/// Messages [`Outbox::push_copies`] copies into buffers of their own per `push_all`.
const COPIES_PER_BATCH: usize = 256;

/// How a [`SendTask`] behaves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct SendOptions {
    /// Fail when the peer accepts no byte for this long while frames wait (default 30 s).
    pub write_timeout: Duration,
    /// Past this many queued bytes, [`Outbox::push`] refuses messages (default 8 MiB).
    pub high_water_bytes: usize,
    /// After a refusal, [`SendEvents::drained`] is called once the queue falls below this
    /// (default 4 MiB).
    pub low_water_bytes: usize,
    /// Largest payload accepted (default 16 MiB).
    pub max_frame_len: usize,
}

impl Default for SendOptions {
    fn default() -> Self {
        SendOptions {
            write_timeout: Duration::from_secs(30),
            high_water_bytes: 8 << 20,
            low_water_bytes: 4 << 20,
            max_frame_len: DEFAULT_MAX_FRAME_LEN,
        }
    }
}

impl SendOptions {
    /// Sets the write-stall timeout.
    #[must_use]
    pub fn with_write_timeout(mut self, timeout: Duration) -> Self {
        self.write_timeout = timeout;
        self
    }

    /// Sets the high and low water marks (the low mark is kept at or below the high one).
    #[must_use]
    pub fn with_water_marks(mut self, high_bytes: usize, low_bytes: usize) -> Self {
        self.high_water_bytes = high_bytes;
        self.low_water_bytes = low_bytes.min(high_bytes);
        self
    }

    /// Sets the largest payload accepted.
    #[must_use]
    pub fn with_max_frame_len(mut self, max: usize) -> Self {
        self.max_frame_len = max;
        self
    }
}

/// How the send side ended. Every message not written comes back in `unsent`, in order (one
/// copied into a run while hand-back was off as an equal slice of that run, not its handle).
#[derive(Debug)]
#[non_exhaustive]
pub enum SendOutcome {
    /// Closed and everything queued was written; the write half was shut down.
    Flushed,
    /// Closed, but the linger time passed before everything was written.
    LingerExpired {
        /// Messages never written.
        unsent: Vec<Bytes>,
    },
    /// Writing failed (the peer reset, or stalled past the write timeout).
    Failed {
        /// Why.
        reason: io::Error,
        /// Messages never written (the first may have been partly written).
        unsent: Vec<Bytes>,
    },
    /// Stopped from outside with [`Outbox::abort`].
    Aborted {
        /// Messages never written.
        unsent: Vec<Bytes>,
    },
}

impl SendOutcome {
    /// The messages never written.
    pub fn unsent(&self) -> &[Bytes] {
        match self {
            SendOutcome::Flushed => &[],
            SendOutcome::LingerExpired { unsent }
            | SendOutcome::Failed { unsent, .. }
            | SendOutcome::Aborted { unsent } => unsent,
        }
    }
}

/// What the send side reports, on the pump thread. Implementations must return promptly.
pub trait SendEvents: Send + 'static {
    /// A message was written to the socket whole; it is handed back. Called in order. Not
    /// called while hand-back is off ([`Outbox::set_hand_back`]).
    fn sent(&mut self, msg: Bytes, cx: &mut Context<'_>);

    /// Every message one write finished, in order; the default calls [`SendEvents::sent`] for each.
    /// Override it to pay per-batch costs (a lock, a lookup) once per write instead of per message.
    /// Messages it does not take are dropped.
    fn sent_all(&mut self, msgs: Drain<'_, Bytes>, cx: &mut Context<'_>) {
        for msg in msgs {
            self.sent(msg, cx);
        }
    }

    /// The queue fell below the low water mark after a push was refused: there is room again.
    fn drained(&mut self, _cx: &mut Context<'_>) {}

    /// The send side ended; called exactly once, after every `sent`.
    fn finished(&mut self, outcome: &SendOutcome, cx: &mut Context<'_>);
}

/// Why [`Outbox::push`] refused a message; the message is handed back.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PushError {
    /// The queue is past its high water mark: wait for [`SendEvents::drained`] and try again.
    #[error("outbound queue full ({queued} bytes queued, high water mark {high_water})")]
    Full {
        /// The refused message.
        msg: Bytes,
        /// Bytes queued when it was refused.
        queued: usize,
        /// The high water mark.
        high_water: usize,
    },
    /// The message is larger than the maximum frame length.
    #[error("message of {len} bytes exceeds the {max}-byte frame limit")]
    TooLarge {
        /// The refused message.
        msg: Bytes,
        /// Its length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// The send side is closing or closed.
    #[error("the send side is closed")]
    Closed(Bytes),
}

impl PushError {
    /// The refused message.
    pub fn into_msg(self) -> Bytes {
        match self {
            PushError::Full { msg, .. }
            | PushError::TooLarge { msg, .. }
            | PushError::Closed(msg) => msg,
        }
    }
}

/// Why a message may not be queued now (see [`Outbox::room_for`]).
enum Refusal {
    /// Above the frame limit (this one).
    TooLarge(usize),
    Closed,
    /// Past the high water mark, with this many bytes queued.
    Full(usize),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Open,
    Closing { deadline: Instant },
    Finished,
}

type CloseHook = Box<dyn FnOnce(&SendOutcome, &mut Context<'_>) + Send>;

/// A message, or several, waiting to be written.
enum Entry {
    /// A message kept as the handle pushed: handed back through `sent_all` once written.
    Msg(Bytes),
    /// Small frames, header and payload, copied one after another into one buffer when pushed
    /// while nothing is handed back: the writer writes the run as it is, with no work per frame.
    Run(Run),
    /// One frame whose payload is the concatenation of these buffers (see
    /// [`Outbox::push_parts`]), each written in place, and their total length.
    Parts(Vec<Bytes>, usize),
}

impl Entry {
    /// Bytes this entry puts on the wire.
    fn wire_len(&self) -> usize {
        match self {
            Entry::Msg(msg) => HEADER_LEN + msg.len(),
            Entry::Run(run) => run.len,
            Entry::Parts(_, len) => HEADER_LEN + len,
        }
    }
}

/// The most buffers one frame of [`Outbox::push_parts`] is written from; a frame of more is
/// joined into one buffer first (the writer gathers at most 256 slices per write).
pub const MAX_PARTS: usize = 64;

/// One buffer with the bytes of `parts` in order (a copy, unless there is only one).
fn join(parts: &[Bytes]) -> Bytes {
    match parts {
        [one] => one.clone(),
        _ => {
            let len = parts.iter().map(Bytes::len).sum();
            let mut joined = Vec::with_capacity(len);
            for part in parts {
                joined.extend_from_slice(part);
            }
            Bytes::from(joined)
        }
    }
}

/// Frames copied one after another into `buf[..len]`. The buffer is initialised (zeroed) a
/// step at a time as it is first filled, and stays so when reused: refilling costs no zeroing.
struct Run {
    buf: Vec<u8>,
    len: usize,
}

impl Run {
    /// The frames.
    fn frames(&self) -> &[u8] {
        &self.buf[..self.len]
    }

    /// Room left, in bytes.
    fn room(&self) -> usize {
        self.buf.capacity() - self.len
    }

    /// Makes `buf[..end]` initialised (`end` within the capacity).
    fn init_to(&mut self, end: usize) {
        if self.buf.len() < end {
            let step = (self.buf.len() + 4096).min(self.buf.capacity());
            self.buf.resize(end.max(step), 0);
        }
    }

    /// Appends the frame of `payload`; the caller checked the room.
    fn push_frame(&mut self, payload: &[u8]) {
        let end = self.len + HEADER_LEN + payload.len();
        self.init_to(end);
        put_frame(&mut self.buf[self.len..end], payload);
        self.len = end;
    }

    /// Appends one frame whose payload is `parts` joined (`len` bytes); the caller checked the
    /// room.
    fn push_frame_gathered(&mut self, parts: &[&[u8]], len: usize) {
        let end = self.len + HEADER_LEN + len;
        self.init_to(end);
        self.buf[self.len..self.len + HEADER_LEN].copy_from_slice(&encode_header(len));
        let mut at = self.len + HEADER_LEN;
        for part in parts {
            self.buf[at..at + part.len()].copy_from_slice(part);
            at += part.len();
        }
        self.len = end;
    }

    /// Appends the frames of `other`; the caller checked the room.
    fn append(&mut self, other: &Run) {
        let end = self.len + other.len;
        self.init_to(end);
        self.buf[self.len..end].copy_from_slice(other.frames());
        self.len = end;
    }

    /// The frames as one shared buffer (for zero-copy slices of them).
    fn into_bytes(self) -> Bytes {
        let mut bytes = Bytes::from(self.buf);
        bytes.truncate(self.len);
        bytes
    }
}

/// Writes the frame of `payload` (a short one), header and payload, into `dst`,
/// which is exactly its size. Short payloads are copied with two overlapping fixed-size moves
/// instead of a call to `memcpy`.
#[inline]
fn put_frame(dst: &mut [u8], payload: &[u8]) {
    let (header, body) = dst.split_at_mut(HEADER_LEN);
    header.copy_from_slice(&encode_header(payload.len()));
    let len = payload.len();
    match len {
        8..=16 => {
            body[..8].copy_from_slice(&payload[..8]);
            body[len - 8..].copy_from_slice(&payload[len - 8..]);
        }
        17..=32 => {
            body[..16].copy_from_slice(&payload[..16]);
            body[len - 16..].copy_from_slice(&payload[len - 16..]);
        }
        33..=64 => {
            body[..32].copy_from_slice(&payload[..32]);
            body[len - 32..].copy_from_slice(&payload[len - 32..]);
        }
        _ => body.copy_from_slice(payload),
    }
}

/// The payloads of the frames in `run[from..]`, in order, as zero-copy slices of `run`; `from`
/// is a frame boundary.
fn split_run(run: Bytes, from: usize, out: &mut impl Extend<Bytes>) {
    let mut pos = from;
    while pos + HEADER_LEN <= run.len() {
        let header: [u8; HEADER_LEN] = run[pos..pos + HEADER_LEN]
            .try_into()
            .expect("the slice is HEADER_LEN long");
        let start = pos + HEADER_LEN;
        let end = start + u32::from_be_bytes(header) as usize;
        out.extend(Some(run.slice(start..end)));
        pos = end;
    }
}

/// The end of the last frame of `run` that ends at or before `limit`.
fn frames_end(run: &[u8], limit: usize) -> usize {
    let mut pos = 0;
    while pos + HEADER_LEN <= limit {
        let header: [u8; HEADER_LEN] = run[pos..pos + HEADER_LEN]
            .try_into()
            .expect("the slice is HEADER_LEN long");
        let end = pos + HEADER_LEN + u32::from_be_bytes(header) as usize;
        if end > limit {
            break;
        }
        pos = end;
    }
    pos
}

struct Pending {
    queue: VecDeque<Entry>,
    /// A `SendTask` is queued, running or waiting: pushes need not post one.
    scheduled: bool,
    state: State,
    close_hook: Option<CloseHook>,
}

/// Emptied run buffers (initialised), for pushes to fill again. Lock order: the pending lock,
/// then this.
#[derive(Default)]
struct Spare(Mutex<Vec<Vec<u8>>>);

impl Spare {
    /// An empty run.
    fn take(&self) -> Run {
        let buf = lock(&self.0)
            .pop()
            .unwrap_or_else(|| Vec::with_capacity(RUN_BYTES));
        Run { buf, len: 0 }
    }

    /// Keeps the buffers of `runs` for reuse, up to [`SPARE_RUNS`]; frees the rest.
    fn put(&self, runs: impl IntoIterator<Item = Run>) {
        let mut spare = lock(&self.0);
        for run in runs {
            if spare.len() >= SPARE_RUNS {
                break;
            }
            spare.push(run.buf);
        }
    }
}

impl Pending {
    /// Queues an admitted message: when `copy` is set and it is small, copies it into the run at
    /// the back and hands it back to be dropped once the lock is released; else keeps it.
    fn enqueue(&mut self, msg: Bytes, copy: bool, spare: &Spare) -> Option<Bytes> {
        if !copy || msg.len() >= COPY_AT_PUSH_BELOW {
            self.queue.push_back(Entry::Msg(msg));
            return None;
        }
        self.copy_in(&msg, spare);
        Some(msg)
    }

    /// Copies the frame of `payload` (shorter than [`COPY_LIMIT`]) into the run at the back,
    /// or into a new one if it has no room.
    fn copy_in(&mut self, payload: &[u8], spare: &Spare) {
        if let Some(run) = self.back_run_with_room(HEADER_LEN + payload.len(), spare) {
            run.push_frame(payload);
        }
    }

    /// The run at the back of the queue if it has `size` bytes of room, else a fresh one pushed
    /// there (a frame under [`COPY_LIMIT`] always fits an empty run).
    fn back_run_with_room(&mut self, size: usize, spare: &Spare) -> Option<&mut Run> {
        let fits = matches!(self.queue.back(), Some(Entry::Run(run)) if run.room() >= size);
        if !fits {
            self.queue.push_back(Entry::Run(spare.take()));
        }
        match self.queue.back_mut() {
            Some(Entry::Run(run)) => Some(run),
            _ => None,
        }
    }

    /// Copies the frame of `parts` joined (`len` bytes) into the run at the back of the queue,
    /// or a fresh one if it does not fit there.
    fn copy_in_gathered(&mut self, parts: &[&[u8]], len: usize, spare: &Spare) {
        if let Some(run) = self.back_run_with_room(HEADER_LEN + len, spare) {
            run.push_frame_gathered(parts, len);
        }
    }

    /// Queues runs of frames copied outside the lock, in order.
    fn enqueue_runs(&mut self, runs: &mut Vec<Run>, spare: &Spare) {
        for run in runs.drain(..) {
            if run.len < APPEND_BELOW
                && let Some(Entry::Run(back)) = self.queue.back_mut()
                && back.room() >= run.len
            {
                back.append(&run);
                spare.put(Some(run));
            } else {
                self.queue.push_back(Entry::Run(run));
            }
        }
    }
}

struct Writer {
    source: Option<IoSource<TcpStream>>,
    inflight: VecDeque<Entry>,
    /// Bytes of the front entry (headers included) already written.
    offset: usize,
    /// Messages a write finished, on their way to `sent_all`.
    done: VecDeque<Bytes>,
    stalled_since: Option<Instant>,
    events: Box<dyn SendEvents>,
    scratch: Vec<u8>,
    /// Entries and bytes the last `write_batch` gathered (the first one from `offset` on).
    gathered: (usize, usize),
}

/// Header and payload bytes queued and not yet written, counted in two parts so that a push pays
/// no atomic read-modify-write: `pending` is changed only under the pending lock, `inflight`
/// only by the writer, under the writer lock. Readers without a lock may see a moving batch
/// counted twice for an instant, never in neither part.
#[derive(Default)]
struct Queued {
    pending: AtomicUsize,
    inflight: AtomicUsize,
}

impl Queued {
    fn total(&self) -> usize {
        self.pending.load(Ordering::SeqCst) + self.inflight.load(Ordering::SeqCst)
    }

    /// Counts `n` more pending bytes; the caller holds the pending lock.
    fn add_pending(&self, n: usize) {
        let now = self.pending.load(Ordering::Relaxed);
        self.pending.store(now + n, Ordering::Release);
    }

    /// The pending queue moved to the writer; the caller holds both locks.
    fn take_pending(&self) {
        let moved = self.pending.load(Ordering::Relaxed);
        let inflight = self.inflight.load(Ordering::Relaxed);
        self.inflight.store(inflight + moved, Ordering::SeqCst);
        self.pending.store(0, Ordering::SeqCst);
    }

    /// `n` bytes were written; returns the total left. The caller holds the writer lock.
    fn written(&self, n: usize) -> usize {
        let inflight = self.inflight.load(Ordering::Relaxed);
        self.inflight.store(inflight - n, Ordering::SeqCst);
        self.total()
    }

    /// Nothing is left queued: the send side finished (no push is admitted any more).
    fn clear(&self) {
        self.pending.store(0, Ordering::SeqCst);
        self.inflight.store(0, Ordering::SeqCst);
    }
}

struct Shared {
    pending: Mutex<Pending>,
    queued: Queued,
    /// Written messages go back to `sent_all` (see [`Outbox::set_hand_back`]).
    hand_back: AtomicBool,
    spare: Spare,
    /// An empty queue of entries with room, for `push_moved` to fill.
    spare_entries: Mutex<VecDeque<Entry>>,
    /// A push was refused since the last `drained`.
    refused: AtomicBool,
    /// See [`Outbox::set_write_in_place`].
    write_in_place: AtomicBool,
    writer: Mutex<Writer>,
    pump: PumpHandle,
    owner: Option<Owner>,
    options: SendOptions,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// The producer side of a [`SendTask`]: cloneable, usable from any thread, never blocks.
#[derive(Clone)]
pub struct Outbox {
    shared: Arc<Shared>,
}

impl Outbox {
    /// Queues a message to be written as one frame; returns at once.
    ///
    /// # Errors
    /// The message comes back in [`PushError::Full`] past the high water mark (backpressure, not
    /// loss), in [`PushError::TooLarge`] above the frame limit, and in [`PushError::Closed`] after
    /// close.
    pub fn push(&self, msg: Bytes) -> Result<(), PushError> {
        let (post, copied) = {
            let mut pending = lock(&self.shared.pending);
            let copied = self.admit(&mut pending, msg)?;
            (!std::mem::replace(&mut pending.scheduled, true), copied)
        };
        // A message copied into the queue is let go of outside the lock.
        drop(copied);
        if post {
            self.schedule();
        }
        Ok(())
    }

    /// Queues one frame whose payload is the concatenation of `parts`, written from the parts in
    /// place (one `writev` gathers them): a frame assembled around large shared buffers, such
    /// as a batch of deliveries of one payload to many peers, costs no copy. Returns at once.
    ///
    /// The frame counts as one message: `sent` hands it back (and `unsent` reports it) as one
    /// buffer holding the joined bytes, a copy when there are several parts. More than
    /// [`MAX_PARTS`] parts are joined into one buffer when queued.
    ///
    /// # Errors
    /// As [`push`](Self::push), with the joined bytes as the refused message.
    ///
    /// # Examples
    /// ```
    /// # use mixbus_task::{Bytes, Outbox, PushError};
    /// # fn demo(outbox: &Outbox, payload: Bytes) -> Result<(), PushError> {
    /// // One frame: a small header written before a payload shared with other frames.
    /// outbox.push_parts(vec![Bytes::from_static(b"header:"), payload])?;
    /// # Ok(())
    /// # }
    /// ```
    pub fn push_parts(&self, mut parts: Vec<Bytes>) -> Result<(), PushError> {
        if parts.len() > MAX_PARTS {
            parts = vec![join(&parts)];
        }
        let len = parts.iter().map(Bytes::len).sum();
        let post = {
            let mut pending = lock(&self.shared.pending);
            let high_water = self.shared.options.high_water_bytes;
            match self.room_for(&pending, len) {
                Ok(()) => {}
                Err(Refusal::TooLarge(max)) => {
                    return Err(PushError::TooLarge {
                        msg: join(&parts),
                        len,
                        max,
                    });
                }
                Err(Refusal::Closed) => return Err(PushError::Closed(join(&parts))),
                Err(Refusal::Full(queued)) => {
                    return Err(PushError::Full {
                        msg: join(&parts),
                        queued,
                        high_water,
                    });
                }
            }
            self.shared.queued.add_pending(HEADER_LEN + len);
            pending.queue.push_back(Entry::Parts(parts, len));
            !std::mem::replace(&mut pending.scheduled, true)
        };
        if post {
            self.schedule();
        }
        Ok(())
    }

    /// Queues a copy of one frame whose payload is `parts` joined: for a message encoded in
    /// pieces the caller keeps (a small head before a payload it does not own), copied once,
    /// straight into the queue's run of frames, instead of joined first and copied again.
    /// Returns at once.
    ///
    /// While nothing is handed back (see [`set_hand_back`](Self::set_hand_back)) a frame that
    /// fits a run is copied into the run at the back of the queue under the lock, as
    /// [`push_copies`](Self::push_copies) copies a few; otherwise the parts are joined into a
    /// buffer of its own and [`push`](Self::push)ed.
    ///
    /// ```
    /// # use mixbus_task::{Outbox, PushError};
    /// # fn demo(outbox: &Outbox, payload: &[u8]) -> Result<(), PushError> {
    /// outbox.push_copy_gathered(&[b"head:", payload])?; // one frame: "head:" then the payload
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    /// As [`push`](Self::push), with the joined bytes as the refused message.
    pub fn push_copy_gathered(&self, parts: &[&[u8]]) -> Result<(), PushError> {
        let len: usize = parts.iter().map(|p| p.len()).sum();
        if len < COPY_LIMIT && !self.shared.hand_back.load(Ordering::Relaxed) {
            let post = {
                let mut pending = lock(&self.shared.pending);
                match self.room_for(&pending, len) {
                    Ok(()) => {
                        self.shared.queued.add_pending(HEADER_LEN + len);
                        pending.copy_in_gathered(parts, len, &self.shared.spare);
                        Some(!std::mem::replace(&mut pending.scheduled, true))
                    }
                    // Refused: `push` below refuses it again and says why, with the bytes.
                    Err(_) => None,
                }
            };
            if let Some(post) = post {
                if post {
                    self.schedule();
                }
                return Ok(());
            }
        }
        self.push(Bytes::from(parts.concat()))
    }

    /// Queues messages from the front of `msgs`, in order, under one lock: the batched `push`.
    ///
    /// Returns how many were taken. It stops at the first message past the high water mark and
    /// leaves it and the rest in `msgs` (wait for [`SendEvents::drained`], then call again).
    ///
    /// # Errors
    /// [`PushError::TooLarge`] or [`PushError::Closed`] with the message that was refused, taken out
    /// of `msgs`; the messages before it were queued, those after it stay in `msgs`.
    pub fn push_all(&self, msgs: &mut VecDeque<Bytes>) -> Result<usize, PushError> {
        // The usual case: what the checks admit is made ready outside the pending lock, a run at
        // a time (small messages copied while nothing is handed back, others moved), and queued
        // under it in one step. The rest (a refusal, or a queue that changed meanwhile) is
        // decided under the lock, one message at a time.
        let copy = !self.shared.hand_back.load(Ordering::Relaxed);
        let mut copied = 0;
        while let Some(front) = msgs.front() {
            let n = if copy && front.len() < COPY_AT_PUSH_BELOW {
                self.push_copied(msgs)
            } else {
                self.push_moved(msgs, copy)
            };
            if n == 0 {
                break;
            }
            copied += n;
        }
        if msgs.is_empty() {
            return Ok(copied);
        }
        let (taken, post, result) = {
            let mut pending = lock(&self.shared.pending);
            let mut taken = copied + self.admit_run(&mut pending, msgs);
            let mut result = Ok(());
            while let Some(msg) = msgs.pop_front() {
                match self.admit(&mut pending, msg) {
                    Ok(_) => taken += 1,
                    Err(PushError::Full { msg, .. }) => {
                        msgs.push_front(msg);
                        break;
                    }
                    Err(other) => {
                        result = Err(other);
                        break;
                    }
                }
            }
            let post = taken > copied && !std::mem::replace(&mut pending.scheduled, true);
            (taken, post, result)
        };
        if post {
            self.schedule();
        }
        result.map(|()| taken)
    }

    /// Moves the longest run at the front of `msgs` that the queue admits and that is not to be
    /// copied into a queue of entries without holding the pending lock, then appends it under
    /// the lock in one step; returns how many were queued. Queues none, and puts them back, in
    /// the cases [`push_copied`](Self::push_copied) queues none.
    fn push_moved(&self, msgs: &mut VecDeque<Bytes>, copy: bool) -> usize {
        let queued = self.shared.queued.total();
        let (run, total) =
            self.admissible(msgs, queued, |msg| copy && msg.len() < COPY_AT_PUSH_BELOW);
        if run == 0 {
            return 0;
        }
        let mut entries = std::mem::take(&mut *lock(&self.shared.spare_entries));
        entries.extend(msgs.drain(..run).map(Entry::Msg));
        let post = {
            let mut pending = lock(&self.shared.pending);
            if pending.state != State::Open || self.shared.queued.total() > queued {
                drop(pending);
                while let Some(entry) = entries.pop_back() {
                    if let Entry::Msg(msg) = entry {
                        msgs.push_front(msg);
                    }
                }
                *lock(&self.shared.spare_entries) = entries;
                return 0;
            }
            self.shared.queued.add_pending(total);
            if pending.queue.is_empty() {
                std::mem::swap(&mut pending.queue, &mut entries);
            } else {
                pending.queue.append(&mut entries);
            }
            !std::mem::replace(&mut pending.scheduled, true)
        };
        *lock(&self.shared.spare_entries) = entries;
        if post {
            self.schedule();
        }
        run
    }

    /// Copies the longest run of small messages at the front of `msgs` that the queue admits into
    /// run buffers (see [`copy_frames`](Self::copy_frames)) and drops them; returns how many.
    fn push_copied(&self, msgs: &mut VecDeque<Bytes>) -> usize {
        let run = self.copy_frames(msgs.iter().map(|msg| &msg[..]), COPY_AT_PUSH_BELOW);
        msgs.drain(..run);
        run
    }

    /// Copies the longest run of payloads at the front of `msgs` that are shorter than `below`
    /// (at most [`COPY_LIMIT`]) and that the queue admits, header and payload, into run
    /// buffers without holding the pending lock, then queues the runs under it in one step;
    /// returns how many were queued.
    ///
    /// Queues none (and the caller takes the locked way) when the queue is not open or when the
    /// byte count rose meanwhile (another producer pushed): the checks were made against a count
    /// that only the writer may have lowered since, which can only admit more.
    fn copy_frames<'a>(&self, msgs: impl Iterator<Item = &'a [u8]>, below: usize) -> usize {
        let options = &self.shared.options;
        let queued = self.shared.queued.total();
        let mut total = 0;
        let mut run = 0;
        let mut runs = Vec::new();
        let mut current = self.shared.spare.take();
        // Checks and copies in one pass.
        for msg in msgs {
            let size = HEADER_LEN + msg.len();
            let after = queued + total;
            if msg.len() >= below
                || msg.len() > options.max_frame_len
                || (after > 0 && after + size > options.high_water_bytes)
            {
                break;
            }
            // A frame under `COPY_LIMIT` bytes always fits an empty run.
            if current.room() < size {
                runs.push(std::mem::replace(&mut current, self.shared.spare.take()));
            }
            current.push_frame(msg);
            total += size;
            run += 1;
        }
        runs.push(current);
        if run == 0 {
            self.shared.spare.put(runs);
            return 0;
        }
        let post = {
            let mut pending = lock(&self.shared.pending);
            if pending.state != State::Open || self.shared.queued.total() > queued {
                drop(pending);
                self.shared.spare.put(runs);
                return 0;
            }
            self.shared.queued.add_pending(total);
            pending.enqueue_runs(&mut runs, &self.shared.spare);
            !std::mem::replace(&mut pending.scheduled, true)
        };
        if post {
            self.schedule();
        }
        run
    }

    /// Queues copies of the messages at the front of `msgs`, in order: the batched `push` for
    /// payloads the caller keeps (a buffer it reuses, a slice of a larger one). Returns how many
    /// were taken; it stops at the high water mark (wait for [`SendEvents::drained`], then call
    /// again with the rest), and before a message it refuses when others were taken before it.
    ///
    /// While nothing is handed back (see [`set_hand_back`](Self::set_hand_back)), payloads that
    /// fit are copied, header and payload, straight into shared 64 KiB runs of frames, with no
    /// allocation and no handle per message: the cheapest way to send small messages. Otherwise
    /// each is copied into a buffer of its own, which is what comes back to `sent_all`.
    ///
    /// ```
    /// # use mixbus_task::{Outbox, PushError};
    /// # fn demo(outbox: &Outbox) -> Result<(), PushError> {
    /// let readings = [[1u8; 16], [2u8; 16], [3u8; 16]];
    /// let taken = outbox.push_copies(&readings)?;
    /// assert!(taken <= readings.len()); // the rest waits for `drained`
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    /// When the first message is refused: [`PushError::TooLarge`] or [`PushError::Closed`],
    /// holding a copy of it.
    pub fn push_copies<B: AsRef<[u8]>>(&self, msgs: &[B]) -> Result<usize, PushError> {
        let mut taken = 0;
        if !self.shared.hand_back.load(Ordering::Relaxed) {
            if msgs.len() <= COPY_FEW {
                taken = self.copy_few(msgs);
            }
            while taken < msgs.len() {
                let rest = msgs[taken..].iter().map(|msg| msg.as_ref());
                match self.copy_frames(rest, COPY_LIMIT) {
                    0 => break,
                    n => taken += n,
                }
            }
        }
        // The rest (large payloads, messages handed back, a full or closed queue): each copied
        // into a buffer of its own and pushed as a handle, a batch at a time.
        let mut batch = VecDeque::new();
        while taken < msgs.len() {
            batch.extend(
                msgs[taken..]
                    .iter()
                    .take(COPIES_PER_BATCH)
                    .map(|msg| Bytes::copy_from_slice(msg.as_ref())),
            );
            let offered = batch.len();
            match self.push_all(&mut batch) {
                Ok(n) => taken += n,
                Err(err) if taken == 0 && offered - batch.len() == 1 => return Err(err),
                Err(_) => return Ok(taken + offered - batch.len() - 1),
            }
            if !batch.is_empty() {
                break;
            }
        }
        Ok(taken)
    }

    /// The longest run at the front of `msgs` that fits the frame limit and the high water mark
    /// (with `queued` bytes already queued) and in which `stop` holds for none: how many
    /// messages, and their bytes on the wire. The writer only lowers the queued count, so a
    /// stale reading errs on the side of refusing, and `admit` decides those cases exactly.
    fn admissible(
        &self,
        msgs: &VecDeque<Bytes>,
        queued: usize,
        stop: impl Fn(&Bytes) -> bool,
    ) -> (usize, usize) {
        let options = &self.shared.options;
        let mut total = 0;
        let mut run = 0;
        for msg in msgs.iter() {
            let size = HEADER_LEN + msg.len();
            let after = queued + total;
            if stop(msg)
                || msg.len() > options.max_frame_len
                || (after > 0 && after + size > options.high_water_bytes)
            {
                break;
            }
            total += size;
            run += 1;
        }
        (run, total)
    }

    /// Queues, with one update of the byte count, the longest run at the front of `msgs` that
    /// passes every check of [`admit`](Self::admit) without a refusal; returns how many. The
    /// caller holds the pending lock and hands the rest to `admit`, one at a time.
    fn admit_run(&self, pending: &mut Pending, msgs: &mut VecDeque<Bytes>) -> usize {
        if pending.state != State::Open {
            return 0;
        }
        let (run, total) = self.admissible(msgs, self.shared.queued.total(), |_| false);
        if run == 0 {
            return 0;
        }
        self.shared.queued.add_pending(total);
        let copy = !self.shared.hand_back.load(Ordering::Relaxed);
        for msg in msgs.drain(..run) {
            pending.enqueue(msg, copy, &self.shared.spare);
        }
        run
    }

    /// Checks one message against the limits and queues it; the caller holds the pending lock.
    /// Returns the message if it was copied into the queue, to be dropped after the lock.
    fn admit(&self, pending: &mut Pending, msg: Bytes) -> Result<Option<Bytes>, PushError> {
        let high_water = self.shared.options.high_water_bytes;
        match self.room_for(pending, msg.len()) {
            Ok(()) => {}
            Err(Refusal::TooLarge(max)) => {
                return Err(PushError::TooLarge {
                    len: msg.len(),
                    max,
                    msg,
                });
            }
            Err(Refusal::Closed) => return Err(PushError::Closed(msg)),
            Err(Refusal::Full(queued)) => {
                return Err(PushError::Full {
                    msg,
                    queued,
                    high_water,
                });
            }
        }
        self.shared.queued.add_pending(HEADER_LEN + msg.len());
        let copy = !self.shared.hand_back.load(Ordering::Relaxed);
        Ok(pending.enqueue(msg, copy, &self.shared.spare))
    }

    /// Whether a message of `len` bytes may be queued now; the caller holds the pending lock
    /// and, if so, counts it.
    fn room_for(&self, pending: &Pending, len: usize) -> Result<(), Refusal> {
        let options = &self.shared.options;
        if len > options.max_frame_len {
            return Err(Refusal::TooLarge(options.max_frame_len));
        }
        if pending.state != State::Open {
            return Err(Refusal::Closed);
        }
        let queued = self.shared.queued.total();
        if queued > 0 && queued + HEADER_LEN + len > options.high_water_bytes {
            self.shared.refused.store(true, Ordering::SeqCst);
            // Bug fix: the writer lowers the queued bytes without the pending lock. If it fell
            // to the low water mark between the load above and the store of `refused`, the
            // writer saw no refusal and will not call `drained`: refusing now would leave the
            // producer waiting for ever. Re-check after raising the flag (both sides use
            // SeqCst, so either the writer sees the flag or this load sees its decrease). The
            // flag stays raised for earlier refusals; at worst a later `drained` is spurious.
            if self.shared.queued.total() > options.low_water_bytes {
                return Err(Refusal::Full(queued));
            }
        }
        Ok(())
    }

    /// Copies the first few of `msgs` into the run at the back of the queue under the pending
    /// lock, as `push` does for a small message: cheaper than
    /// [`copy_frames`](Self::copy_frames) for a handful of messages. Stops at the first that is
    /// too large to copy or is refused (the caller's general way decides it); returns how many
    /// were queued.
    fn copy_few<B: AsRef<[u8]>>(&self, msgs: &[B]) -> usize {
        let (taken, post) = {
            let mut pending = lock(&self.shared.pending);
            let mut taken = 0;
            for msg in msgs {
                let msg = msg.as_ref();
                if msg.len() >= COPY_LIMIT || self.room_for(&pending, msg.len()).is_err() {
                    break;
                }
                self.shared.queued.add_pending(HEADER_LEN + msg.len());
                pending.copy_in(msg, &self.shared.spare);
                taken += 1;
            }
            let post = taken > 0 && !std::mem::replace(&mut pending.scheduled, true);
            (taken, post)
        };
        if post {
            self.schedule();
        }
        taken
    }

    fn schedule(&self) {
        if self.shared.write_in_place.load(Ordering::Relaxed)
            && PumpHandle::on_any_pump_thread()
            && !self.shared.pump.is_pump_thread()
            && self.shared.pump.is_sleeping()
            && self.write_in_place()
        {
            return;
        }
        let task = SendTask {
            shared: self.shared.clone(),
        };
        let posted = match &self.shared.owner {
            Some(owner) => self.shared.pump.post_owned(owner, task),
            None => self.shared.pump.post(task),
        };
        if posted.is_err() {
            tracing::debug!("send task not scheduled: pump closed or owner killed");
        }
    }

    /// Writes what is queued from this thread, as the send task would, while the claim of
    /// [`schedule`](Self::schedule) is held (`scheduled` is set and no task is posted). Returns
    /// `true` if everything was written and the claim released; `false` if the send task must
    /// run for the rest: the writer was busy, a write was partial or failed, something must be
    /// reported to the events (messages handed back, a `drained` owed, the end of the stream),
    /// which only the owning pump may do, or this thread wrote its share.
    fn write_in_place(&self) -> bool {
        let shared = &*self.shared;
        if shared.hand_back.load(Ordering::Relaxed) {
            return false;
        }
        let Ok(mut writer) = shared.writer.try_lock() else {
            return false;
        };
        if writer.source.is_none() || !writer.inflight.is_empty() {
            return false;
        }
        let mut left = IN_PLACE_BYTES;
        loop {
            if writer.inflight.is_empty() {
                let mut pending = lock(&shared.pending);
                if pending.queue.is_empty() {
                    // A `drained` owed for a refusal is the task's to send.
                    let owed = shared.refused.load(Ordering::SeqCst);
                    if pending.state == State::Open && !owed {
                        pending.scheduled = false;
                        return true;
                    }
                    return false;
                }
                if left == 0 || pending.state != State::Open {
                    return false;
                }
                std::mem::swap(&mut pending.queue, &mut writer.inflight);
                shared.queued.take_pending();
            }
            // A partial write leaves the rest (and the wait for room) to the task; so does an
            // error, which the task meets again on its own write and reports.
            let Ok(n) = writer.write_batch() else {
                return false;
            };
            let whole = n > 0 && n == writer.gathered.1;
            if n > 0 {
                writer.stalled_since = None;
                writer.written_in_place(n, shared);
            }
            if !whole {
                return false;
            }
            left = left.saturating_sub(n);
        }
    }

    /// Lets a thread of another pump write what it pushes itself while this outbox's pump
    /// sleeps, instead of waking it to write (default off). Only plain pushes with nothing to
    /// hand back are written that way, and only while nothing else is owed to the events; the
    /// send task does the rest on its pump as before. A server that moves messages from
    /// connections on one pump to connections on another spares a wake-up per message when
    /// it is idle.
    pub fn set_write_in_place(&self, on: bool) {
        self.shared.write_in_place.store(on, Ordering::Relaxed);
    }

    /// Chooses whether written messages are handed back to [`SendEvents::sent_all`] (the
    /// default) or not.
    ///
    /// Handing back keeps every message pushed until it is written, to return that very
    /// handle. With it off, nothing is handed back: a small message (under 128 bytes) is copied,
    /// header and payload, into a buffer shared with the messages pushed around it and its
    /// handle is dropped at once, so the writer writes whole runs of frames with no work per
    /// message; larger messages are still written in place and dropped once written. Turn it
    /// off when `sent` would do nothing with the message, for speed.
    ///
    /// The choice applies to what is written from now on and to the form of what is pushed
    /// from now on: a message copied while it was off and written after it was turned on again
    /// comes back as a zero-copy slice of the shared buffer, equal to the one pushed but not the
    /// same handle, and so do copied messages reported unsent by [`SendEvents::finished`].
    ///
    /// # Examples
    /// ```
    /// use mixbus_task::{Bytes, SendEvents, SendOptions, SendOutcome, SendTask};
    /// use mixbus_task::pump::{Context, EventPump};
    /// use mixbus_task::pump::eventq::net::TcpStream;
    /// use std::io::Read;
    ///
    /// struct Quiet;
    /// impl SendEvents for Quiet {
    ///     fn sent(&mut self, _msg: Bytes, _cx: &mut Context<'_>) { unreachable!("not handed back") }
    ///     fn finished(&mut self, _outcome: &SendOutcome, _cx: &mut Context<'_>) {}
    /// }
    ///
    /// let pump = EventPump::new()?;
    /// let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    /// let stream = TcpStream::from_std(std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap()).unwrap();
    /// let (mut peer, _) = listener.accept().unwrap();
    /// let outbox = SendTask::start(&pump, stream, SendOptions::default(), None, Quiet)?;
    /// outbox.set_hand_back(false);
    /// outbox.push(Bytes::from_static(b"hi")).unwrap();
    /// outbox.push(Bytes::from_static(b"there")).unwrap();
    /// let mut wire = [0u8; 15];
    /// peer.read_exact(&mut wire).unwrap();
    /// assert_eq!(&wire, b"\0\0\0\x02hi\0\0\0\x05there");
    /// # Ok::<(), mixbus_task::pump::Error>(())
    /// ```
    pub fn set_hand_back(&self, on: bool) {
        self.shared.hand_back.store(on, Ordering::Relaxed);
    }

    /// Whether written messages are handed back (see [`set_hand_back`](Self::set_hand_back)).
    pub fn hands_back(&self) -> bool {
        self.shared.hand_back.load(Ordering::Relaxed)
    }

    /// Header and payload bytes queued and not yet written.
    pub fn queued_bytes(&self) -> usize {
        self.shared.queued.total()
    }

    /// Whether pushes are still accepted.
    pub fn is_open(&self) -> bool {
        lock(&self.shared.pending).state == State::Open
    }

    /// Stops accepting pushes and flushes what is queued for up to `linger`, then shuts the write
    /// half down; [`SendEvents::finished`] reports how it went. Returns false if already closing.
    ///
    /// [`CloseTask`](crate::CloseTask) does the same with a callback of its own.
    pub fn close(&self, linger: Duration) -> bool {
        self.close_with(linger, None)
    }

    pub(crate) fn close_with(&self, linger: Duration, hook: Option<CloseHook>) -> bool {
        // A linger too long to add to the clock (e.g. `Duration::MAX`) means "no limit"; the plain
        // addition panicked on the pump thread, so the close never reported.
        let now = Instant::now();
        let deadline = now
            .checked_add(linger)
            .unwrap_or_else(|| now + Duration::from_secs(86_400 * 365));
        let post = {
            let mut pending = lock(&self.shared.pending);
            if pending.state != State::Open {
                return false;
            }
            pending.state = State::Closing { deadline };
            pending.close_hook = hook;
            !std::mem::replace(&mut pending.scheduled, true)
        };
        if post {
            self.schedule();
        } else {
            // Bug fix: a send task already scheduled may be parked waiting for room with a timeout
            // taken from the write timeout alone (it computed it before this close set a linger
            // deadline), so a stalled peer kept the close waiting for the write timeout (30 s by
            // default) instead of the linger. A timer at the linger deadline ends it on time.
            self.schedule_linger_expiry(linger);
        }
        true
    }

    /// Posts a timer that reports `LingerExpired` if the send side is still closing, with
    /// frames left to write, once the linger deadline has passed.
    fn schedule_linger_expiry(&self, linger: Duration) {
        let shared = self.shared.clone();
        let expire = OnceTask::new("send-linger", move |cx: &mut Context<'_>| {
            let mut writer = lock(&shared.writer);
            let expired = {
                let pending = lock(&shared.pending);
                match pending.state {
                    // With nothing left to write, the send task reports `Flushed` itself.
                    State::Closing { deadline } => {
                        Instant::now() >= deadline
                            && !(writer.inflight.is_empty() && pending.queue.is_empty())
                    }
                    State::Open | State::Finished => false,
                }
            };
            if expired {
                finish(&shared, &mut writer, Outcome::LingerExpired, cx);
            }
        });
        let posted = match &self.shared.owner {
            Some(owner) => self
                .shared
                .pump
                .post_after_owned(owner, linger, expire)
                .map(drop)
                .map_err(drop),
            None => self
                .shared
                .pump
                .post_after(linger, expire)
                .map(drop)
                .map_err(drop),
        };
        if posted.is_err() {
            tracing::debug!("linger timer not posted: pump closed or owner killed");
        }
    }

    /// Stops the send side at once (from any thread): nothing more is written, the socket is shut
    /// down, and [`SendEvents::finished`] reports `Aborted` with every unsent message.
    pub fn abort(&self) {
        let shared = self.shared.clone();
        let run = OnceTask::new("send-abort", move |cx: &mut Context<'_>| {
            let mut writer = lock(&shared.writer);
            finish(&shared, &mut writer, Outcome::Aborted, cx);
        });
        // Unowned on purpose: the abort must run even when the owner is being killed.
        if self.shared.pump.post(run).is_err() {
            tracing::debug!("send abort not posted: pump closed");
        }
    }
}

impl fmt::Debug for Outbox {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Outbox")
            .field("queued_bytes", &self.queued_bytes())
            .finish_non_exhaustive()
    }
}

/// Writes the frames queued in its [`Outbox`] to a socket, many per vectored write.
///
/// Partial writes resume exactly where they stopped; each message is handed back through
/// [`SendEvents::sent`] once written (unless hand-back is off: see [`Outbox::set_hand_back`],
/// which makes small messages cheaper still); a peer that accepts nothing for longer than the write
/// timeout fails the task with that reason, and every unsent message is reported. The task runs
/// only while there is something to write: an idle send side costs nothing.
///
/// # Examples
/// ```
/// use mixbus_task::{Bytes, SendEvents, SendOptions, SendOutcome, SendTask, FrameDecoder};
/// use mixbus_task::pump::{Context, EventPump};
/// use mixbus_task::pump::eventq::net::TcpStream;
/// use std::io::Read;
///
/// struct Events(flume::Sender<Bytes>);
/// impl SendEvents for Events {
///     fn sent(&mut self, msg: Bytes, _cx: &mut Context<'_>) { self.0.send(msg).unwrap(); }
///     fn finished(&mut self, _outcome: &SendOutcome, _cx: &mut Context<'_>) {}
/// }
///
/// let pump = EventPump::new()?;
/// let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
/// let stream = TcpStream::from_std(std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap()).unwrap();
/// let (mut peer, _) = listener.accept().unwrap();
/// let (tx, rx) = flume::unbounded();
/// let outbox = SendTask::start(&pump, stream, SendOptions::default(), None, Events(tx))?;
/// outbox.push(Bytes::from_static(b"hello")).unwrap();
/// assert_eq!(rx.recv().unwrap(), "hello"); // handed back once written
/// let mut wire = [0u8; 9];
/// peer.read_exact(&mut wire).unwrap();
/// assert_eq!(&wire, b"\0\0\0\x05hello");
/// # Ok::<(), mixbus_task::pump::Error>(())
/// ```
pub struct SendTask {
    shared: Arc<Shared>,
}

impl SendTask {
    /// Registers `stream` (the write half of a connection) with `pump` and returns the outbox
    /// that feeds it. Work is posted for `owner` when given, so killing the owner stops it.
    ///
    /// # Errors
    /// [`crate::pump::Error`] if the registration fails.
    pub fn start(
        pump: &PumpHandle,
        stream: TcpStream,
        options: SendOptions,
        owner: Option<Owner>,
        events: impl SendEvents,
    ) -> crate::pump::Result<Outbox> {
        let source = pump.register(stream)?;
        let shared = Arc::new(Shared {
            pending: Mutex::new(Pending {
                queue: VecDeque::new(),
                scheduled: false,
                state: State::Open,
                close_hook: None,
            }),
            queued: Queued::default(),
            hand_back: AtomicBool::new(true),
            spare: Spare::default(),
            spare_entries: Mutex::new(VecDeque::new()),
            refused: AtomicBool::new(false),
            write_in_place: AtomicBool::new(false),
            writer: Mutex::new(Writer {
                source: Some(source),
                inflight: VecDeque::new(),
                offset: 0,
                done: VecDeque::new(),
                stalled_since: None,
                events: Box::new(events),
                scratch: Vec::with_capacity(64 * 1024),
                gathered: (0, 0),
            }),
            pump: pump.clone(),
            owner,
            options,
        });
        Ok(Outbox { shared })
    }
}

impl fmt::Debug for SendTask {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SendTask").finish_non_exhaustive()
    }
}

enum Outcome {
    Flushed,
    LingerExpired,
    Failed(io::Error),
    Aborted,
}

/// Ends the send side once: shuts the socket, collects what was not written, reports.
fn finish(shared: &Shared, writer: &mut Writer, outcome: Outcome, cx: &mut Context<'_>) {
    let Some(source) = writer.source.take() else {
        return; // Already finished.
    };
    let how = if matches!(outcome, Outcome::Flushed) {
        Shutdown::Write
    } else {
        Shutdown::Both
    };
    if let Err(err) = source.shutdown(how) {
        tracing::trace!(error = %err, "shutdown after send failed");
    }
    drop(source);
    let (rest, hook) = {
        let mut pending = lock(&shared.pending);
        pending.state = State::Finished;
        pending.scheduled = true; // Never schedule again.
        (
            std::mem::take(&mut pending.queue),
            pending.close_hook.take(),
        )
    };
    // Frames of a run the last write finished in part were written: they are handed back,
    // the rest of that run and everything after it are not.
    let offset = std::mem::take(&mut writer.offset);
    let hand_back = shared.hand_back.load(Ordering::Relaxed);
    let mut written = std::mem::take(&mut writer.done);
    let mut unsent: Vec<Bytes> = Vec::new();
    for (i, entry) in writer.inflight.drain(..).chain(rest).enumerate() {
        match entry {
            Entry::Msg(msg) => unsent.push(msg),
            Entry::Parts(parts, _) => unsent.push(join(&parts)),
            Entry::Run(run) => {
                let from = if i == 0 {
                    frames_end(run.frames(), offset)
                } else {
                    0
                };
                let run = run.into_bytes();
                if hand_back && from > 0 {
                    split_run(run.slice(..from), 0, &mut written);
                }
                split_run(run, from, &mut unsent);
            }
        }
    }
    shared.queued.clear();
    if !written.is_empty() {
        writer.events.sent_all(written.drain(..), cx);
    }
    let outcome = match outcome {
        Outcome::Flushed => SendOutcome::Flushed,
        Outcome::LingerExpired => SendOutcome::LingerExpired { unsent },
        Outcome::Failed(reason) => SendOutcome::Failed { reason, unsent },
        Outcome::Aborted => SendOutcome::Aborted { unsent },
    };
    match &outcome {
        SendOutcome::Flushed => tracing::debug!("send side flushed and shut down"),
        other => {
            tracing::debug!(unsent = other.unsent().len(), outcome = ?std::mem::discriminant(other), "send side ended")
        }
    }
    writer.events.finished(&outcome, cx);
    if let Some(hook) = hook {
        hook(&outcome, cx);
    }
}

#[derive(Clone, Copy)]
enum Piece {
    Scratch(usize, usize),
    Payload(usize, usize),
    Run(usize, usize),
    /// Part `.1` of the parts entry `.0`, from byte `.2`.
    Part(usize, usize, usize),
}

impl Writer {
    /// Gathers up to [`MAX_SLICES`] slices from the front of `inflight` and writes them once.
    ///
    /// A run of frames copied at push time is one slice. Other small frames are copied, header
    /// and payload, into one scratch buffer; consecutive copies make one slice, so a stream of
    /// small messages costs one `writev` per megabyte.
    fn write_batch(&mut self) -> io::Result<usize> {
        self.scratch.clear();
        let mut pieces = [Piece::Scratch(0, 0); MAX_SLICES];
        let mut count = 0;
        let mut bytes = 0;
        // Start of the scratch run not yet closed into a piece.
        let mut run: Option<usize> = None;
        let mut entries = 0;
        for (i, entry) in self.inflight.iter().enumerate() {
            // Each entry needs at most two more slices (a parts entry two per part and two
            // more), and an open run one more.
            let need = match entry {
                Entry::Parts(parts, _) => 2 * parts.len() + 2,
                _ => 2,
            };
            if count + usize::from(run.is_some()) + need > MAX_SLICES || bytes >= MAX_BATCH_BYTES {
                break;
            }
            entries += 1;
            let skip = if i == 0 { self.offset } else { 0 };
            bytes += entry.wire_len() - skip;
            let msg = match entry {
                Entry::Run(_) => {
                    if let Some(start) = run.take() {
                        pieces[count] = Piece::Scratch(start, self.scratch.len());
                        count += 1;
                    }
                    pieces[count] = Piece::Run(i, skip);
                    count += 1;
                    continue;
                }
                Entry::Parts(parts, len) => {
                    if skip < HEADER_LEN {
                        run.get_or_insert(self.scratch.len());
                        self.scratch.extend_from_slice(&encode_header(*len)[skip..]);
                    }
                    // Payload bytes of the frame already written, to skip.
                    let mut from = skip.saturating_sub(HEADER_LEN);
                    for (k, part) in parts.iter().enumerate() {
                        if from >= part.len() {
                            from -= part.len();
                            continue;
                        }
                        if part.len() < COPY_BELOW {
                            run.get_or_insert(self.scratch.len());
                            self.scratch.extend_from_slice(&part[from..]);
                        } else {
                            if let Some(start) = run.take() {
                                pieces[count] = Piece::Scratch(start, self.scratch.len());
                                count += 1;
                            }
                            pieces[count] = Piece::Part(i, k, from);
                            count += 1;
                        }
                        from = 0;
                    }
                    continue;
                }
                Entry::Msg(msg) => msg,
            };
            let from = skip.saturating_sub(HEADER_LEN);
            let copy = msg.len() < COPY_BELOW;
            if skip < HEADER_LEN || (copy && msg.len() > from) {
                run.get_or_insert(self.scratch.len());
            }
            if skip < HEADER_LEN {
                self.scratch
                    .extend_from_slice(&encode_header(msg.len())[skip..]);
            }
            if msg.len() > from {
                if copy {
                    self.scratch.extend_from_slice(&msg[from..]);
                } else {
                    if let Some(start) = run.take() {
                        pieces[count] = Piece::Scratch(start, self.scratch.len());
                        count += 1;
                    }
                    pieces[count] = Piece::Payload(i, from);
                    count += 1;
                }
            }
        }
        if let Some(start) = run {
            pieces[count] = Piece::Scratch(start, self.scratch.len());
            count += 1;
        }
        self.gathered = (entries, bytes);
        if bytes == 0 {
            return Ok(0);
        }
        let empty: &[u8] = &[];
        let mut slices = [IoSlice::new(empty); MAX_SLICES];
        for (slot, piece) in slices.iter_mut().zip(&pieces[..count]) {
            *slot = match *piece {
                Piece::Scratch(start, end) => IoSlice::new(&self.scratch[start..end]),
                Piece::Payload(i, from) | Piece::Run(i, from) => match &self.inflight[i] {
                    Entry::Msg(msg) => IoSlice::new(&msg[from..]),
                    Entry::Run(run) => IoSlice::new(&run.frames()[from..]),
                    Entry::Parts(..) => IoSlice::new(empty),
                },
                Piece::Part(i, k, from) => match &self.inflight[i] {
                    Entry::Parts(parts, _) => IoSlice::new(&parts[k][from..]),
                    _ => IoSlice::new(empty),
                },
            };
        }
        let source = self
            .source
            .as_ref()
            .ok_or_else(|| io::Error::new(io::ErrorKind::NotConnected, "send side finished"))?;
        (&**source).write_vectored(&slices[..count])
    }

    /// Accounts for `n` written bytes of the gathered batch: moves `offset` and returns the
    /// bytes freed and the entries at the front now written whole.
    fn consume(&mut self, mut n: usize) -> (usize, usize) {
        let (entries, bytes) = self.gathered;
        if n == bytes {
            // The whole batch went out (the usual case): no need to walk it again.
            self.offset = 0;
            return (n, entries);
        }
        let mut freed = 0;
        let mut finished = 0;
        for entry in self.inflight.iter() {
            if n == 0 {
                break;
            }
            let left = entry.wire_len() - self.offset;
            if n < left {
                self.offset += n;
                freed += n;
                break;
            }
            n -= left;
            freed += left;
            self.offset = 0;
            finished += 1;
        }
        (freed, finished)
    }

    /// Drops the first `finished` entries, written and not handed back: messages are dropped,
    /// runs go back to be filled again (one lock, and none when there is no run among them).
    fn recycle(&mut self, finished: usize, shared: &Shared) {
        let mut runs = self
            .inflight
            .drain(..finished)
            .filter_map(|entry| match entry {
                Entry::Run(run) => Some(run),
                Entry::Msg(_) | Entry::Parts(..) => None,
            })
            .peekable();
        if runs.peek().is_some() {
            shared.spare.put(runs);
        }
    }

    /// [`advance`](Self::advance) for a write made off the pump, with nothing handed back and
    /// no event sent: `n` bytes of the gathered batch went out.
    fn written_in_place(&mut self, n: usize, shared: &Shared) {
        let (freed, finished) = self.consume(n);
        self.recycle(finished, shared);
        shared.queued.written(freed);
    }

    /// Accounts `n` written bytes: pops finished entries and hands their messages back.
    fn advance(&mut self, n: usize, shared: &Shared, cx: &mut Context<'_>) {
        let (freed, finished) = self.consume(n);
        if finished > 0 {
            if shared.hand_back.load(Ordering::Relaxed) {
                for entry in self.inflight.drain(..finished) {
                    match entry {
                        Entry::Msg(msg) => self.done.push_back(msg),
                        Entry::Parts(parts, _) => self.done.push_back(join(&parts)),
                        // Copied while nothing was handed back, written now that it is.
                        Entry::Run(run) => split_run(run.into_bytes(), 0, &mut self.done),
                    }
                }
                self.events.sent_all(self.done.drain(..), cx);
            } else {
                self.recycle(finished, shared);
            }
        }
        // SeqCst pairs with `Outbox::push`: see the re-check there.
        let after = shared.queued.written(freed);
        if after <= shared.options.low_water_bytes && shared.refused.swap(false, Ordering::SeqCst) {
            self.events.drained(cx);
        }
    }
}

impl Task for SendTask {
    fn name(&self) -> &str {
        "send"
    }

    fn run(&mut self, cx: &mut Context<'_>) -> Next {
        let shared = &*self.shared;
        let mut writer = lock(&shared.writer);
        if writer.source.is_none() {
            return Next::Done;
        }
        loop {
            if writer.inflight.is_empty() {
                let mut pending = lock(&shared.pending);
                if pending.queue.is_empty() {
                    match pending.state {
                        State::Open => {
                            pending.scheduled = false;
                            drop(pending);
                            // A write made in place may have brought the queue below the low
                            // mark after a refusal, and left the event to this task.
                            if shared.queued.total() <= shared.options.low_water_bytes
                                && shared.refused.swap(false, Ordering::SeqCst)
                            {
                                writer.events.drained(cx);
                            }
                            return Next::Done;
                        }
                        State::Closing { .. } => {
                            drop(pending);
                            finish(shared, &mut writer, Outcome::Flushed, cx);
                            return Next::Done;
                        }
                        State::Finished => return Next::Done,
                    }
                }
                std::mem::swap(&mut pending.queue, &mut writer.inflight);
                shared.queued.take_pending();
            }
            match writer.write_batch() {
                Ok(0) => {
                    let err = io::Error::new(io::ErrorKind::WriteZero, "socket accepted no bytes");
                    finish(shared, &mut writer, Outcome::Failed(err), cx);
                    return Next::Done;
                }
                Ok(n) => {
                    writer.stalled_since = None;
                    writer.advance(n, shared, cx);
                    if cx.should_yield() {
                        return Next::Repost;
                    }
                }
                Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
                Err(err) if err.kind() == io::ErrorKind::WouldBlock => {
                    return self.wait(&mut writer, cx);
                }
                Err(err) => {
                    finish(shared, &mut writer, Outcome::Failed(err), cx);
                    return Next::Done;
                }
            }
        }
    }
}

impl SendTask {
    /// The socket is full: wait for room, bounded by the write timeout and the linger deadline.
    fn wait(&self, writer: &mut Writer, cx: &mut Context<'_>) -> Next {
        let shared = &*self.shared;
        let now = Instant::now();
        let stalled_since = *writer.stalled_since.get_or_insert(now);
        let stall_deadline = stalled_since + shared.options.write_timeout;
        let linger_deadline = match lock(&shared.pending).state {
            State::Closing { deadline } => Some(deadline),
            _ => None,
        };
        if cx.wake() == Wake::TimedOut || now >= stall_deadline {
            if linger_deadline.is_some_and(|d| now >= d) {
                finish(shared, writer, Outcome::LingerExpired, cx);
                return Next::Done;
            }
            if now >= stall_deadline {
                let stalled = now - stalled_since;
                let err = io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!("peer accepted no data for {stalled:?}"),
                );
                finish(shared, writer, Outcome::Failed(err), cx);
                return Next::Done;
            }
        }
        let deadline = linger_deadline.map_or(stall_deadline, |d| d.min(stall_deadline));
        let source = writer.source.as_ref().expect("checked at the start of run");
        source.wait(
            Interest::WRITABLE,
            Some(deadline.saturating_duration_since(now)),
        )
    }
}
