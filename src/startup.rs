//! Builds the application (binds its listeners) and runs it until a shutdown signal.

use std::{
    future::Future,
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
};

use axum::{
    Router,
    http::{HeaderMap, StatusCode, header},
    routing::get,
};
use tokio::net::TcpListener;
use tonic::{
    service::{Routes, interceptor::InterceptedService},
    transport::{Server, server::TcpIncoming},
};
use tonic_health::ServingStatus;

use crate::{
    config::{Settings, is_cleartext_remote},
    grpc::{self, CustomerUpgradeServiceServer, UpgradeGateway, pb},
    telemetry::{Metrics, redacted},
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
    metrics: Metrics,
    grpc: TcpListener,
    admin: TcpListener,
}

impl Application {
    /// Builds the WeCom clients and the metrics registry, and binds both listeners
    /// (port 0 picks a free port).
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
        let (adapter, specs) = settings.adapter();
        let metrics = Metrics::new();
        let apps = Apps::new(&adapter, specs, settings.default_app.clone(), &metrics)?;
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
            metrics,
            grpc,
            admin,
        })
    }

    /// The bound gRPC address.
    pub fn grpc_addr(&self) -> SocketAddr {
        self.grpc.local_addr().unwrap_or(self.settings.listen)
    }

    /// The gateway's metrics, as `/metrics` serves them.
    pub fn metrics(&self) -> &Metrics {
        &self.metrics
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
            self.metrics.clone(),
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
        let reflection_v1 = reflection().build_v1()?;
        // grpcurl 1.8 speaks only v1alpha.
        let reflection_v1alpha = reflection().build_v1alpha()?;

        let ready = Arc::new(AtomicBool::new(true));
        let (stop_admin, admin_stopped) = tokio::sync::oneshot::channel::<()>();
        let admin = axum::serve(self.admin, admin_router(Arc::clone(&ready), self.metrics))
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
        let server = Server::builder()
            .accept_http1(true)
            .max_concurrent_streams(server_settings.max_concurrent_streams)
            .add_routes(Routes::from(routes))
            .serve_with_incoming_shutdown(incoming(self.grpc), async {
                let _ = grpc_stopped.await;
            });
        let mut server = tokio::spawn(server);
        tracing::info!(%grpc_addr, %admin_addr, "gateway serving");

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

/// `/healthz`: the process is alive. `/readyz`: it accepts work (not draining).
/// Neither asks WeCom: an outage there must not take every replica out of service.
/// `/metrics`: Prometheus metrics, in OpenMetrics (with exemplars) for a scraper
/// that asks for it, else in the Prometheus text format.
fn admin_router(ready: Arc<AtomicBool>, metrics: Metrics) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route(
            "/metrics",
            get(move |headers: HeaderMap| {
                let openmetrics = headers
                    .get_all(header::ACCEPT)
                    .iter()
                    .filter_map(|accept| accept.to_str().ok())
                    .any(|accept| accept.contains("application/openmetrics-text"));
                let (content_type, body) = metrics.encode(openmetrics);
                async move { ([(header::CONTENT_TYPE, content_type)], body) }
            }),
        )
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
