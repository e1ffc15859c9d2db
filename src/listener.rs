//! The accept loop of the gRPC port and of the suites' callback port, hardened:
//! tonic's own (and axum's) keeps every connection that never says a word, has no
//! cap on connections, and tonic's retries a failed accept at once, which spins a
//! core when the process is out of file descriptors.
//!
//! Here one task accepts; each connection then gets `handshake_timeout` to send its
//! first bytes (the HTTP/2 preface or an HTTP/1 request) and, with TLS, to finish
//! its TLS handshake, before it is handed to the server, so a slow or silent peer
//! never holds up the others; a permit per connection caps how many are open;
//! accept errors back off and are logged once per interval.

use std::{
    convert::Infallible,
    future::Future,
    io,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
    time::{Duration, Instant},
};

use socket2::{SockRef, TcpKeepalive};
use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    net::{TcpListener, TcpStream},
    sync::{OwnedSemaphorePermit, Semaphore, mpsc},
};
use tokio_rustls::server::TlsStream;
use tokio_stream::Stream;
use tonic::transport::server::Connected;

use crate::tls::TlsAcceptor;

/// How a port accepts connections.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ListenerSettings {
    /// The configuration section of its knobs (`server`, `callback`), for logs.
    pub(crate) section: &'static str,
    /// Most connections open at once; past it the kernel's backlog holds new ones.
    pub(crate) max_connections: usize,
    /// Time a new connection has to send its first bytes.
    pub(crate) handshake_timeout: Duration,
}

/// The same warning at most once per this interval: a failing accept loop
/// must not flood the log.
const WARN_INTERVAL: Duration = Duration::from_secs(10);
/// First and longest pause after a failed accept.
const ACCEPT_BACKOFF: (Duration, Duration) = (Duration::from_millis(10), Duration::from_secs(1));
/// TCP keepalive: connections to vanished peers are noticed and closed.
const TCP_KEEPALIVE: Duration = Duration::from_secs(60);

/// Accepted connections that have sent their first bytes (and finished their TLS
/// handshake), for `serve_with_incoming_shutdown`. Dropping it stops the accept
/// loop and closes the listening socket.
pub(crate) struct Incoming<IO> {
    ready: mpsc::Receiver<Connection<IO>>,
}

impl Incoming<TcpStream> {
    /// Starts accepting plaintext connections on `listener`.
    pub(crate) fn new(listener: TcpListener, settings: ListenerSettings) -> Self {
        Self::start(listener, settings, |stream| async { Ok(stream) })
    }
}

impl Incoming<TlsStream<TcpStream>> {
    /// Starts accepting TLS connections on `listener`, each with the certificate
    /// current when its handshake starts.
    pub(crate) fn tls(
        listener: TcpListener,
        settings: ListenerSettings,
        tls: Arc<TlsAcceptor>,
    ) -> Self {
        Self::start(listener, settings, move |stream| {
            let tls = Arc::clone(&tls);
            async move { tls.accept(stream).await }
        })
    }
}

impl<IO: Send + 'static> Incoming<IO> {
    /// Starts the accept loop; `open` turns an accepted connection into the server's.
    fn start<O, F>(listener: TcpListener, settings: ListenerSettings, open: O) -> Self
    where
        O: Fn(TcpStream) -> F + Send + Sync + 'static,
        F: Future<Output = io::Result<IO>> + Send + 'static,
    {
        // Small: a connection waits here only while the server is between accepts.
        let (ready, receiver) = mpsc::channel(64);
        tokio::spawn(accept_loop(listener, settings, Arc::new(open), ready));
        Self { ready: receiver }
    }
}

impl<IO> Stream for Incoming<IO> {
    type Item = Result<Connection<IO>, Infallible>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.ready.poll_recv(cx).map(|c| c.map(Ok))
    }
}

async fn accept_loop<IO, O, F>(
    listener: TcpListener,
    settings: ListenerSettings,
    open: Arc<O>,
    ready: mpsc::Sender<Connection<IO>>,
) where
    IO: Send + 'static,
    O: Fn(TcpStream) -> F + Send + Sync + 'static,
    F: Future<Output = io::Result<IO>> + Send + 'static,
{
    let slots = Arc::new(Semaphore::new(settings.max_connections));
    let mut full = Throttled::default();
    let mut failing = Throttled::default();
    let mut backoff = ACCEPT_BACKOFF.0;
    loop {
        let permit = match Arc::clone(&slots).try_acquire_owned() {
            Ok(permit) => permit,
            Err(_) => {
                full.warn(|| {
                    tracing::warn!(
                        max_connections = settings.max_connections,
                        "connection limit reached: new connections wait in the listen backlog \
                         ({}.max_connections)",
                        settings.section
                    )
                });
                tokio::select! {
                    permit = Arc::clone(&slots).acquire_owned() => match permit {
                        Ok(permit) => permit,
                        Err(_) => return,
                    },
                    () = ready.closed() => return,
                }
            }
        };
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            () = ready.closed() => return,
        };
        let stream = match accepted {
            Ok((stream, _)) => stream,
            // The peer gave up before we accepted: nothing to do.
            Err(error) if is_peer_error(&error) => continue,
            Err(error) => {
                let out_of_descriptors = is_out_of_descriptors(&error);
                failing.warn(|| {
                    if out_of_descriptors {
                        tracing::warn!(
                            %error,
                            "out of file descriptors: new connections wait; raise the open-files \
                             limit or lower {}.max_connections",
                            settings.section
                        )
                    } else {
                        tracing::warn!(%error, "accepting a connection failed; retrying")
                    }
                });
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(ACCEPT_BACKOFF.1);
                continue;
            }
        };
        backoff = ACCEPT_BACKOFF.0;
        configure(&stream);
        let (ready, open) = (ready.clone(), Arc::clone(&open));
        tokio::spawn(async move {
            let timeout = settings.handshake_timeout;
            let peer = stream.peer_addr().ok();
            let opened = async {
                if !first_bytes(&stream).await {
                    return Ok(None);
                }
                open(stream).await.map(Some)
            };
            match tokio::time::timeout(timeout, opened).await {
                Ok(Ok(Some(io))) => {
                    // A send error means the server stopped accepting: drop it.
                    let _ = ready.send(Connection::new(io, permit)).await;
                }
                Ok(Ok(None)) => {}
                // A scanner, or a plaintext client on the TLS port.
                Ok(Err(error)) => tracing::debug!(?peer, %error, "TLS handshake failed"),
                Err(_) => tracing::debug!(
                    ?peer,
                    timeout_ms = timeout.as_millis() as u64,
                    "closing a connection that did not open within the handshake timeout"
                ),
            }
        });
    }
}

/// No Nagle delay (HTTP/2 writes small frames, which Nagle would hold back until
/// the peer's delayed ACK, some 40 ms), and TCP keepalive.
fn configure(stream: &TcpStream) {
    let _ = stream.set_nodelay(true);
    let keepalive = TcpKeepalive::new().with_time(TCP_KEEPALIVE);
    let _ = SockRef::from(stream).set_tcp_keepalive(&keepalive);
}

/// Waits until the peer has sent something; `false` if it closed first.
async fn first_bytes(stream: &TcpStream) -> bool {
    let mut byte = [0u8; 1];
    matches!(stream.peek(&mut byte).await, Ok(n) if n > 0)
}

/// Errors of one connection, not of the listener.
fn is_peer_error(error: &io::Error) -> bool {
    matches!(
        error.kind(),
        io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::ConnectionRefused
            | io::ErrorKind::Interrupted
    )
}

/// EMFILE or ENFILE: the process or the system is out of file descriptors.
pub(crate) fn is_out_of_descriptors(error: &io::Error) -> bool {
    matches!(error.raw_os_error(), Some(libc::EMFILE | libc::ENFILE))
}

/// A warning written at most once per [`WARN_INTERVAL`].
#[derive(Default)]
struct Throttled {
    last: Option<Instant>,
}

impl Throttled {
    fn warn(&mut self, log: impl FnOnce()) {
        let now = Instant::now();
        if self.last.is_none_or(|last| now - last >= WARN_INTERVAL) {
            self.last = Some(now);
            log();
        }
    }
}

/// A connection that holds its slot under `max_connections` until it closes.
pub(crate) struct Connection<IO> {
    io: IO,
    _slot: OwnedSemaphorePermit,
}

impl<IO> Connection<IO> {
    fn new(io: IO, slot: OwnedSemaphorePermit) -> Self {
        Self { io, _slot: slot }
    }
}

impl<IO: Connected> Connected for Connection<IO> {
    type ConnectInfo = IO::ConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.io.connect_info()
    }
}

impl<IO: AsyncRead + Unpin> AsyncRead for Connection<IO> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl<IO: AsyncWrite + Unpin> AsyncWrite for Connection<IO> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }
}
