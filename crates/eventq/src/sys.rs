//! The owning registration: the only place that touches `polling`'s `unsafe` registration.
//!
//! `polling::Poller::add` is `unsafe` because a source must be deleted from the poller before it is
//! closed. [`Registration`] keeps that promise for every user: it owns the source, so the source
//! cannot be closed while it is registered, and it deletes the source from the poller in `Drop`
//! before the source itself is dropped. Only types that own their descriptor and cannot swap it
//! through a shared reference may be registered (the sealed [`Source`] trait), so a `&S` handed out
//! by `Deref` cannot be used to close the descriptor either.

use std::fmt;
use std::ops::Deref;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd};
use std::sync::Arc;

use crate::poll::{Interest, Token};
use crate::{Error, Result};

mod private {
    /// Seals [`super::Source`]: users may name it but not implement it.
    pub trait Sealed {}
}

/// A source of readiness events that can be registered with a [`crate::Registry`].
///
/// Implemented for the sockets of [`crate::net`], for `std::net` sockets and for
/// [`std::os::fd::OwnedFd`]: types that own their descriptor and never close or replace it while a
/// shared reference to them exists. The trait is sealed so that this stays true.
pub trait Source: AsFd + private::Sealed {}

macro_rules! source {
    ($($ty:ty),* $(,)?) => {$(
        impl private::Sealed for $ty {}
        impl Source for $ty {}
    )*};
}

source!(
    crate::net::TcpStream,
    crate::net::TcpListener,
    std::net::TcpStream,
    std::net::TcpListener,
    std::net::UdpSocket,
    std::os::unix::net::UnixStream,
    std::os::unix::net::UnixListener,
    std::os::fd::OwnedFd,
);

pub(crate) fn mode(poller: &polling::Poller) -> polling::PollMode {
    if poller.supports_edge() {
        polling::PollMode::Edge
    } else {
        polling::PollMode::Level
    }
}

/// Tokens at or above this are the poll's own: `polling`'s notifier (`usize::MAX`) and the
/// wakers' descriptor (`usize::MAX - 1`).
const FIRST_RESERVED: usize = usize::MAX - 1;

/// Refuses a token the poll keeps for itself.
pub(crate) fn check_token(token: Token, op: &'static str) -> Result<()> {
    if token.0 >= FIRST_RESERVED {
        return Err(Error::Register {
            op,
            token,
            source: std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                "tokens usize::MAX and usize::MAX - 1 are reserved",
            ),
        });
    }
    Ok(())
}

pub(crate) fn to_polling(token: Token, interest: Interest) -> polling::Event {
    let mut ev = polling::Event::none(token.0);
    ev.readable = interest.is_readable();
    ev.writable = interest.is_writable();
    ev
}

/// A source registered with a poller; deregisters it when dropped.
///
/// Returned by [`crate::Registry::register`]. It dereferences to the source, so reading and writing
/// go through `&S` (for example `(&*registration).read(..)` on a [`crate::net::TcpStream`]).
/// Events are edge-triggered where the platform supports it: after an event, read or write until
/// the operation returns [`std::io::ErrorKind::WouldBlock`], then wait again.
pub struct Registration<S: Source> {
    // Always `Some` until `into_inner` takes it; `Drop` deregisters whatever is still here.
    source: Option<S>,
    poller: Arc<polling::Poller>,
    token: Token,
}

impl<S: Source> Registration<S> {
    pub(crate) fn new(
        poller: Arc<polling::Poller>,
        source: S,
        token: Token,
        interest: Interest,
    ) -> Result<Self> {
        let mode = mode(&poller);
        // SAFETY: the source is moved into the returned `Registration`, which owns it until `Drop`
        // (or `into_inner`) deletes it from this same poller. `Source` is sealed and implemented
        // only for types that own their descriptor and cannot close it through `&self`, so the
        // descriptor stays open for as long as it is registered. On error nothing was added.
        unsafe {
            poller.add_with_mode(
                source.as_fd().as_raw_fd(),
                to_polling(token, interest),
                mode,
            )
        }
        .map_err(|source| Error::Register {
            op: "register",
            token,
            source,
        })?;
        Ok(Registration {
            source: Some(source),
            poller,
            token,
        })
    }

    /// The token events of this source carry.
    pub fn token(&self) -> Token {
        self.token
    }

    /// Changes the token and interest of this source.
    ///
    /// Re-registering also re-arms readiness: if the source is already ready for the new interest,
    /// the next poll reports it.
    ///
    /// # Errors
    /// [`Error::Register`] if the operating system refuses, or for a reserved token (see
    /// [`Registry::register`](crate::Registry::register)).
    pub fn reregister(&mut self, token: Token, interest: Interest) -> Result<()> {
        check_token(token, "reregister")?;
        self.rearm_token(token, interest)?;
        self.token = token;
        Ok(())
    }

    /// Re-arms this source with `interest`, keeping its token; works through a shared reference.
    ///
    /// If the source is already ready for `interest`, the next poll reports it, so a caller that
    /// saw `WouldBlock` can re-arm and wait without missing an edge.
    ///
    /// # Errors
    /// [`Error::Register`] if the operating system refuses.
    pub fn rearm(&self, interest: Interest) -> Result<()> {
        self.rearm_token(self.token, interest)
    }

    fn rearm_token(&self, token: Token, interest: Interest) -> Result<()> {
        let mode = mode(&self.poller);
        self.poller
            .modify_with_mode(self.fd(), to_polling(token, interest), mode)
            .map_err(|source| Error::Register {
                op: "reregister",
                token,
                source,
            })
    }

    /// Deregisters the source and gives it back.
    ///
    /// # Errors
    /// [`Error::Register`] if the operating system refuses; the source is closed in that case.
    pub fn into_inner(mut self) -> Result<S> {
        let source = self
            .source
            .take()
            .expect("a registration always holds its source");
        match self.poller.delete(source.as_fd()) {
            Ok(()) => Ok(source),
            Err(err) => Err(Error::Register {
                op: "deregister",
                token: self.token,
                source: err,
            }),
        }
    }

    fn get(&self) -> &S {
        self.source
            .as_ref()
            .expect("a registration always holds its source")
    }

    fn fd(&self) -> BorrowedFd<'_> {
        self.get().as_fd()
    }
}

impl<S: Source> Deref for Registration<S> {
    type Target = S;
    fn deref(&self) -> &S {
        self.get()
    }
}

impl<S: Source> AsFd for Registration<S> {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd()
    }
}

impl<S: Source + fmt::Debug> fmt::Debug for Registration<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Registration")
            .field("token", &self.token)
            .field("source", &self.source)
            .finish()
    }
}

impl<S: Source> Drop for Registration<S> {
    fn drop(&mut self) {
        if let Some(source) = &self.source
            && let Err(err) = self.poller.delete(source.as_fd())
        {
            tracing::debug!(token = self.token.0, error = %err, "deregister on drop failed");
        }
    }
}
