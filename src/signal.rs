//! SIGTERM and SIGINT as a stream: the first starts a graceful shutdown, a second
//! cuts it short.
//!
//! The listeners are created once, up front, and reused: a second signal sent
//! before a new listener exists would be lost, and one listener reports each
//! delivery once.

use tokio::signal::unix::{Signal, SignalKind, signal};

/// Listens for SIGTERM and SIGINT from its creation on.
#[derive(Debug)]
pub struct ShutdownSignals {
    /// SIGTERM: what Kubernetes and container runtimes send to stop a process.
    terminate: Option<Signal>,
    /// SIGINT: Ctrl-C in a terminal.
    interrupt: Option<Signal>,
}

impl ShutdownSignals {
    /// Starts listening. A signal that cannot be listened for is logged and ignored.
    pub fn new() -> Self {
        let listen = |kind: SignalKind, name: &str| match signal(kind) {
            Ok(listener) => Some(listener),
            Err(error) => {
                tracing::error!(%error, "cannot listen for {name}");
                None
            }
        };
        Self {
            terminate: listen(SignalKind::terminate(), "SIGTERM"),
            interrupt: listen(SignalKind::interrupt(), "SIGINT"),
        }
    }

    /// Completes on the next SIGTERM or SIGINT.
    pub async fn recv(&mut self) {
        async fn next(listener: &mut Option<Signal>) {
            let delivered = match listener {
                Some(listener) => listener.recv().await.is_some(),
                None => false,
            };
            // `None` from `recv` means the runtime is going away: nothing more will come.
            if !delivered {
                std::future::pending::<()>().await;
            }
        }
        tokio::select! {
            () = next(&mut self.terminate) => tracing::info!("SIGTERM received"),
            () = next(&mut self.interrupt) => tracing::info!("SIGINT received"),
        }
    }
}

impl Default for ShutdownSignals {
    fn default() -> Self {
        Self::new()
    }
}
