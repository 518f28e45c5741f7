//! Sockets watched for readability only.
//!
//! tokio registers its sockets for reading and writing, edge-triggered. A stream socket signals
//! "writable" again every time the peer takes data off it, so each reply a client reads, and
//! each request the upstream server reads, wakes the event loop for nothing: measured under
//! `pgbench -S` with one client, 3.3 wake-ups per transaction where PgBouncer has 2. Here a
//! socket is registered for reading only; writes go straight to the socket, and only a write
//! that finds it full waits for room, through a second descriptor registered for writing for
//! just as long as that takes.

use std::io;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use rustix::io::Errno;
use rustix::net::{RecvFlags, SendFlags, Shutdown};
use tokio::io::unix::AsyncFd;
use tokio::io::{AsyncRead, AsyncWrite, Interest, ReadBuf};

/// A non-blocking stream socket (Unix or TCP) as a tokio stream.
pub(crate) struct Socket<T: AsFd + AsRawFd> {
    read: AsyncFd<T>,
    /// Registered for writability while a write waits for room.
    write: Option<AsyncFd<OwnedFd>>,
}

/// Registers a descriptor-owning socket with the runtime for `interest`.
fn register<T: Owner>(socket: T, interest: Interest) -> io::Result<AsyncFd<T>> {
    #[allow(unsafe_code, reason = "tokio makes registering a descriptor unsafe (I/O safety)")]
    // SAFETY: `Owner` types own their descriptor: it stays open, is the same one for every
    // `as_raw_fd` call and is closed only when the value (here, the `AsyncFd`) is dropped.
    unsafe {
        AsyncFd::register_with_interest(socket, interest).map_err(io::Error::from)
    }
}

/// Types that own the descriptor they return.
pub(crate) trait Owner: AsFd + AsRawFd {}
impl Owner for std::os::unix::net::UnixStream {}
impl Owner for std::net::TcpStream {}
impl Owner for OwnedFd {}

impl<T: Owner> Socket<T> {
    /// Wraps a socket in non-blocking mode that is registered nowhere else, with the runtime
    /// of the calling task.
    pub(crate) fn new(socket: T) -> io::Result<Socket<T>> {
        Ok(Socket { read: register(socket, Interest::READABLE)?, write: None })
    }

    /// The socket, registered nowhere again (to be taken over by another runtime).
    pub(crate) fn into_inner(self) -> io::Result<T> {
        Ok(self.read.into_inner())
    }
}

impl Socket<std::os::unix::net::UnixStream> {
    /// Takes over a tokio Unix stream.
    pub(crate) fn unix(stream: tokio::net::UnixStream) -> io::Result<Self> {
        Socket::new(stream.into_std()?)
    }
}

impl Socket<std::net::TcpStream> {
    /// Takes over a tokio TCP stream.
    pub(crate) fn tcp(stream: tokio::net::TcpStream) -> io::Result<Self> {
        Socket::new(stream.into_std()?)
    }
}

impl<T: AsFd + AsRawFd + Unpin> AsyncRead for Socket<T> {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        loop {
            let mut guard = ready!(this.read.poll_read_ready(cx))?;
            #[allow(unsafe_code, reason = "recv into the read buffer without zeroing it first")]
            // SAFETY: `recv` writes only initialised bytes into the slice and never
            // de-initialises any; `assume_init` below covers exactly the bytes it wrote.
            let unfilled = unsafe { buf.unfilled_mut() };
            let room = unfilled.len();
            let received =
                guard.try_io(|socket| match rustix::net::recv(socket.get_ref(), unfilled, RecvFlags::empty()) {
                    Ok(((filled, _), _)) => Ok(filled.len()),
                    Err(errno) => Err(io::Error::from(errno)),
                });
            match received {
                Ok(Ok(n)) => {
                    if n > 0 && n < room {
                        // The socket is drained (as tokio's own streams assume): the next read
                        // waits for an event instead of finding out with a failing `recv`.
                        guard.clear_ready();
                    }
                    #[allow(unsafe_code, reason = "marks the bytes recv wrote as initialised")]
                    // SAFETY: `recv` initialised the first `n` bytes of the unfilled part.
                    unsafe {
                        buf.assume_init(n);
                    }
                    buf.advance(n);
                    return Poll::Ready(Ok(()));
                }
                Ok(Err(error)) if error.kind() == io::ErrorKind::Interrupted => {}
                Ok(Err(error)) => return Poll::Ready(Err(error)),
                // Drained: readiness was cleared, wait for the next edge.
                Err(_would_block) => {}
            }
        }
    }
}

impl<T: AsFd + AsRawFd + Unpin> AsyncWrite for Socket<T> {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        loop {
            match rustix::net::send(this.read.get_ref(), buf, SendFlags::NOSIGNAL) {
                Ok(n) => {
                    // Watching for room again would bring back the wake-ups this type avoids.
                    this.write = None;
                    return Poll::Ready(Ok(n));
                }
                Err(Errno::INTR) => continue,
                Err(Errno::AGAIN) => {}
                Err(errno) => return Poll::Ready(Err(errno.into())),
            }
            let writer = match &mut this.write {
                Some(writer) => writer,
                None => {
                    // Registering reports the current state, so room made since the failed
                    // send is not missed.
                    let fd = this.read.get_ref().as_fd().try_clone_to_owned()?;
                    this.write.insert(register(fd, Interest::WRITABLE)?)
                }
            };
            ready!(writer.poll_write_ready(cx))?.clear_ready();
        }
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(match rustix::net::shutdown(self.read.get_ref(), Shutdown::Write) {
            Ok(()) | Err(Errno::NOTCONN) => Ok(()),
            Err(errno) => Err(errno.into()),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    fn pair() -> (Socket<std::os::unix::net::UnixStream>, Socket<std::os::unix::net::UnixStream>) {
        let (a, b) = tokio::net::UnixStream::pair().unwrap();
        (Socket::unix(a).unwrap(), Socket::unix(b).unwrap())
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_write_larger_than_the_socket_buffer_waits_for_the_reader() {
        let (mut a, mut b) = pair();
        let sent: Vec<u8> = (0..8 << 20).map(|i: u32| (i % 251) as u8).collect();
        let expected = sent.clone();
        let writer = tokio::spawn(async move {
            a.write_all(&sent).await.unwrap();
            a.shutdown().await.unwrap();
        });
        let mut got = Vec::new();
        let mut chunk = vec![0; 1000];
        loop {
            // Small reads, so the writer finds the socket full again and again.
            let n = b.read(&mut chunk).await.unwrap();
            if n == 0 {
                break;
            }
            got.extend_from_slice(&chunk[..n]);
        }
        writer.await.unwrap();
        assert_eq!(got.len(), expected.len());
        assert!(got == expected, "bytes arrived changed or out of order");
    }

    #[tokio::test(flavor = "current_thread")]
    async fn the_peer_leaving_is_an_end_of_file_then_a_write_error() {
        let (mut a, b) = pair();
        drop(b);
        let mut buf = [0; 16];
        assert_eq!(a.read(&mut buf).await.unwrap(), 0);
        let err = a.write_all(&[1; 1 << 20]).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::BrokenPipe, "{err}");
    }
}
