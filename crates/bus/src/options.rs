//! Subscription options: delivery mode, ack mode, ack wait, attempts, back-off, flow control.

use std::time::Duration;

use crate::error::{Error, Result};

/// Who receives a message matched by a subscription.
#[non_exhaustive]
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum DeliveryMode {
    /// Every broadcast subscription gets its own copy (the seed's "subscriber").
    #[default]
    Broadcast,
    /// Each message goes to exactly one member of the named group (the seed's "consumer").
    /// Members are the subscriptions with the same pattern and group name.
    Group(String),
}

/// When a delivery counts as done.
#[non_exhaustive]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum AckMode {
    /// Acknowledged when the handler returns `Ok`.
    #[default]
    Auto,
    /// Acknowledged by an explicit [`ack`](crate::Broker::ack); un-acked messages are delivered
    /// again after the ack wait.
    Manual,
}

/// The delay before a failed or nacked message is delivered again.
///
/// The delay for the re-delivery after attempt `n` is `initial * multiplier^(n-1)`, capped at `max`.
///
/// # Examples
///
/// ```
/// use std::time::Duration;
/// use mixbus_bus::Backoff;
/// let b = Backoff::exponential(Duration::from_millis(10), Duration::from_millis(50));
/// assert_eq!(b.delay(1), Duration::from_millis(10));
/// assert_eq!(b.delay(2), Duration::from_millis(20));
/// assert_eq!(b.delay(9), Duration::from_millis(50));
/// assert_eq!(Backoff::none().delay(3), Duration::ZERO);
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Backoff {
    /// The first delay.
    pub initial: Duration,
    /// The largest delay.
    pub max: Duration,
    /// The factor between two consecutive delays (1 for a fixed delay).
    pub multiplier: u32,
}

impl Default for Backoff {
    /// Exponential from 10 ms to 1 s.
    fn default() -> Self {
        Self::exponential(Duration::from_millis(10), Duration::from_secs(1))
    }
}

impl Backoff {
    /// No delay: re-deliver at once.
    pub const fn none() -> Self {
        Self {
            initial: Duration::ZERO,
            max: Duration::ZERO,
            multiplier: 1,
        }
    }

    /// The same delay every time.
    pub const fn fixed(delay: Duration) -> Self {
        Self {
            initial: delay,
            max: delay,
            multiplier: 1,
        }
    }

    /// A delay doubling from `initial` up to `max`.
    pub const fn exponential(initial: Duration, max: Duration) -> Self {
        Self {
            initial,
            max,
            multiplier: 2,
        }
    }

    /// The delay before re-delivering a message whose attempt `attempt` failed (attempts start at 1).
    pub fn delay(&self, attempt: u32) -> Duration {
        let exp = attempt.saturating_sub(1).min(31);
        let factor = self.multiplier.max(1).saturating_pow(exp);
        self.initial
            .saturating_mul(factor)
            .min(self.max.max(self.initial))
    }
}

/// How a subscription receives and acknowledges messages.
///
/// A plain struct with [`Default`] and consuming `with_*` methods.
///
/// # Examples
///
/// ```
/// use std::time::Duration;
/// use mixbus_bus::{AckMode, SubscribeOptions};
/// let opts = SubscribeOptions::group("workers")
///     .with_ack_mode(AckMode::Manual)
///     .with_ack_wait(Duration::from_secs(5))
///     .with_max_attempts(3);
/// assert_eq!(opts.max_attempts, 3);
/// ```
#[non_exhaustive]
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SubscribeOptions {
    /// Broadcast (default) or consumer group.
    pub mode: DeliveryMode,
    /// Auto (default) or manual acknowledgement.
    pub ack_mode: AckMode,
    /// How long a manually acknowledged delivery may stay un-acked before it is delivered again
    /// (default 30 s).
    pub ack_wait: Duration,
    /// Deliveries of one message before it goes to the dead-letter topic (default 5, at least 1).
    /// A handler error or panic, a nack with re-queue and an expired ack wait each use one attempt.
    pub max_attempts: u32,
    /// The delay before a failed or nacked message is delivered again.
    pub backoff: Backoff,
    /// The most deliveries this subscription holds at once: with manual ack, the un-acked
    /// deliveries (flow control); past it the subscription takes nothing new until an ack, nack or
    /// expired ack wait frees a slot. A subscription runs one handler at a time, so with auto ack
    /// at most one delivery is in flight. Default 65,536. Above 8,192 the window follows the
    /// acks: a subscription holds more than 8,192 only while it acks fast enough to get through
    /// what it holds within a quarter of its ack wait (so that a larger window never queues up
    /// work for a slow handler that would outlast the ack wait and come again), and while what
    /// it holds is under 1 MiB of payload (the growth is for small messages).
    pub max_in_flight: usize,
    /// Where messages go after `max_attempts`; `None` (default) means the broker's dead-letter
    /// prefix followed by the message's topic, e.g. `dead.orders.created`.
    pub dead_letter_topic: Option<String>,
}

impl Default for SubscribeOptions {
    fn default() -> Self {
        Self {
            mode: DeliveryMode::Broadcast,
            ack_mode: AckMode::Auto,
            ack_wait: Duration::from_secs(30),
            max_attempts: 5,
            backoff: Backoff::default(),
            max_in_flight: 65_536,
            dead_letter_topic: None,
        }
    }
}

impl SubscribeOptions {
    /// Broadcast delivery with default settings (the same as `default()`).
    pub fn broadcast() -> Self {
        Self::default()
    }

    /// A member of the consumer group `name`, with default settings.
    pub fn group(name: impl Into<String>) -> Self {
        Self::default().with_mode(DeliveryMode::Group(name.into()))
    }

    /// Sets the delivery mode.
    pub fn with_mode(mut self, mode: DeliveryMode) -> Self {
        self.mode = mode;
        self
    }

    /// Sets the ack mode.
    pub fn with_ack_mode(mut self, ack_mode: AckMode) -> Self {
        self.ack_mode = ack_mode;
        self
    }

    /// Shorthand for `with_ack_mode(AckMode::Manual)`.
    pub fn manual_ack(self) -> Self {
        self.with_ack_mode(AckMode::Manual)
    }

    /// Sets the ack wait.
    pub fn with_ack_wait(mut self, ack_wait: Duration) -> Self {
        self.ack_wait = ack_wait;
        self
    }

    /// Sets the maximum number of delivery attempts.
    pub fn with_max_attempts(mut self, max_attempts: u32) -> Self {
        self.max_attempts = max_attempts;
        self
    }

    /// Sets the back-off between attempts.
    pub fn with_backoff(mut self, backoff: Backoff) -> Self {
        self.backoff = backoff;
        self
    }

    /// Sets the maximum number of deliveries in flight.
    pub fn with_max_in_flight(mut self, max_in_flight: usize) -> Self {
        self.max_in_flight = max_in_flight;
        self
    }

    /// Sets the dead-letter topic.
    pub fn with_dead_letter_topic(mut self, topic: impl Into<String>) -> Self {
        self.dead_letter_topic = Some(topic.into());
        self
    }

    /// The consumer group name, if this is a group subscription.
    pub fn group_name(&self) -> Option<&str> {
        match &self.mode {
            DeliveryMode::Group(name) => Some(name),
            DeliveryMode::Broadcast => None,
        }
    }

    /// Checks that the options can work.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidOptions`] for zero attempts, zero in flight, a zero ack wait with manual
    /// ack, an empty group name or an invalid dead-letter topic.
    pub fn validate(&self) -> Result<()> {
        if self.max_attempts == 0 {
            return Err(Error::InvalidOptions("max_attempts must be at least 1"));
        }
        if self.max_in_flight == 0 {
            return Err(Error::InvalidOptions("max_in_flight must be at least 1"));
        }
        if self.ack_mode == AckMode::Manual && self.ack_wait.is_zero() {
            return Err(Error::InvalidOptions(
                "ack_wait must be above zero with manual ack",
            ));
        }
        if let DeliveryMode::Group(name) = &self.mode
            && (name.is_empty() || name.chars().any(char::is_whitespace))
        {
            return Err(Error::InvalidOptions(
                "group name must be non-empty, without spaces",
            ));
        }
        if let Some(topic) = &self.dead_letter_topic
            && crate::topic::validate_topic(topic).is_err()
        {
            return Err(Error::InvalidOptions(
                "dead_letter_topic is not a valid topic",
            ));
        }
        Ok(())
    }
}
