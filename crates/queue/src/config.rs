//! [`QueueConfig`]: every setting of a broker and its queues, with defaults.

use std::time::Duration;

use crate::task::{ConnectOptions, DEFAULT_MAX_FRAME_LEN, SendOptions};

/// Settings of a [`crate::QueueBroker`] and the queues it makes. Plain data with defaults;
/// change it with the `with_*` methods.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct QueueConfig {
    /// Largest message accepted either way (default 16 MiB). A larger `send` is refused; a peer
    /// announcing a larger frame is disconnected with a protocol error.
    pub max_frame_len: usize,
    /// Outbound bytes queued past which `send` hands the message back (default 8 MiB).
    pub high_water_bytes: usize,
    /// After a refusal, `writable` is called once the queue falls below this (default 4 MiB).
    pub low_water_bytes: usize,
    /// How long `connect` keeps retrying while nothing listens (default 5 s).
    pub connect_timeout: Duration,
    /// First pause between connect attempts (default 10 ms), doubling up to `connect_backoff_max`.
    pub connect_backoff: Duration,
    /// Longest pause between connect attempts (default 500 ms).
    pub connect_backoff_max: Duration,
    /// A peer that accepts no byte for this long while messages wait is disconnected (default 30 s).
    pub write_timeout: Duration,
    /// How long `close` keeps flushing and waits for the peer's close (default 5 s).
    pub linger: Duration,
    /// `TCP_NODELAY` on every connection (default true: small messages leave at once).
    pub nodelay: bool,
}

impl Default for QueueConfig {
    fn default() -> Self {
        QueueConfig {
            max_frame_len: DEFAULT_MAX_FRAME_LEN,
            high_water_bytes: 8 << 20,
            low_water_bytes: 4 << 20,
            connect_timeout: Duration::from_secs(5),
            connect_backoff: Duration::from_millis(10),
            connect_backoff_max: Duration::from_millis(500),
            write_timeout: Duration::from_secs(30),
            linger: Duration::from_secs(5),
            nodelay: true,
        }
    }
}

impl QueueConfig {
    /// Sets the largest message accepted.
    #[must_use]
    pub fn with_max_frame_len(mut self, max: usize) -> Self {
        self.max_frame_len = max;
        self
    }

    /// Sets the outbound water marks (the low mark is kept at or below the high one).
    #[must_use]
    pub fn with_water_marks(mut self, high_bytes: usize, low_bytes: usize) -> Self {
        self.high_water_bytes = high_bytes;
        self.low_water_bytes = low_bytes.min(high_bytes);
        self
    }

    /// Sets the connect timeout.
    #[must_use]
    pub fn with_connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// Sets the connect back-off range.
    #[must_use]
    pub fn with_connect_backoff(mut self, initial: Duration, max: Duration) -> Self {
        self.connect_backoff = initial;
        self.connect_backoff_max = max.max(initial);
        self
    }

    /// Sets the write-stall timeout.
    #[must_use]
    pub fn with_write_timeout(mut self, timeout: Duration) -> Self {
        self.write_timeout = timeout;
        self
    }

    /// Sets the linger time of `close`.
    #[must_use]
    pub fn with_linger(mut self, linger: Duration) -> Self {
        self.linger = linger;
        self
    }

    /// Sets `TCP_NODELAY`.
    #[must_use]
    pub fn with_nodelay(mut self, nodelay: bool) -> Self {
        self.nodelay = nodelay;
        self
    }

    pub(crate) fn send_options(&self) -> SendOptions {
        SendOptions::default()
            .with_write_timeout(self.write_timeout)
            .with_water_marks(self.high_water_bytes, self.low_water_bytes)
            .with_max_frame_len(self.max_frame_len)
    }

    pub(crate) fn connect_options(&self) -> ConnectOptions {
        ConnectOptions::default()
            .with_connect_timeout(self.connect_timeout)
            .with_backoff(self.connect_backoff, self.connect_backoff_max)
    }
}
