//! Builds the application (binds its listeners) and runs it until a shutdown signal.

use std::{
    future::Future,
    io,
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
};

use axum::{Router, http::StatusCode, routing::get};
use tokio::{
    net::{TcpListener, TcpStream},
    sync::mpsc,
};
use tokio_rustls::server::TlsStream;
use tokio_stream::{StreamExt, wrappers::ReceiverStream};
use tonic::{
    service::{Routes, interceptor::InterceptedService},
    transport::{Server, server::TcpIncoming},
};
use tonic_health::ServingStatus;

use crate::{
    auth::Access,
    config::{Settings, is_cleartext_remote, is_exposed},
    grpc::{self, CustomerUpgradeServiceServer, UpgradeGateway, pb},
    telemetry::redacted,
    tls::{TlsAcceptor, TlsError},
    wecom::Apps,
};

/// Why the gateway could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum StartupError {
    /// A listener could not be bound.
    #[error("cannot listen on {addr} ({what}): {source}")]
    Bind {
        /// Which listener.
        what: &'static str,
        /// The address asked for.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
    /// The HTTP client for WeCom could not be built (TLS set-up).
    #[error("cannot build the WeCom HTTP client: {0}")]
    HttpClient(#[from] reqwest::Error),
    /// The gRPC port's TLS files cannot be used.
    #[error("cannot set up TLS on the gRPC port: {0}")]
    Tls(#[from] TlsError),
    /// Reflection could not read the descriptor sets.
    #[error("cannot build server reflection: {0}")]
    Reflection(#[from] tonic_reflection::server::Error),
    /// The gRPC server failed.
    #[error("gRPC server failed: {0}")]
    Serve(#[from] tonic::transport::Error),
    /// The gRPC server ended without being asked to.
    #[error("{0}")]
    Stopped(&'static str),
}

/// A gateway whose listeners are bound, ready to run.
#[derive(Debug)]
pub struct Application {
    settings: Settings,
    apps: Apps,
    access: Access,
    tls: Option<Arc<TlsAcceptor>>,
    grpc: TcpListener,
    admin: TcpListener,
}

impl Application {
    /// Builds the WeCom clients, TLS and caller authentication (both start watching
    /// their files), and binds both listeners (port 0 picks a free port).
    pub async fn build(settings: Settings) -> Result<Self, StartupError> {
        for (name, app) in &settings.apps {
            if is_cleartext_remote(&app.api_base) {
                tracing::warn!(
                    app = %name,
                    api_base = %redacted(&app.api_base),
                    "plain HTTP to a remote host: the secret and tokens cross the network in clear text"
                );
            }
        }
        if let Some(warning) = is_exposed(&settings) {
            tracing::warn!(listen = %settings.listen, "INSECURE: {warning}");
        }
        let (adapter, specs) = settings.adapter();
        let apps = Apps::new(&adapter, specs, settings.default_app.clone())?;
        let access = match &settings.auth {
            Some(auth) => Access::from_file(
                auth.callers.clone(),
                auth.callers_file.clone(),
                auth.reload_interval,
                settings.apps.keys().cloned().collect(),
            ),
            None => Access::open(),
        };
        let tls = match &settings.tls {
            Some(tls) => Some(Arc::new(TlsAcceptor::start(tls)?)),
            None => None,
        };
        let bind = |what, addr| async move {
            TcpListener::bind(addr)
                .await
                .map_err(|source| StartupError::Bind { what, addr, source })
        };
        let grpc = bind("gRPC", settings.listen).await?;
        let admin = bind("admin HTTP", settings.admin_listen).await?;
        Ok(Self {
            settings,
            apps,
            access,
            tls,
            grpc,
            admin,
        })
    }

    /// The bound gRPC address.
    pub fn grpc_addr(&self) -> SocketAddr {
        self.grpc.local_addr().unwrap_or(self.settings.listen)
    }

    /// The bound admin HTTP address.
    pub fn admin_addr(&self) -> SocketAddr {
        self.admin
            .local_addr()
            .unwrap_or(self.settings.admin_listen)
    }

    /// Serves until `shutdown` completes, then drains: health turns NOT_SERVING,
    /// new connections are still accepted for `drain_delay` (load balancers need
    /// that long to notice), then the listener closes and in-flight calls get at
    /// most `shutdown_grace` to finish.
    pub async fn run_until_stopped(
        self,
        shutdown: impl Future<Output = ()>,
    ) -> Result<(), StartupError> {
        let grpc_addr = self.grpc_addr();
        let admin_addr = self.admin_addr();
        let server_settings = self.settings.server.clone();

        let (health, health_service) = tonic_health::server::health_reporter();
        health
            .set_serving::<CustomerUpgradeServiceServer<UpgradeGateway>>()
            .await;
        let gateway = Arc::new(UpgradeGateway::new(
            self.apps,
            self.settings.upstream.call_timeout,
            self.access.clone(),
        ));
        let service = InterceptedService::new(
            CustomerUpgradeServiceServer::from_arc(Arc::clone(&gateway))
                .max_decoding_message_size(server_settings.max_decode_message_bytes),
            grpc::stamp_arrival,
        );
        let reflection = || {
            tonic_reflection::server::Builder::configure()
                .register_encoded_file_descriptor_set(pb::FILE_DESCRIPTOR_SET)
                .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
                // google.rpc.ErrorInfo and friends, so grpcurl can print error details.
                .register_encoded_file_descriptor_set(tonic_types::pb::FILE_DESCRIPTOR_SET)
        };
        // With caller authentication, health and reflection may still answer anyone.
        let (open_health, open_reflection) =
            self.settings.auth.as_ref().map_or((true, true), |auth| {
                (auth.open_health, auth.open_reflection)
            });
        let guard = |open| grpc::admit(self.access.clone(), open);
        let health_service = InterceptedService::new(health_service, guard(open_health));
        let reflection_v1 =
            InterceptedService::new(reflection().build_v1()?, guard(open_reflection));
        // grpcurl 1.8 speaks only v1alpha.
        let reflection_v1alpha =
            InterceptedService::new(reflection().build_v1alpha()?, guard(open_reflection));

        let ready = Arc::new(AtomicBool::new(true));
        let (stop_admin, admin_stopped) = tokio::sync::oneshot::channel::<()>();
        let admin = axum::serve(self.admin, admin_router(Arc::clone(&ready)))
            .with_graceful_shutdown(async {
                let _ = admin_stopped.await;
            });
        let admin = tokio::spawn(async move {
            if let Err(error) = admin.await {
                tracing::error!(%error, "admin HTTP server failed");
            }
        });

        let (stop_grpc, grpc_stopped) = tokio::sync::oneshot::channel::<()>();
        // gRPC and, for callers without it, the same calls as HTTP/JSON: one port,
        // so TLS, limits and probes are set up once.
        let routes = Routes::new(health_service)
            .add_service(reflection_v1)
            .add_service(reflection_v1alpha)
            .add_service(service)
            .into_axum_router()
            .merge(grpc::http_routes(
                gateway,
                server_settings.max_decode_message_bytes,
            ))
            .fallback(grpc::unknown_route);
        let router = Server::builder()
            .accept_http1(true)
            .max_concurrent_streams(server_settings.max_concurrent_streams)
            .add_routes(Routes::from(routes));
        let stopped = async {
            let _ = grpc_stopped.await;
        };
        let tcp = incoming(self.grpc);
        let mut server = match self.tls {
            Some(tls) => {
                tokio::spawn(router.serve_with_incoming_shutdown(tls_incoming(tcp, tls), stopped))
            }
            None => tokio::spawn(router.serve_with_incoming_shutdown(tcp, stopped)),
        };
        let tls = match &self.settings.tls {
            Some(tls) if tls.client_ca_file.is_some() => "mutual",
            Some(_) => "on",
            None => "off",
        };
        let caller_auth = self.access.enforced();
        tracing::info!(%grpc_addr, %admin_addr, tls, caller_auth, "gateway serving");

        tokio::select! {
            () = shutdown => {}
            result = &mut server => {
                let _ = stop_admin.send(());
                return Err(match result {
                    Ok(Err(error)) => StartupError::from(error),
                    Ok(Ok(())) => StartupError::Stopped("the gRPC server stopped by itself"),
                    Err(_) => StartupError::Stopped("the gRPC server task panicked"),
                });
            }
        }

        tracing::info!(
            drain_delay_ms = server_settings.drain_delay.as_millis() as u64,
            "shutdown requested: reporting NOT_SERVING and draining"
        );
        ready.store(false, Ordering::Release);
        health
            .set_service_status("", ServingStatus::NotServing)
            .await;
        health
            .set_not_serving::<CustomerUpgradeServiceServer<UpgradeGateway>>()
            .await;
        tokio::time::sleep(server_settings.drain_delay).await;

        let _ = stop_grpc.send(());
        // tonic waits for every connection to close, without limit; bound it.
        let grace = server_settings.shutdown_grace;
        let result = match tokio::time::timeout(grace, &mut server).await {
            Ok(Ok(result)) => result.map_err(StartupError::from),
            Ok(Err(_)) => Err(StartupError::Stopped("the gRPC server task panicked")),
            Err(_) => {
                tracing::warn!(
                    shutdown_grace_ms = grace.as_millis() as u64,
                    "in-flight calls did not finish within the shutdown grace; closing them"
                );
                server.abort();
                Ok(())
            }
        };
        // The admin server waits for its connections too; a half-sent request must
        // not keep the process alive.
        let _ = stop_admin.send(());
        let mut admin = admin;
        if tokio::time::timeout(grace, &mut admin).await.is_err() {
            admin.abort();
        }
        tracing::info!("gateway stopped");
        result
    }
}

/// Accepted gRPC connections: no Nagle delay (HTTP/2 writes small frames, which
/// Nagle would hold back until the peer's delayed ACK, some 40 ms), and TCP
/// keepalive so that connections to vanished peers are noticed and closed.
fn incoming(listener: TcpListener) -> TcpIncoming {
    TcpIncoming::from(listener)
        .with_nodelay(Some(true))
        .with_keepalive(Some(std::time::Duration::from_secs(60)))
}

/// TLS connections over accepted TCP connections. Each handshake runs in a task of
/// its own, bounded by the handshake timeout, so a slow or silent client never
/// holds up the others; a failed one (a scanner, a plaintext client) is logged at
/// debug and closed. When the server stops taking connections it drops the
/// stream, and the accept task ends, closing the listener.
fn tls_incoming(
    mut tcp: TcpIncoming,
    tls: Arc<TlsAcceptor>,
) -> ReceiverStream<io::Result<TlsStream<TcpStream>>> {
    // Handshaken connections wait here until the server takes them; a few suffice.
    let (ready, taken) = mpsc::channel(16);
    tokio::spawn(async move {
        loop {
            let accepted = tokio::select! {
                () = ready.closed() => break,
                accepted = tcp.next() => accepted,
            };
            let stream = match accepted {
                Some(Ok(stream)) => stream,
                // The server logs accept errors and goes on, as without TLS.
                Some(Err(error)) => {
                    let _ = ready.send(Err(error)).await;
                    continue;
                }
                None => break,
            };
            let (ready, tls) = (ready.clone(), Arc::clone(&tls));
            tokio::spawn(async move {
                let peer = stream.peer_addr().ok();
                match tls.accept(stream).await {
                    Ok(stream) => {
                        let _ = ready.send(Ok(stream)).await;
                    }
                    Err(error) => tracing::debug!(?peer, %error, "TLS handshake failed"),
                }
            });
        }
    });
    ReceiverStream::new(taken)
}

/// `/healthz`: the process is alive. `/readyz`: it accepts work (not draining).
/// Neither asks WeCom: an outage there must not take every replica out of service.
fn admin_router(ready: Arc<AtomicBool>) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route(
            "/readyz",
            get(move || {
                let ready = ready.load(Ordering::Acquire);
                async move {
                    if ready {
                        (StatusCode::OK, "ready\n")
                    } else {
                        (StatusCode::SERVICE_UNAVAILABLE, "draining\n")
                    }
                }
            }),
        )
}
