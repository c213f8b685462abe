//! Non-blocking TCP sockets built with `socket2`, ready to register with a [`crate::Registry`].

use std::fmt;
use std::io::{self, IoSlice, IoSliceMut, Read, Write};
use std::net::{Shutdown, SocketAddr};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, RawFd};
use std::time::Duration;

use bytes::BytesMut;
use socket2::{Domain, Protocol, SockRef, Socket, Type};

use crate::{Error, Result};

/// The listen backlog used by [`TcpListener::bind`].
pub const DEFAULT_BACKLOG: i32 = 1024;

/// A non-blocking TCP listener.
pub struct TcpListener {
    inner: std::net::TcpListener,
}

impl TcpListener {
    /// Binds `addr` with address reuse and a backlog of [`DEFAULT_BACKLOG`]; port 0 picks a free port.
    ///
    /// # Errors
    /// [`Error::Bind`] if the address is in use or cannot be bound.
    pub fn bind(addr: SocketAddr) -> Result<TcpListener> {
        TcpListener::bind_with_backlog(addr, DEFAULT_BACKLOG)
    }

    /// Binds `addr` with address reuse and the given backlog.
    ///
    /// # Errors
    /// [`Error::Bind`] if the address is in use or cannot be bound.
    pub fn bind_with_backlog(addr: SocketAddr, backlog: i32) -> Result<TcpListener> {
        let fail = |source| Error::Bind { addr, source };
        let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))
            .map_err(fail)?;
        socket.set_reuse_address(true).map_err(fail)?;
        socket.set_nonblocking(true).map_err(fail)?;
        socket.bind(&addr.into()).map_err(fail)?;
        socket.listen(backlog).map_err(fail)?;
        Ok(TcpListener {
            inner: socket.into(),
        })
    }

    /// Accepts one pending connection, already non-blocking.
    ///
    /// # Errors
    /// `WouldBlock` when none is pending (wait for readability again); other errors come from the
    /// operating system (for example `EMFILE` when out of descriptors).
    pub fn accept(&self) -> io::Result<(TcpStream, SocketAddr)> {
        let (stream, addr) = self.inner.accept()?;
        stream.set_nonblocking(true)?;
        Ok((TcpStream { inner: stream }, addr))
    }

    /// The address this listener is bound to (with the real port when bound to port 0).
    ///
    /// # Errors
    /// As the operating system reports.
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.inner.local_addr()
    }

    /// Reads and clears the socket's pending error.
    ///
    /// # Errors
    /// As the operating system reports.
    pub fn take_error(&self) -> io::Result<Option<io::Error>> {
        self.inner.take_error()
    }

    /// Wraps a standard listener, switching it to non-blocking mode.
    ///
    /// # Errors
    /// As the operating system reports.
    pub fn from_std(inner: std::net::TcpListener) -> io::Result<TcpListener> {
        inner.set_nonblocking(true)?;
        Ok(TcpListener { inner })
    }
}

impl fmt::Debug for TcpListener {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TcpListener")
            .field("local", &self.inner.local_addr().ok())
            .finish()
    }
}

impl AsFd for TcpListener {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.inner.as_fd()
    }
}

impl AsRawFd for TcpListener {
    fn as_raw_fd(&self) -> RawFd {
        self.inner.as_raw_fd()
    }
}

/// A non-blocking TCP stream.
///
/// Reads and writes return `WouldBlock` when they would wait; that is "wait for readiness again",
/// not an error. `Read` and `Write` are implemented for `&TcpStream` too, so a registered stream
/// can be used through its [`crate::Registration`].
pub struct TcpStream {
    inner: std::net::TcpStream,
}

impl TcpStream {
    /// Starts a non-blocking connection to `addr` and returns at once.
    ///
    /// The connection completes in the background: wait until the stream is writable, then call
    /// [`TcpStream::take_error`] (a refusal shows up there) or [`TcpStream::peer_addr`].
    ///
    /// # Errors
    /// [`Error::Connect`] if the connection could not even be started.
    pub fn connect(addr: SocketAddr) -> Result<TcpStream> {
        let fail = |source| Error::Connect { addr, source };
        let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))
            .map_err(fail)?;
        socket.set_nonblocking(true).map_err(fail)?;
        match socket.connect(&addr.into()) {
            Ok(()) => {}
            Err(err) if in_progress(&err) => {}
            Err(err) => return Err(fail(err)),
        }
        Ok(TcpStream {
            inner: socket.into(),
        })
    }

    /// Wraps a standard stream, switching it to non-blocking mode.
    ///
    /// # Errors
    /// As the operating system reports.
    pub fn from_std(inner: std::net::TcpStream) -> io::Result<TcpStream> {
        inner.set_nonblocking(true)?;
        Ok(TcpStream { inner })
    }

    /// A second handle to the same connection (a duplicated descriptor), for example to read on one
    /// and write on the other; each can be registered on its own.
    ///
    /// # Errors
    /// As the operating system reports (for example, out of descriptors).
    pub fn try_clone(&self) -> io::Result<TcpStream> {
        Ok(TcpStream {
            inner: self.inner.try_clone()?,
        })
    }

    /// Reads and clears the socket's pending error: how a non-blocking connect reports a refusal.
    ///
    /// # Errors
    /// As the operating system reports.
    pub fn take_error(&self) -> io::Result<Option<io::Error>> {
        self.inner.take_error()
    }

    /// The peer's address; `NotConnected` while a connect is still in progress or was refused.
    ///
    /// # Errors
    /// As the operating system reports.
    pub fn peer_addr(&self) -> io::Result<SocketAddr> {
        self.inner.peer_addr()
    }

    /// This end's address.
    ///
    /// # Errors
    /// As the operating system reports.
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.inner.local_addr()
    }

    /// Turns Nagle's algorithm off (`true`) so small frames leave at once.
    ///
    /// # Errors
    /// [`Error::SocketOption`] if the operating system refuses.
    pub fn set_nodelay(&self, nodelay: bool) -> Result<()> {
        self.inner
            .set_nodelay(nodelay)
            .map_err(|source| Error::SocketOption {
                option: "TCP_NODELAY",
                source,
            })
    }

    /// Whether `TCP_NODELAY` is set.
    ///
    /// # Errors
    /// As the operating system reports.
    pub fn nodelay(&self) -> io::Result<bool> {
        self.inner.nodelay()
    }

    /// Sets the kernel send buffer size (`SO_SNDBUF`); the kernel may round it.
    ///
    /// # Errors
    /// [`Error::SocketOption`] if the operating system refuses.
    pub fn set_send_buffer_size(&self, bytes: usize) -> Result<()> {
        SockRef::from(&self.inner)
            .set_send_buffer_size(bytes)
            .map_err(|source| Error::SocketOption {
                option: "SO_SNDBUF",
                source,
            })
    }

    /// The kernel send buffer size.
    ///
    /// # Errors
    /// As the operating system reports.
    pub fn send_buffer_size(&self) -> io::Result<usize> {
        SockRef::from(&self.inner).send_buffer_size()
    }

    /// Sets the kernel receive buffer size (`SO_RCVBUF`); the kernel may round it.
    ///
    /// # Errors
    /// [`Error::SocketOption`] if the operating system refuses.
    pub fn set_recv_buffer_size(&self, bytes: usize) -> Result<()> {
        SockRef::from(&self.inner)
            .set_recv_buffer_size(bytes)
            .map_err(|source| Error::SocketOption {
                option: "SO_RCVBUF",
                source,
            })
    }

    /// The kernel receive buffer size.
    ///
    /// # Errors
    /// As the operating system reports.
    pub fn recv_buffer_size(&self) -> io::Result<usize> {
        SockRef::from(&self.inner).recv_buffer_size()
    }

    /// Sets `SO_LINGER`: `Some(Duration::ZERO)` makes close send a reset instead of a FIN.
    ///
    /// # Errors
    /// [`Error::SocketOption`] if the operating system refuses.
    pub fn set_linger(&self, linger: Option<Duration>) -> Result<()> {
        SockRef::from(&self.inner)
            .set_linger(linger)
            .map_err(|source| Error::SocketOption {
                option: "SO_LINGER",
                source,
            })
    }

    /// Shuts down the read half, the write half, or both.
    ///
    /// # Errors
    /// As the operating system reports (`NotConnected` if the peer is gone).
    pub fn shutdown(&self, how: Shutdown) -> io::Result<()> {
        self.inner.shutdown(how)
    }

    /// Reads once, appending to `buf` after making room for at least `room` bytes; returns how
    /// many were read, `0` at end of stream. Unlike [`Read::read`], which needs initialised
    /// memory, the room is not zero-filled first: the kernel writes into it directly.
    /// An interrupted read is retried.
    ///
    /// # Errors
    /// As the operating system reports; `WouldBlock` when nothing is ready.
    ///
    /// # Examples
    /// ```
    /// use std::io::Write;
    /// use mixbus_eventq::net::TcpStream;
    /// # use std::time::{Duration, Instant};
    ///
    /// let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    /// let mut writer = std::net::TcpStream::connect(listener.local_addr()?)?;
    /// let reader = TcpStream::from_std(listener.accept()?.0)?;
    /// writer.write_all(b"hello")?;
    ///
    /// let mut buf = mixbus_eventq::BytesMut::from(&b"> "[..]);
    /// # let deadline = Instant::now() + Duration::from_secs(10);
    /// while buf.len() < 7 {
    ///     match reader.read_buf(&mut buf, 64) {
    ///         Ok(n) => assert!(n > 0),
    ///         Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
    /// #           assert!(Instant::now() < deadline);
    ///             std::thread::yield_now(); // A real program waits for readiness.
    ///         }
    ///         Err(e) => return Err(e.into()),
    ///     }
    /// }
    /// assert_eq!(&buf[..], b"> hello");
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn read_buf(&self, buf: &mut BytesMut, room: usize) -> io::Result<usize> {
        buf.reserve(room.max(1));
        let sock = SockRef::from(&self.inner);
        loop {
            match sock.recv(buf.spare_capacity_mut()) {
                Ok(n) => {
                    // SAFETY: `recv` wrote `n` bytes at the start of the spare capacity it was
                    // given (socket2 returns the count the kernel reported, at most the slice's
                    // length), so the first `len + n` bytes are initialised and within capacity.
                    unsafe { buf.set_len(buf.len() + n) };
                    return Ok(n);
                }
                Err(err) if err.kind() == io::ErrorKind::Interrupted => continue,
                Err(err) => return Err(err),
            }
        }
    }
}

fn in_progress(err: &io::Error) -> bool {
    // EINPROGRESS is 115 on Linux and 36 on the BSDs and macOS; std maps neither to a stable kind.
    #[cfg(target_os = "linux")]
    const EINPROGRESS: i32 = 115;
    #[cfg(not(target_os = "linux"))]
    const EINPROGRESS: i32 = 36;
    err.kind() == io::ErrorKind::WouldBlock || err.raw_os_error() == Some(EINPROGRESS)
}

impl fmt::Debug for TcpStream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TcpStream")
            .field("local", &self.inner.local_addr().ok())
            .field("peer", &self.inner.peer_addr().ok())
            .finish()
    }
}

impl AsFd for TcpStream {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.inner.as_fd()
    }
}

impl AsRawFd for TcpStream {
    fn as_raw_fd(&self) -> RawFd {
        self.inner.as_raw_fd()
    }
}

impl Read for &TcpStream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        (&self.inner).read(buf)
    }
    fn read_vectored(&mut self, bufs: &mut [IoSliceMut<'_>]) -> io::Result<usize> {
        (&self.inner).read_vectored(bufs)
    }
}

impl Write for &TcpStream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        (&self.inner).write(buf)
    }
    fn write_vectored(&mut self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
        (&self.inner).write_vectored(bufs)
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Read for TcpStream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        (&*self).read(buf)
    }
    fn read_vectored(&mut self, bufs: &mut [IoSliceMut<'_>]) -> io::Result<usize> {
        (&*self).read_vectored(bufs)
    }
}

impl Write for TcpStream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        (&*self).write(buf)
    }
    fn write_vectored(&mut self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
        (&*self).write_vectored(bufs)
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}
