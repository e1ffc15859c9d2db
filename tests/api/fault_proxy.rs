//! A TCP fault proxy: it sits between the gateway and its upstream (the sandbox,
//! or a [`FakeUpstream`](crate::helpers::FakeUpstream)) and breaks the connection
//! in the ways a network does, switchable while the test runs.
//!
//! Hand-written because nothing installable here does it (no toxiproxy, no
//! `tc netem`), and because the faults must be exact: "reset after WeCom
//! answered" has to mean that the upstream processed the request, which a
//! random packet loss cannot promise. It reads bytes, not HTTP: a fault is
//! decided each time bytes arrive from one side, so it also hits connections the
//! gateway pooled before the fault was switched on.
//!
//! | fault | when it acts | what the gateway sees |
//! |---|---|---|
//! | [`PassThrough`](ProxyFault::PassThrough) | — | the upstream |
//! | [`ResetBeforeForwarding`](ProxyFault::ResetBeforeForwarding) | a new connection, or request bytes | RST; the upstream saw nothing |
//! | [`ResetAfterForwarding`](ProxyFault::ResetAfterForwarding) | the upstream's answer bytes | RST; the upstream processed the request, the answer is lost |
//! | [`Stall`](ProxyFault::Stall) | request bytes | nothing, for as long as it waits; the upstream saw nothing |
//! | [`SlowBody`](ProxyFault::SlowBody) | the upstream's answer bytes | the answer, one byte per interval |

use std::{
    net::SocketAddr,
    sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
    task::JoinHandle,
};

/// What the proxy does to the traffic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProxyFault {
    /// Forward both ways, untouched.
    PassThrough,
    /// Reset the gateway's connection (RST, `SO_LINGER` 0) before any of its
    /// request reaches the upstream: at accept, or when a pooled connection sends.
    ResetBeforeForwarding,
    /// Forward the request; when the upstream's answer arrives, drop it and reset
    /// the gateway's connection. The upstream did the work; the gateway never knows.
    ResetAfterForwarding,
    /// Swallow the request and hold the connection open without a byte in return,
    /// until the gateway gives up on it.
    Stall,
    /// Forward the upstream's answer one byte at a time, waiting this long after each.
    SlowBody(Duration),
}

/// A running proxy. Dropping it stops accepting; open connections end with it.
pub struct FaultProxy {
    addr: SocketAddr,
    shared: Arc<Shared>,
    accept_loop: JoinHandle<()>,
}

struct Shared {
    upstream: SocketAddr,
    plan: Mutex<Plan>,
    /// How many times a fault other than pass-through acted.
    applied: AtomicUsize,
}

/// The fault in force, and how many more times it acts before passing through.
struct Plan {
    fault: ProxyFault,
    remaining: Option<u32>,
}

/// Where in a connection's life the proxy is when it asks for a fault.
#[derive(Clone, Copy)]
enum Moment {
    Accepted,
    RequestBytes,
    AnswerBytes,
}

impl ProxyFault {
    fn acts_at(self, moment: Moment) -> bool {
        use ProxyFault::*;
        match moment {
            Moment::Accepted => self == ResetBeforeForwarding,
            Moment::RequestBytes => matches!(self, ResetBeforeForwarding | Stall),
            Moment::AnswerBytes => matches!(self, ResetAfterForwarding | SlowBody(_)),
        }
    }
}

impl FaultProxy {
    /// Listens on a free loopback port and forwards to `upstream`, passing
    /// everything through until told otherwise. Call it inside a Tokio runtime.
    pub fn start(upstream: SocketAddr) -> Self {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind a loopback port");
        listener
            .set_nonblocking(true)
            .expect("non-blocking listener");
        let addr = listener.local_addr().expect("bound address");
        let listener = TcpListener::from_std(listener).expect("inside a Tokio runtime");
        let shared = Arc::new(Shared {
            upstream,
            plan: Mutex::new(Plan {
                fault: ProxyFault::PassThrough,
                remaining: None,
            }),
            applied: AtomicUsize::new(0),
        });
        let accept_loop = tokio::spawn(accept(listener, Arc::clone(&shared)));
        Self {
            addr,
            shared,
            accept_loop,
        }
    }

    /// Its address, as a base URL for the gateway's `api_base`.
    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Applies `fault` from now on, until changed.
    pub fn set(&self, fault: ProxyFault) {
        *self.shared.plan.lock().unwrap() = Plan {
            fault,
            remaining: None,
        };
    }

    /// Applies `fault` the next `times` times it can act, then passes through.
    pub fn set_times(&self, fault: ProxyFault, times: u32) {
        *self.shared.plan.lock().unwrap() = Plan {
            fault,
            remaining: Some(times),
        };
    }

    /// How many times a fault acted so far: a test that injects one proves it was hit.
    pub fn applied(&self) -> usize {
        self.shared.applied.load(Ordering::SeqCst)
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.accept_loop.abort();
    }
}

impl Shared {
    /// The fault that acts at `moment`, spending one of its uses; `None` to forward.
    fn fault_at(&self, moment: Moment) -> Option<ProxyFault> {
        let mut plan = self.plan.lock().unwrap();
        if !plan.fault.acts_at(moment) || plan.remaining == Some(0) {
            return None;
        }
        if let Some(remaining) = plan.remaining.as_mut() {
            *remaining -= 1;
        }
        self.applied.fetch_add(1, Ordering::SeqCst);
        Some(plan.fault)
    }
}

async fn accept(listener: TcpListener, shared: Arc<Shared>) {
    while let Ok((client, _)) = listener.accept().await {
        tokio::spawn(relay(client, Arc::clone(&shared)));
    }
}

/// One gateway connection: forwarded to a connection of its own to the upstream,
/// with the fault in force applied each time bytes arrive.
async fn relay(mut client: TcpStream, shared: Arc<Shared>) {
    if shared.fault_at(Moment::Accepted).is_some() {
        return reset(client);
    }
    let Ok(mut upstream) = TcpStream::connect(shared.upstream).await else {
        return reset(client);
    };
    let _ = client.set_nodelay(true);
    let _ = upstream.set_nodelay(true);
    let (mut request, mut answer) = (vec![0u8; 16 * 1024], vec![0u8; 16 * 1024]);
    loop {
        tokio::select! {
            read = client.read(&mut request) => {
                let n = match read {
                    Ok(0) | Err(_) => return,
                    Ok(n) => n,
                };
                match shared.fault_at(Moment::RequestBytes) {
                    Some(ProxyFault::Stall) => return stall(client).await,
                    Some(_) => return reset(client),
                    None => {
                        if upstream.write_all(&request[..n]).await.is_err() {
                            return reset(client);
                        }
                    }
                }
            }
            read = upstream.read(&mut answer) => {
                let n = match read {
                    // The upstream closed: pass the close on after what it sent.
                    Ok(0) => {
                        let _ = client.shutdown().await;
                        return;
                    }
                    Err(_) => return reset(client),
                    Ok(n) => n,
                };
                let sent = match shared.fault_at(Moment::AnswerBytes) {
                    Some(ProxyFault::SlowBody(interval)) => {
                        dribble(&mut client, &answer[..n], interval).await
                    }
                    Some(_) => return reset(client),
                    None => client.write_all(&answer[..n]).await,
                };
                if sent.is_err() {
                    return;
                }
            }
        }
    }
}

/// Closes with RST instead of FIN: `SO_LINGER` 0 discards what is unsent.
fn reset(stream: TcpStream) {
    // If the option cannot be set the close is a FIN: still a lost answer.
    let _ = stream.set_zero_linger();
    drop(stream);
}

/// Reads and discards whatever the gateway sends, answering nothing, until it closes.
async fn stall(mut client: TcpStream) {
    let mut sink = [0u8; 4096];
    while matches!(client.read(&mut sink).await, Ok(n) if n > 0) {}
}

async fn dribble(client: &mut TcpStream, bytes: &[u8], interval: Duration) -> std::io::Result<()> {
    for byte in bytes {
        client.write_all(std::slice::from_ref(byte)).await?;
        tokio::time::sleep(interval).await;
    }
    Ok(())
}
