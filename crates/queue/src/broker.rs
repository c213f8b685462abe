//! [`QueueBroker`]: binds, unbinds and connects, and hands out [`MessageQueue`]s.

use std::collections::HashMap;
use std::fmt;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use crate::config::QueueConfig;
use crate::error::{Error, Result};
use crate::queue::MessageQueue;
use crate::task::pump::eventq::net::TcpListener;
use crate::task::pump::{Owner, PumpHandle};
use crate::task::{AcceptTask, ConnectError, ConnectTask, TaskEvent};

/// Hears of each connection a bound address accepts, on the broker's pump thread. Must return
/// promptly.
///
/// Implemented for closures `FnMut(MessageQueue)`.
pub trait AcceptListener: Send + 'static {
    /// A connection was accepted; set its listener to start receiving.
    fn accepted(&mut self, queue: MessageQueue);
}

impl<F: FnMut(MessageQueue) + Send + 'static> AcceptListener for F {
    fn accepted(&mut self, queue: MessageQueue) {
        self(queue)
    }
}

/// Hears how a `connect` ended: exactly one of its methods is called, once, on the pump thread.
pub trait ConnectListener: Send + 'static {
    /// The connection is up; set the queue's listener to start receiving.
    fn connected(self, queue: MessageQueue);
    /// Nothing answered before the connect timeout, or the connection could not be set up.
    fn refused(self, reason: Error);
}

/// The queue broker: binds addresses (accepting every connection on them), connects to others,
/// and turns each connection into a [`MessageQueue`]. All of it runs on one event pump, unless
/// [`with_connection_pumps`](Self::with_connection_pumps) spreads the connections over several.
///
/// # Examples
/// ```
/// use std::time::Duration;
/// use mixbus_queue::{MessageQueue, QueueBroker, QueueConfig, QueueListener};
/// use mixbus_queue::task::{Bytes, pump::EventPump};
///
/// struct Echo;
/// impl QueueListener for Echo {
///     fn received(&mut self, queue: &MessageQueue, msg: Bytes) {
///         let _ = queue.send(msg);
///     }
/// }
///
/// let pump = EventPump::new()?;
/// let broker = QueueBroker::new(pump.handle(), QueueConfig::default());
/// let addr = broker.bind("127.0.0.1:0".parse().unwrap(), |queue: MessageQueue| {
///     queue.set_listener(Echo).unwrap();
/// })?;
/// let client = broker.connect_blocking(addr)?.into_blocking()?;
/// client.send_timeout("ping", Duration::from_secs(5)).unwrap();
/// assert_eq!(client.recv_timeout(Duration::from_secs(5)).unwrap(), "ping");
/// # Ok::<(), mixbus_queue::Error>(())
/// ```
#[derive(Clone)]
pub struct QueueBroker {
    pump: PumpHandle,
    config: QueueConfig,
    bound: Arc<Mutex<HashMap<SocketAddr, Owner>>>,
    spread: Spread,
}

/// Where new connections run: on `pumps` in turn, or on `own` when there are none.
#[derive(Clone)]
struct Spread {
    own: PumpHandle,
    pumps: Arc<[PumpHandle]>,
    next: Arc<AtomicUsize>,
}

impl Spread {
    /// The pump the next connection runs on.
    fn next(&self) -> &PumpHandle {
        match self.pumps.len() {
            0 => &self.own,
            n => &self.pumps[self.next.fetch_add(1, Ordering::Relaxed) % n],
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl QueueBroker {
    /// A broker whose connections run on `pump`, with `config` for every queue it makes.
    pub fn new(pump: PumpHandle, config: QueueConfig) -> QueueBroker {
        QueueBroker {
            spread: Spread {
                own: pump.clone(),
                pumps: Arc::from(Vec::new()),
                next: Arc::new(AtomicUsize::new(0)),
            },
            pump,
            config,
            bound: Arc::new(Mutex::new(HashMap::new())),
        }
    }

    /// Runs the connections this broker accepts and makes on `pumps`, one after another in
    /// turn, instead of on its own pump (which keeps accepting and connecting): one pump per
    /// core lets a server's connections use them all. Each queue's listener runs on its
    /// connection's pump. An empty list keeps everything on the broker's pump.
    pub fn with_connection_pumps(mut self, pumps: Vec<PumpHandle>) -> QueueBroker {
        self.spread.pumps = Arc::from(pumps);
        self
    }

    /// The settings of this broker's queues.
    pub fn config(&self) -> &QueueConfig {
        &self.config
    }

    /// The pump this broker runs on.
    pub fn pump(&self) -> &PumpHandle {
        &self.pump
    }

    /// Listens on `addr` and keeps accepting: `listener.accepted(queue)` for each connection.
    /// Returns the bound address (with the real port when `addr` has port 0).
    ///
    /// # Errors
    /// [`Error::Bind`] if the address is already bound (by this broker or anyone else) or cannot be
    /// bound; [`Error::Pump`] if the pump has shut down.
    pub fn bind(&self, addr: SocketAddr, listener: impl AcceptListener) -> Result<SocketAddr> {
        let tcp = TcpListener::bind(addr).map_err(|source| Error::Bind { addr, source })?;
        let local = tcp.local_addr().map_err(|source| Error::Bind {
            addr,
            source: crate::task::pump::eventq::Error::Bind { addr, source },
        })?;
        let owner = self.pump.owner(format!("accept {local}"));
        let spread = self.spread.clone();
        let config = self.config.clone();
        let mut listener = listener;
        let task =
            AcceptTask::new(
                &self.pump,
                tcp,
                move |stream, peer, _cx| match MessageQueue::open(spread.next(), &config, stream) {
                    Ok(queue) => listener.accepted(queue),
                    Err(err) => {
                        tracing::warn!(peer = %peer, error = %err, "accepted connection dropped")
                    }
                },
            )?;
        task.post_owned(&self.pump, &owner)
            .map_err(|_| Error::Pump(crate::task::pump::Error::Closed))?;
        lock(&self.bound).insert(local, owner);
        tracing::info!(addr = %local, "bound");
        Ok(local)
    }

    /// Stops accepting on `addr` (as returned by `bind`) and closes the listening socket. Queues
    /// already accepted stay open.
    ///
    /// # Errors
    /// [`Error::NotBound`] if this broker does not listen on `addr`.
    pub fn unbind(&self, addr: SocketAddr) -> Result<()> {
        let owner = lock(&self.bound)
            .remove(&addr)
            .ok_or(Error::NotBound(addr))?;
        self.pump.kill(&owner);
        tracing::info!(addr = %addr, "unbound");
        Ok(())
    }

    /// The addresses this broker listens on.
    pub fn bound(&self) -> Vec<SocketAddr> {
        lock(&self.bound).keys().copied().collect()
    }

    /// Connects to `addr` without blocking: exactly one of `listener.connected(queue)` or
    /// `listener.refused(reason)` follows. While nothing listens yet, it waits and retries up to the
    /// connect timeout (a rendez-vous), then is refused.
    ///
    /// # Errors
    /// [`Error::Pump`] if the pump has shut down (the listener is then not called).
    pub fn connect(&self, addr: SocketAddr, listener: impl ConnectListener) -> Result<()> {
        let spread = self.spread.clone();
        let config = self.config.clone();
        let task = ConnectTask::new(
            addr,
            self.config.connect_options(),
            move |result: std::result::Result<_, ConnectError>, _cx| match result {
                Ok(stream) => match MessageQueue::open(spread.next(), &config, stream) {
                    Ok(queue) => listener.connected(queue),
                    Err(err) => listener.refused(err),
                },
                Err(err) => listener.refused(Error::Refused(err)),
            },
        );
        task.post(&self.pump)
            .map_err(|_| Error::Pump(crate::task::pump::Error::Closed))
    }

    /// Connects and waits for the outcome (from a thread that is not the pump's).
    ///
    /// # Errors
    /// [`Error::Refused`] after the connect timeout, or whatever [`QueueBroker::connect`] reports.
    pub fn connect_blocking(&self, addr: SocketAddr) -> Result<MessageQueue> {
        let (tx, rx) = flume::bounded(1);
        self.connect(addr, Rendezvous(tx))?;
        let wait = self.config.connect_timeout + Duration::from_secs(5);
        rx.recv_timeout(wait)
            .map_err(|_| Error::ConnectTimeout(wait))?
    }
}

struct Rendezvous(flume::Sender<Result<MessageQueue>>);

impl ConnectListener for Rendezvous {
    fn connected(self, queue: MessageQueue) {
        let _ = self.0.send(Ok(queue));
    }
    fn refused(self, reason: Error) {
        let _ = self.0.send(Err(reason));
    }
}

impl fmt::Debug for QueueBroker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("QueueBroker")
            .field("bound", &self.bound())
            .field("config", &self.config)
            .finish()
    }
}
