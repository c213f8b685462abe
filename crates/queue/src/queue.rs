//! [`MessageQueue`]: one framed, full-duplex connection, and the listener that hears from it.

use std::any::TypeId;
use std::collections::vec_deque::Drain;
use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, Weak};

use crate::config::QueueConfig;
use crate::error::{Error, Result, SendError};
use crate::task::pump::eventq::net::TcpStream;
use crate::task::pump::{Context, OnceTask, Owner, PumpHandle};
use crate::task::{
    Bytes, Flow, FrameError, Frames, Outbox, ReceiveEvents, ReceiveOutcome, ReceiveTask,
    SendEvents, SendOutcome, SendTask, TaskEvent,
};

static NEXT_QUEUE: AtomicU64 = AtomicU64::new(1);

/// Why a queue closed.
#[derive(Debug)]
#[non_exhaustive]
pub enum CloseReason {
    /// This side called [`MessageQueue::close`].
    Local,
    /// The peer closed (end of stream after its last whole message).
    PeerClosed,
    /// The peer broke the framing rules (for example: a frame above the maximum size).
    Protocol(FrameError),
    /// The connection failed: reset by the peer, a write stalled past the write timeout, the
    /// stream ended in the middle of a message.
    Failed(io::Error),
    /// `close` could not flush everything within the linger time.
    LingerExpired,
    /// The queue was dropped by every handle without a close.
    Dropped,
}

impl fmt::Display for CloseReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CloseReason::Local => f.write_str("closed by this side"),
            CloseReason::PeerClosed => f.write_str("closed by the peer"),
            CloseReason::Protocol(err) => write!(f, "protocol error: {err}"),
            CloseReason::Failed(err) => write!(f, "connection failed: {err}"),
            CloseReason::LingerExpired => f.write_str("linger time passed before the flush ended"),
            CloseReason::Dropped => f.write_str("dropped without a close"),
        }
    }
}

/// What [`QueueListener::closed`] learns: why, and which messages were never written.
#[derive(Debug)]
#[non_exhaustive]
pub struct CloseInfo {
    /// Why the queue closed.
    pub reason: CloseReason,
    /// Messages accepted by `send` that never reached the socket, in order. Small messages
    /// sent while the listener took nothing back (see [`QueueListener::sent_all`]) come back as
    /// equal copies, not as the handles sent.
    pub unsent: Vec<Bytes>,
}

/// Hears from a [`MessageQueue`], on the pump thread. Every method must return promptly (hand
/// slow work to a thread, for example through [`crate::BlockingQueue`]).
///
/// After `closed`, no method is called again.
pub trait QueueListener: Send + 'static {
    /// A whole message arrived; messages arrive in order, exactly once.
    fn received(&mut self, queue: &MessageQueue, msg: Bytes);

    /// Several whole messages that arrived together, in order, sharing one buffer. The default
    /// hands each to [`received`](Self::received) as a zero-copy [`Bytes`]; override it to read
    /// them in place ([`Frames::iter`]), which saves a reference count per message, or to pay a
    /// per-batch cost once. Either way each message is seen exactly once.
    fn received_frames(&mut self, queue: &MessageQueue, frames: &Frames) {
        for msg in frames.iter_bytes() {
            self.received(queue, msg);
        }
    }

    /// A message was written to the socket; it is handed back. In send order. The default does
    /// nothing with it.
    fn sent(&mut self, queue: &MessageQueue, _msg: Bytes) {
        queue
            .inner
            .default_ran(TypeId::of::<Self>(), Defaults::SENT);
    }

    /// Every message one write finished, in send order; the default hands each to
    /// [`sent`](Self::sent). Override it to pay a per-batch cost once.
    ///
    /// A listener that overrides neither this nor `sent` is seen to at its first write: from
    /// then on nothing is handed back (it would be dropped unseen), which lets the queue copy
    /// small messages, header and payload, into one buffer as they are sent and write them with
    /// no work per message. Replacing the listener starts over.
    fn sent_all(&mut self, queue: &MessageQueue, msgs: Drain<'_, Bytes>) {
        queue
            .inner
            .default_ran(TypeId::of::<Self>(), Defaults::SENT_ALL);
        for msg in msgs {
            self.sent(queue, msg);
        }
    }

    /// After a `send` was refused as full, the outbound queue fell below the low water mark.
    fn writable(&mut self, _queue: &MessageQueue) {}

    /// Whether to stop reading for now: flow control for a receiver that cannot keep up (a
    /// server whose queues are deep, say). Asked on the pump before each batch is delivered and
    /// before each read. While it returns true nothing more is delivered or read: the kernel's
    /// buffers fill and TCP makes the peer's writes wait, then its `send`s are refused as full.
    /// It is asked again about every millisecond ([`HOLD_RECHECK`](crate::task::HOLD_RECHECK)); a queue closing on
    /// this side is never held. The default never holds.
    ///
    /// Hold only what is safe to hold: a peer that must be read for the hold to end (one whose
    /// acknowledgements drain the deep queue) would wait for ever.
    fn hold_receiving(&mut self, _queue: &MessageQueue) -> bool {
        false
    }

    /// The peer broke the framing (a header announcing more than the maximum frame length): the
    /// queue stops reading and closes, with [`CloseReason::Protocol`]. Called once, before
    /// `closed`, while `send` still works: a message sent here (saying why, for example) goes
    /// out after everything queued before it, within the linger time.
    fn protocol_error(&mut self, _queue: &MessageQueue, _err: &FrameError) {}

    /// The queue closed; called exactly once.
    fn closed(&mut self, _queue: &MessageQueue, _info: CloseInfo) {}
}

struct Phase {
    /// The read half, until `set_listener` starts the receive side (or close drops it).
    read_half: Option<TcpStream>,
    recv_started: bool,
    recv_done: bool,
    recv_reason: Option<CloseReason>,
    send_done: Option<(Option<CloseReason>, Vec<Bytes>)>,
    local_close: bool,
    peer_closed: bool,
    closed: bool,
    /// Bug fix: a strong handle held from the end of the receive side until `closed` fired. The
    /// receive task's handle was the last one for a queue whose owner dropped its own (the usual
    /// `accepted` pattern); when it ended first, the queue was dropped before the send side
    /// finished, `SendSide` could no longer reach it, and `closed` never fired.
    keepalive: Option<MessageQueue>,
}

/// Which default hand-back methods of the listener's own type have run: when both have, the
/// listener overrides neither, and handing messages back to it does nothing. The default bodies
/// note their `Self` type, so a listener delegating to another listener's defaults is not
/// mistaken for one that has them itself.
struct Defaults {
    /// The listener's type.
    listener: Option<TypeId>,
    ran: u8,
}

impl Defaults {
    const SENT: u8 = 1;
    const SENT_ALL: u8 = 2;
}

pub(crate) struct Inner {
    id: u64,
    pump: PumpHandle,
    owner: Owner,
    outbox: Outbox,
    peer: SocketAddr,
    local: SocketAddr,
    config: QueueConfig,
    listener: Mutex<Option<Box<dyn QueueListener>>>,
    /// The next hand-back checks which defaults the listener has (changed under the listener
    /// lock).
    probing: AtomicBool,
    defaults: Mutex<Defaults>,
    phase: Mutex<Phase>,
    closed: AtomicBool,
}

impl Inner {
    /// A default hand-back method of `ty` ran (see [`Defaults`]).
    fn default_ran(&self, ty: TypeId, which: u8) {
        if self.probing.load(Ordering::Relaxed) {
            let mut defaults = lock(&self.defaults);
            if defaults.listener == Some(ty) {
                defaults.ran |= which;
            }
        }
    }
}

fn type_id_of<T: 'static>(_: &T) -> TypeId {
    TypeId::of::<T>()
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// One framed, full-duplex connection. Cloneable and `Send + Sync`: send from any thread.
///
/// Messages arrive whole, in order, exactly once, while the queue is open; reception starts when
/// a listener is set. [`MessageQueue::send`] never blocks: it queues the message, and the
/// listener's `sent` hands it back once written. The outbound queue is bounded in bytes: past
/// the high water mark `send` hands the message back in [`SendError::Full`] and `writable` says
/// when there is room again.
///
/// After [`MessageQueue::close`] no send is accepted; what was queued is flushed (up to the linger
/// time), then the connection is shut down. The peer receives every message sent before the close,
/// then its `closed`. `closed` fires exactly once on each side.
#[derive(Clone)]
pub struct MessageQueue {
    inner: Arc<Inner>,
}

impl MessageQueue {
    /// Wraps a connected stream: registers both halves with the pump.
    pub(crate) fn open(pump: &PumpHandle, config: &QueueConfig, stream: TcpStream) -> Result<Self> {
        let unknown = SocketAddr::from(([0, 0, 0, 0], 0));
        let peer = stream.peer_addr().map_err(|source| Error::Setup {
            peer: unknown,
            source,
        })?;
        let setup = |source| Error::Setup { peer, source };
        let local = stream.local_addr().map_err(setup)?;
        if let Err(err) = stream.set_nodelay(config.nodelay) {
            tracing::debug!(error = %err, "could not set TCP_NODELAY");
        }
        let read_half = stream.try_clone().map_err(setup)?;
        let id = NEXT_QUEUE.fetch_add(1, Ordering::Relaxed);
        let owner = pump.owner(format!("queue {id} {peer}"));
        let link = Arc::new(OnceLock::new());
        let outbox = SendTask::start(
            pump,
            stream,
            config.send_options(),
            Some(owner.clone()),
            SendSide { link: link.clone() },
        )?;
        let inner = Arc::new(Inner {
            id,
            pump: pump.clone(),
            owner,
            outbox,
            peer,
            local,
            config: config.clone(),
            listener: Mutex::new(None),
            probing: AtomicBool::new(false),
            defaults: Mutex::new(Defaults {
                listener: None,
                ran: 0,
            }),
            phase: Mutex::new(Phase {
                read_half: Some(read_half),
                recv_started: false,
                recv_done: false,
                recv_reason: None,
                send_done: None,
                local_close: false,
                peer_closed: false,
                closed: false,
                keepalive: None,
            }),
            closed: AtomicBool::new(false),
        });
        let _ = link.set(Arc::downgrade(&inner));
        tracing::debug!(conn.id = id, peer = %peer, "queue opened");
        Ok(MessageQueue { inner })
    }

    /// Sets the listener and starts receiving. Call it once, right after `accepted` or
    /// `connected` (later calls replace the listener).
    ///
    /// # Errors
    /// [`Error::Pump`] if the pump has shut down or the registration fails.
    pub fn set_listener(&self, listener: impl QueueListener) -> Result<()> {
        {
            let ty = type_id_of(&listener);
            let mut slot = lock(&self.inner.listener);
            *slot = Some(Box::new(listener));
            // Hand messages back until the first write shows whether this listener wants them.
            *lock(&self.inner.defaults) = Defaults {
                listener: Some(ty),
                ran: 0,
            };
            self.inner.probing.store(true, Ordering::Relaxed);
            self.inner.outbox.set_hand_back(true);
        }
        let read_half = {
            let mut phase = lock(&self.inner.phase);
            if phase.recv_started || phase.closed {
                return Ok(());
            }
            phase.recv_started = true;
            phase.read_half.take()
        };
        if let Some(read_half) = read_half {
            let task = ReceiveTask::new(
                &self.inner.pump,
                read_half,
                self.inner.config.max_frame_len,
                RecvSide {
                    queue: self.clone(),
                },
            )?;
            task.post_owned(&self.inner.pump, &self.inner.owner)
                .map_err(|_| Error::Pump(crate::task::pump::Error::Closed))?;
        }
        Ok(())
    }

    /// Queues `msg` to be sent; never blocks.
    ///
    /// # Errors
    /// The message comes back in [`SendError::Full`] past the high water mark (wait for
    /// [`QueueListener::writable`]), in [`SendError::TooLarge`] above the frame limit, and in
    /// [`SendError::Closed`] after close.
    pub fn send(&self, msg: impl Into<Bytes>) -> Result<(), SendError> {
        self.inner.outbox.push(msg.into())
    }

    /// Queues the messages at the front of `msgs` under one lock: `send` for many messages at once,
    /// the cheap way to send small messages fast. Returns how many were taken; it stops at the high
    /// water mark and leaves the rest in `msgs` (wait for [`QueueListener::writable`], then call
    /// again).
    ///
    /// # Errors
    /// [`SendError::TooLarge`] or [`SendError::Closed`] with the refused message, taken out of
    /// `msgs`; the messages before it were queued and those after it stay in `msgs`.
    pub fn send_all(
        &self,
        msgs: &mut std::collections::VecDeque<Bytes>,
    ) -> Result<usize, SendError> {
        self.inner.outbox.push_all(msgs)
    }

    /// Queues one message whose bytes are `parts` one after another, written from the parts in
    /// place (one `writev` gathers them, no copy): for a message assembled around large shared
    /// buffers, such as many deliveries of payloads also sent to other peers. The peer receives
    /// one message, as if the parts had been joined; never blocks.
    ///
    /// The queue treats it as one message: [`QueueListener::sent`] hands it back (and
    /// [`CloseInfo::unsent`](crate::CloseInfo) reports it) as one buffer of the joined bytes,
    /// a copy when there are several parts. Past [`MAX_PARTS`](crate::task::MAX_PARTS) parts
    /// they are joined when queued.
    ///
    /// # Errors
    /// As [`send`](Self::send), with the joined bytes as the refused message.
    pub fn send_parts(&self, parts: Vec<Bytes>) -> Result<(), SendError> {
        self.inner.outbox.push_parts(parts)
    }

    /// Queues copies of the messages at the front of `msgs`, in order, without taking them over:
    /// for payloads the caller keeps (a buffer it reuses, a slice of a larger one). Returns how
    /// many were taken; it stops at the high water mark (wait for [`QueueListener::writable`],
    /// then call again with the rest) and before a refused message when others were taken.
    ///
    /// When the listener takes nothing back (it overrides neither `sent` nor `sent_all`), each
    /// payload is copied with its header straight into a shared buffer of frames: no allocation
    /// and no handle per message, the fastest way to send small messages.
    ///
    /// ```
    /// use std::time::Duration;
    /// use mixbus_queue::{MessageQueue, QueueBroker, QueueConfig};
    /// use mixbus_queue::task::pump::EventPump;
    ///
    /// let pump = EventPump::new()?;
    /// let broker = QueueBroker::new(pump.handle(), QueueConfig::default());
    /// let (tx, rx) = flume::bounded(1);
    /// let addr = broker.bind("127.0.0.1:0".parse().unwrap(), move |q: MessageQueue| {
    ///     let _ = tx.send(q.into_blocking().unwrap());
    /// })?;
    /// let sender = broker.connect_blocking(addr)?;
    /// let receiver = rx.recv_timeout(Duration::from_secs(5)).unwrap();
    ///
    /// let mut reading = [0u8; 16];
    /// for i in 0..3u8 {
    ///     reading[0] = i; // one buffer, reused: each send takes a copy
    ///     assert_eq!(sender.send_copied(&[reading])?, 1);
    /// }
    /// let lines = ["one", "two", "three"];
    /// assert_eq!(sender.send_copied(&lines)?, 3);
    /// for i in 0..3u8 {
    ///     assert_eq!(receiver.recv_timeout(Duration::from_secs(5)).unwrap()[0], i);
    /// }
    /// for line in lines {
    ///     assert_eq!(receiver.recv_timeout(Duration::from_secs(5)).unwrap(), line);
    /// }
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    ///
    /// # Errors
    /// When the first message is refused: [`SendError::TooLarge`] above the frame limit or
    /// [`SendError::Closed`] after close, holding a copy of it.
    pub fn send_copied<B: AsRef<[u8]>>(&self, msgs: &[B]) -> Result<usize, SendError> {
        self.inner.outbox.push_copies(msgs)
    }

    /// Sends one message made of `parts` joined, copied once into the outbound queue: for a
    /// message encoded in pieces the caller keeps (a small head before a payload it does not
    /// own), with no joined buffer in between. Returns at once.
    ///
    /// ```no_run
    /// # use mixbus_queue::{MessageQueue, SendError};
    /// # fn demo(queue: &MessageQueue, payload: &[u8]) -> Result<(), SendError> {
    /// queue.send_copy_gathered(&[b"head:", payload])?; // one message: "head:" then the payload
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    /// As [`send`](Self::send), holding a copy of the joined message.
    pub fn send_copy_gathered(&self, parts: &[&[u8]]) -> Result<(), SendError> {
        self.inner.outbox.push_copy_gathered(parts)
    }

    /// Closes the queue: no more sends; what was queued is flushed (up to the linger time), then
    /// the connection is shut down and `closed` follows on both sides. Returns false if the queue
    /// was already closing.
    pub fn close(&self) -> bool {
        let drop_read = {
            let mut phase = lock(&self.inner.phase);
            if phase.local_close || phase.closed {
                return false;
            }
            phase.local_close = true;
            if phase.recv_started {
                None
            } else {
                // Nobody reads this queue: the receive side is done before it started.
                phase.recv_done = true;
                phase.read_half.take()
            }
        };
        drop(drop_read);
        self.inner.outbox.close(self.inner.config.linger)
    }

    /// Whether `closed` has fired.
    pub fn is_closed(&self) -> bool {
        self.inner.closed.load(Ordering::Acquire)
    }

    /// The peer's address.
    pub fn peer_addr(&self) -> SocketAddr {
        self.inner.peer
    }

    /// This end's address.
    pub fn local_addr(&self) -> SocketAddr {
        self.inner.local
    }

    /// Bytes queued to send and not yet written.
    pub fn queued_bytes(&self) -> usize {
        self.inner.outbox.queued_bytes()
    }

    /// Lets a thread of another pump write what it sends on this queue itself while the
    /// queue's pump sleeps, instead of waking that pump to write it (default off; see
    /// `Outbox::set_write_in_place` in the task layer). Sends of messages handed back to the
    /// listener's `sent` are never written that way.
    pub fn set_write_in_place(&self, on: bool) {
        self.inner.outbox.set_write_in_place(on);
    }

    /// A number unique to this queue in the process (used in logs as `conn.id`).
    pub fn id(&self) -> u64 {
        self.inner.id
    }

    /// The pump this queue runs on.
    pub fn pump(&self) -> &PumpHandle {
        &self.inner.pump
    }

    fn with_listener(&self, f: impl FnOnce(&mut dyn QueueListener, &MessageQueue)) {
        let mut listener = lock(&self.inner.listener);
        if let Some(listener) = listener.as_deref_mut() {
            f(listener, self);
        }
    }

    fn send_finished(&self, outcome: &SendOutcome, cx: &mut Context<'_>) {
        let (reason, unsent) = match outcome {
            SendOutcome::Flushed => (None, Vec::new()),
            SendOutcome::LingerExpired { unsent } => {
                (Some(CloseReason::LingerExpired), unsent.clone())
            }
            SendOutcome::Failed { reason, unsent } => (
                Some(CloseReason::Failed(io::Error::new(
                    reason.kind(),
                    reason.to_string(),
                ))),
                unsent.clone(),
            ),
            SendOutcome::Aborted { unsent } => (None, unsent.clone()),
            _ => (None, outcome.unsent().to_vec()),
        };
        let flushed = matches!(outcome, SendOutcome::Flushed);
        let wait_for_peer = {
            let mut phase = lock(&self.inner.phase);
            phase.send_done = Some((reason, unsent));
            if !flushed {
                // The connection is broken: stop reading too.
                phase.recv_done = true;
            }
            flushed && !phase.recv_done
        };
        if wait_for_peer {
            // Our half is shut; give the peer up to the linger time to close its half.
            let queue = self.clone();
            let linger = self.inner.config.linger;
            let _ = cx.handle().post_after_owned(
                &self.inner.owner,
                linger,
                OnceTask::new("queue-linger", move |cx: &mut Context<'_>| {
                    lock(&queue.inner.phase).recv_done = true;
                    queue.try_complete(cx);
                }),
            );
        }
        self.try_complete(cx);
    }

    fn recv_finished(&self, outcome: ReceiveOutcome, cx: &mut Context<'_>) {
        let reason = match outcome {
            ReceiveOutcome::Eof | ReceiveOutcome::Stopped => None,
            ReceiveOutcome::Truncated { buffered } => Some(CloseReason::Failed(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!("stream ended inside a message ({buffered} bytes buffered)"),
            ))),
            ReceiveOutcome::Protocol(err) => Some(CloseReason::Protocol(err)),
            ReceiveOutcome::Failed(err) => Some(CloseReason::Failed(err)),
            _ => None,
        };
        let failed = reason.is_some();
        let refused = matches!(reason, Some(CloseReason::Protocol(_)));
        if let Some(CloseReason::Protocol(err)) = &reason
            && let Some(l) = lock(&self.inner.listener).as_deref_mut()
        {
            l.protocol_error(self, err);
        }
        {
            let mut phase = lock(&self.inner.phase);
            phase.recv_done = true;
            if failed {
                phase.recv_reason = reason;
            } else {
                phase.peer_closed = true;
            }
            if phase.send_done.is_none() && !phase.closed {
                // Keep the queue alive until the send side reports (see `Phase::keepalive`).
                phase.keepalive = Some(self.clone());
            }
        }
        if failed && !refused {
            self.inner.outbox.abort();
        } else {
            // The peer is done sending, or broke the framing (the listener may have said why):
            // flush ours and close our half.
            self.inner.outbox.close(self.inner.config.linger);
        }
        self.try_complete(cx);
    }

    /// Fires `closed` once both halves are done.
    fn try_complete(&self, _cx: &mut Context<'_>) {
        let (info, _keepalive) = {
            let mut phase = lock(&self.inner.phase);
            if phase.closed || !phase.recv_done || phase.send_done.is_none() {
                return;
            }
            phase.closed = true;
            // Dropped at the end of this function, after the phase lock is released.
            let keepalive = phase.keepalive.take();
            let (send_reason, unsent) = phase.send_done.take().unwrap_or((None, Vec::new()));
            let reason = phase
                .recv_reason
                .take()
                .or(send_reason)
                .unwrap_or(if phase.local_close {
                    CloseReason::Local
                } else if phase.peer_closed {
                    CloseReason::PeerClosed
                } else {
                    CloseReason::Dropped
                });
            (CloseInfo { reason, unsent }, keepalive)
        };
        self.inner.closed.store(true, Ordering::Release);
        // Cancels whatever still waits for this connection (the receive side, the linger timer).
        self.inner.pump.kill(&self.inner.owner);
        tracing::debug!(conn.id = self.inner.id, peer = %self.inner.peer, reason = %info.reason, unsent = info.unsent.len(), "queue closed");
        let listener = lock(&self.inner.listener).take();
        if let Some(mut listener) = listener {
            listener.closed(self, info);
        }
    }
}

impl fmt::Debug for MessageQueue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MessageQueue")
            .field("id", &self.inner.id)
            .field("peer", &self.inner.peer)
            .field("closed", &self.is_closed())
            .finish_non_exhaustive()
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        if !self.closed.load(Ordering::Acquire) {
            // Nobody can hear from this queue any more: flush what is queued and let it go.
            self.outbox.close(self.config.linger);
        }
    }
}

struct SendSide {
    link: Arc<OnceLock<Weak<Inner>>>,
}

impl SendSide {
    fn queue(&self) -> Option<MessageQueue> {
        self.link
            .get()
            .and_then(Weak::upgrade)
            .map(|inner| MessageQueue { inner })
    }
}

impl SendEvents for SendSide {
    fn sent(&mut self, msg: Bytes, _cx: &mut Context<'_>) {
        if let Some(queue) = self.queue() {
            queue.with_listener(|l, q| l.sent(q, msg));
        }
    }

    fn sent_all(&mut self, msgs: Drain<'_, Bytes>, _cx: &mut Context<'_>) {
        // One lookup, one lock and one call for everything a write finished.
        if let Some(queue) = self.queue() {
            let mut listener = lock(&queue.inner.listener);
            if let Some(l) = listener.as_deref_mut() {
                let probing = queue.inner.probing.load(Ordering::Relaxed);
                l.sent_all(&queue, msgs);
                if probing {
                    // One call settles it: the default `sent_all` hands at least one message
                    // to `sent`.
                    queue.inner.probing.store(false, Ordering::Relaxed);
                    let ran = lock(&queue.inner.defaults).ran;
                    if ran == Defaults::SENT | Defaults::SENT_ALL {
                        tracing::debug!(
                            conn.id = queue.inner.id,
                            "listener takes no message back: copying small messages at send"
                        );
                        queue.inner.outbox.set_hand_back(false);
                    }
                }
            }
        }
    }

    fn drained(&mut self, _cx: &mut Context<'_>) {
        if let Some(queue) = self.queue() {
            queue.with_listener(|l, q| l.writable(q));
        }
    }

    fn finished(&mut self, outcome: &SendOutcome, cx: &mut Context<'_>) {
        if let Some(queue) = self.queue() {
            queue.send_finished(outcome, cx);
        }
    }
}

struct RecvSide {
    queue: MessageQueue,
}

impl ReceiveEvents for RecvSide {
    fn received(&mut self, frame: Bytes, _cx: &mut Context<'_>) -> Flow {
        let mut listener = lock(&self.queue.inner.listener);
        match listener.as_deref_mut() {
            Some(l) => {
                l.received(&self.queue, frame);
                Flow::Continue
            }
            None => Flow::Stop,
        }
    }

    fn received_frames(&mut self, frames: &Frames, _cx: &mut Context<'_>) -> Flow {
        // One lock for the whole batch.
        let mut listener = lock(&self.queue.inner.listener);
        match listener.as_deref_mut() {
            Some(l) => {
                l.received_frames(&self.queue, frames);
                Flow::Continue
            }
            None => Flow::Stop,
        }
    }

    fn hold(&mut self, _cx: &mut Context<'_>) -> bool {
        if lock(&self.queue.inner.phase).local_close {
            return false;
        }
        let mut listener = lock(&self.queue.inner.listener);
        listener
            .as_deref_mut()
            .is_some_and(|l| l.hold_receiving(&self.queue))
    }

    fn finished(&mut self, outcome: ReceiveOutcome, cx: &mut Context<'_>) {
        self.queue.recv_finished(outcome, cx);
    }
}
