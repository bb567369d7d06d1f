//! The servers' accept loop and the connections it hands to tonic.
//!
//! - At most [`Limits::max_connections`] connections are open at once: beyond that the loop
//!   stops accepting, so new connections wait in the kernel's backlog until one closes.
//! - A connection from which nothing arrives for [`Limits::idle_timeout`] is closed. A live
//!   HTTP/2 peer always answers the server's keepalive pings (sent every
//!   [`Limits::keepalive_interval`], a quarter of the idle timeout or 30 s, whichever is less),
//!   so this only closes sockets that never speak or went silent, such as a flood of idle
//!   sockets or a stalled handshake.
//! - Accept errors that mean the process is out of resources (EMFILE, ENFILE, ENOBUFS, ENOMEM)
//!   back off, doubling from 10 ms to 1 s: the pending connection keeps the listener readable,
//!   so retrying at once would spin a core. The first one of each episode is logged.
//! - Accepted sockets get TCP_NODELAY (with Nagle's algorithm a stream's last small frames,
//!   such as the trailers after a tensor, can wait tens of milliseconds for a delayed ACK) and
//!   TCP keepalive.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, OwnedSemaphorePermit, Semaphore};
use tokio::time::{Instant, Sleep};
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::server::{Connected, TcpConnectInfo};

/// Shortest and longest pause after an out-of-resources accept error.
const BACKOFF: (Duration, Duration) = (Duration::from_millis(10), Duration::from_secs(1));

/// How many connections a server keeps and for how long.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Connections open at once (default 1024); more wait to be accepted.
    pub max_connections: usize,
    /// A connection that sends nothing for this long is closed (default 120 s).
    pub idle_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_connections: 1024,
            idle_timeout: Duration::from_secs(120),
        }
    }
}

impl Limits {
    /// The HTTP/2 keepalive ping interval that keeps live peers from looking idle: a quarter
    /// of the idle timeout, at most 30 s.
    pub fn keepalive_interval(&self) -> Duration {
        (self.idle_timeout / 4).min(Duration::from_secs(30))
    }
}

/// The connections of a listener, as tonic serves them.
pub struct Incoming {
    connections: ReceiverStream<io::Result<Connection>>,
    open: Arc<Semaphore>,
    max: usize,
}

impl Incoming {
    /// How many connections are open now.
    pub fn open(&self) -> OpenConnections {
        OpenConnections {
            free: Arc::clone(&self.open),
            max: self.max,
        }
    }
}

/// A live count of a listener's open connections.
#[derive(Clone)]
pub struct OpenConnections {
    free: Arc<Semaphore>,
    max: usize,
}

impl OpenConnections {
    /// Connections open now.
    pub fn get(&self) -> usize {
        self.max - self.free.available_permits()
    }
}

impl tokio_stream::Stream for Incoming {
    type Item = io::Result<Connection>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        Pin::new(&mut self.connections).poll_next(cx)
    }
}

/// Accepts connections on `listener` within `limits` (on the current runtime) until the
/// returned stream is dropped, which closes the listener.
pub fn incoming(listener: TcpListener, limits: Limits) -> Incoming {
    let max = limits.max_connections.max(1);
    let open = Arc::new(Semaphore::new(max));
    let (tx, rx) = mpsc::channel(1);
    tokio::spawn(accept_loop(listener, limits, Arc::clone(&open), tx));
    Incoming {
        connections: ReceiverStream::new(rx),
        open,
        max,
    }
}

async fn accept_loop(
    listener: TcpListener,
    limits: Limits,
    open: Arc<Semaphore>,
    tx: mpsc::Sender<io::Result<Connection>>,
) {
    let keepalive = socket2::TcpKeepalive::new().with_time(Duration::from_secs(60));
    let mut backoff = BACKOFF.0;
    let mut at_limit = false;
    loop {
        if open.available_permits() == 0 && !at_limit {
            tracing::warn!(
                max_connections = limits.max_connections,
                "at the connection limit: new connections wait until one closes"
            );
        }
        at_limit = open.available_permits() == 0;
        let permit = tokio::select! {
            p = Arc::clone(&open).acquire_owned() => match p {
                Ok(p) => p,
                Err(_) => return,
            },
            _ = tx.closed() => return,
        };
        let accepted = tokio::select! {
            a = listener.accept() => a,
            _ = tx.closed() => return,
        };
        match accepted {
            Ok((stream, _)) => {
                if backoff > BACKOFF.0 {
                    tracing::info!("accepting connections again");
                }
                backoff = BACKOFF.0;
                let _ = stream.set_nodelay(true);
                let _ = socket2::SockRef::from(&stream).set_tcp_keepalive(&keepalive);
                let connection = Connection::new(stream, permit, limits.idle_timeout);
                if tx.send(Ok(connection)).await.is_err() {
                    return;
                }
            }
            Err(e) if out_of_resources(&e) => {
                if backoff == BACKOFF.0 {
                    tracing::warn!(error = %e, "cannot accept connections (out of file descriptors or memory): backing off");
                }
                drop(permit);
                tokio::select! {
                    _ = tokio::time::sleep(backoff) => {}
                    _ = tx.closed() => return,
                }
                backoff = (backoff * 2).min(BACKOFF.1);
            }
            // A connection that failed before it was accepted (reset, aborted): the next one.
            Err(e) => tracing::debug!(error = %e, "accept failed"),
        }
    }
}

/// EMFILE, ENFILE, ENOBUFS, ENOMEM: accepting again at once fails again.
fn out_of_resources(e: &io::Error) -> bool {
    // The raw values are the same on Linux and the BSDs.
    const ENOMEM: i32 = 12;
    const ENFILE: i32 = 23;
    const EMFILE: i32 = 24;
    const ENOBUFS_LINUX: i32 = 105;
    const ENOBUFS_BSD: i32 = 55;
    e.kind() == io::ErrorKind::OutOfMemory
        || matches!(
            e.raw_os_error(),
            Some(ENOMEM | ENFILE | EMFILE | ENOBUFS_LINUX | ENOBUFS_BSD)
        )
}

/// An accepted connection: it holds one of the listener's connection slots until it closes,
/// and reads fail with `TimedOut` once nothing has arrived for the idle timeout.
pub struct Connection {
    stream: TcpStream,
    _slot: OwnedSemaphorePermit,
    idle_timeout: Duration,
    idle: Pin<Box<Sleep>>,
}

impl Connection {
    fn new(stream: TcpStream, slot: OwnedSemaphorePermit, idle_timeout: Duration) -> Self {
        Connection {
            stream,
            _slot: slot,
            idle_timeout,
            idle: Box::pin(tokio::time::sleep(idle_timeout)),
        }
    }
}

impl Connected for Connection {
    type ConnectInfo = TcpConnectInfo;

    fn connect_info(&self) -> TcpConnectInfo {
        self.stream.connect_info()
    }
}

impl AsyncRead for Connection {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        match Pin::new(&mut self.stream).poll_read(cx, buf) {
            Poll::Ready(Ok(())) if buf.filled().len() > before => {
                let deadline = Instant::now() + self.idle_timeout;
                self.idle.as_mut().reset(deadline);
                Poll::Ready(Ok(()))
            }
            Poll::Pending => match self.idle.as_mut().poll(cx) {
                Poll::Ready(()) => Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!(
                        "nothing received for {:.0} s: connection closed",
                        self.idle_timeout.as_secs_f64()
                    ),
                ))),
                Poll::Pending => Poll::Pending,
            },
            other => other,
        }
    }
}

impl AsyncWrite for Connection {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}
