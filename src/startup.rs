//! Builds the application (binds its listeners) and runs it until a shutdown signal.

use std::{
    future::Future,
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use axum::{
    Router,
    http::{HeaderMap, StatusCode, header},
    routing::get,
};
use tokio::net::TcpListener;
use tonic::{
    service::{Routes, interceptor::InterceptedService},
    transport::Server,
};
use tonic_health::ServingStatus;

use crate::{
    auth::Access,
    callback::Callbacks,
    config::{
        APPS_FILE_GROUP, ProcessEnv, app_specs, corp_specs, corps_group, parse_apps_file,
        parse_corps,
    },
    config::{Settings, is_cleartext_remote, is_exposed},
    grpc::{self, CallLimits, CustomerUpgradeServiceServer, Cutoff, UpgradeGateway, pb},
    listener::{Incoming, ListenerSettings},
    reload::{self, Digest},
    telemetry::{Metrics, redacted},
    tls::{TlsAcceptor, TlsError},
    wecom::{AppChanges, AppSpec, Apps, AppsError},
};

/// Why the gateway could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum StartupError {
    /// A listener could not be bound.
    #[error("cannot listen on {addr} ({what})")]
    Bind {
        /// Which listener.
        what: &'static str,
        /// The address asked for.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
    /// The WeCom clients could not be built (the HTTP client: TLS, proxies).
    #[error("cannot set up the WeCom apps")]
    Apps(#[from] AppsError),
    /// The gRPC port's TLS files cannot be used.
    #[error("cannot set up TLS on the gRPC port")]
    Tls(#[from] TlsError),
    /// Reflection could not read the descriptor sets.
    #[error("cannot build server reflection")]
    Reflection(#[from] tonic_reflection::server::Error),
    /// The gRPC server failed.
    #[error("gRPC server failed")]
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
    /// The endpoint WeCom pushes suite tickets to, when a suite is configured.
    callbacks: Option<(Arc<Callbacks>, TcpListener)>,
    /// Keeps the watchers of the corps files and the apps file running.
    _watched: Arc<Apps>,
    access: Access,
    tls: Option<Arc<TlsAcceptor>>,
    metrics: Metrics,
    grpc: TcpListener,
    admin: TcpListener,
}

impl Application {
    /// Builds the WeCom clients, the metrics registry, TLS and caller
    /// authentication (both start watching their files), and binds both listeners
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
        if let Some(warning) = is_exposed(&settings) {
            tracing::warn!(listen = %settings.listen, "INSECURE: {warning}");
        }
        let (adapter, suites, specs) = settings.adapter();
        let metrics = Metrics::new();
        let apps = Apps::new(
            &adapter,
            suites,
            specs,
            settings.default_app.clone(),
            &metrics,
        )?;
        let watched = Arc::new(apps.clone());
        watch_app_files(&settings, &watched);
        let access = match &settings.auth {
            Some(auth) => {
                let apps = apps.clone();
                Access::from_file(
                    auth.callers.clone(),
                    auth.callers_file.clone(),
                    auth.reload_interval,
                    move |app| apps.get(app).is_some(),
                )
            }
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
        let callbacks = if settings.suites.is_empty() {
            None
        } else {
            let listener = bind("suite callbacks", settings.callback.listen).await?;
            let callbacks = Callbacks::new(
                apps.clone(),
                &settings.suites,
                settings.callback.clone(),
                &metrics,
            );
            Some((Arc::new(callbacks), listener))
        };
        Ok(Self {
            settings,
            apps,
            callbacks,
            _watched: watched,
            access,
            tls,
            metrics,
            grpc,
            admin,
        })
    }

    /// The bound gRPC address.
    pub fn grpc_addr(&self) -> SocketAddr {
        self.grpc.local_addr().unwrap_or(self.settings.listen)
    }

    /// The bound address of the suites' callback endpoint, if a suite is configured.
    pub fn callback_addr(&self) -> Option<SocketAddr> {
        let (_, listener) = self.callbacks.as_ref()?;
        listener.local_addr().ok()
    }

    /// The gateway's apps (those of its configuration and files, and its suites).
    pub fn apps(&self) -> &Apps {
        &self.apps
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
        let callback_addr = self.callback_addr();
        let server_settings = self.settings.server.clone();

        let (health, health_service) = tonic_health::server::health_reporter();
        health
            .set_serving::<CustomerUpgradeServiceServer<UpgradeGateway>>()
            .await;
        let call_timeout = self.settings.upstream.call_timeout;
        let limits = CallLimits {
            call_timeout,
            max_calls_in_flight: server_settings.max_calls_in_flight,
        };
        let (raise_cutoff, cutoff) = Cutoff::new();
        let gateway = Arc::new(UpgradeGateway::new(
            self.apps,
            limits,
            cutoff,
            self.access.clone(),
            self.metrics.clone(),
        ));
        let in_flight = Arc::clone(&gateway);
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
        let admin = axum::serve(self.admin, admin_router(Arc::clone(&ready), self.metrics))
            .with_graceful_shutdown(async {
                let _ = admin_stopped.await;
            });
        let admin = tokio::spawn(async move {
            if let Err(error) = admin.await {
                tracing::error!(%error, "admin HTTP server failed");
            }
        });

        let (stop_callbacks, callbacks_stopped) = tokio::sync::oneshot::channel::<()>();
        let callbacks = self.callbacks.map(|(callbacks, listener)| {
            tokio::spawn(callbacks.serve(listener, async {
                let _ = callbacks_stopped.await;
            }))
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
                server_settings.request_read_timeout,
            ))
            .fallback(grpc::unknown_route);
        let listener = ListenerSettings {
            section: "server",
            max_connections: server_settings.max_connections,
            handshake_timeout: server_settings.handshake_timeout,
        };
        let router = Server::builder()
            .accept_http1(true)
            .max_concurrent_streams(server_settings.max_concurrent_streams)
            // A request that has not arrived whole by then is dropped; the call's
            // WeCom work has its own bound inside.
            .timeout(server_settings.request_read_timeout + call_timeout)
            .http2_keepalive_interval(Some(server_settings.keepalive_interval))
            .http2_keepalive_timeout(Some(server_settings.keepalive_timeout))
            // h2 closes a connection whose peer resets more than 20 streams before
            // they are accepted: callers cancelling on their deadline under load do
            // exactly that. A few hundred lets them, and still stops a rapid-reset
            // flood (CVE-2023-44487), as does the cap on streams the server itself
            // resets, which tonic leaves unlimited unless set.
            .http2_max_pending_accept_reset_streams(Some(MAX_PENDING_RESET_STREAMS))
            .http2_max_local_error_reset_streams(Some(MAX_LOCAL_ERROR_RESET_STREAMS))
            .add_routes(Routes::from(routes));
        let stopped = async {
            let _ = grpc_stopped.await;
        };
        let mut server = match self.tls {
            Some(tls) => {
                let incoming = Incoming::tls(self.grpc, listener, tls);
                tokio::spawn(router.serve_with_incoming_shutdown(incoming, stopped))
            }
            None => {
                let incoming = Incoming::new(self.grpc, listener);
                tokio::spawn(router.serve_with_incoming_shutdown(incoming, stopped))
            }
        };
        let tls = match &self.settings.tls {
            Some(tls) if tls.client_ca_file.is_some() => "mutual",
            Some(_) => "on",
            None => "off",
        };
        let caller_auth = self.access.enforced();
        tracing::info!(%grpc_addr, %admin_addr, ?callback_addr, tls, caller_auth, "gateway serving");

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
        // tonic waits for every connection to close, without limit. Calls still
        // waiting for WeCom near the end of the grace are cut off with a status of
        // their own (and their audit event); what is left after the grace is closed.
        let grace = server_settings.shutdown_grace;
        let answer_time = (grace / 10).clamp(CUTOFF_ANSWER_TIME.0, CUTOFF_ANSWER_TIME.1);
        let before_cutoff = grace.saturating_sub(answer_time);
        let finished = match tokio::time::timeout(before_cutoff, &mut server).await {
            Ok(finished) => Some(finished),
            Err(_) => {
                tracing::warn!(
                    calls_in_flight = in_flight.calls_in_flight(),
                    shutdown_grace_ms = grace.as_millis() as u64,
                    "the shutdown grace is running out: calls still waiting for WeCom end \
                     with SHUTTING_DOWN"
                );
                let _ = raise_cutoff.send(true);
                tokio::time::timeout(grace - before_cutoff, &mut server)
                    .await
                    .ok()
            }
        };
        let result = match finished {
            Some(Ok(result)) => result.map_err(StartupError::from),
            Some(Err(_)) => Err(StartupError::Stopped("the gRPC server task panicked")),
            None => {
                tracing::warn!(
                    shutdown_grace_ms = grace.as_millis() as u64,
                    "connections still open after the shutdown grace; closing them"
                );
                server.abort();
                Ok(())
            }
        };
        // The admin server waits for its connections too; a half-sent request must
        // not keep the process alive.
        let _ = stop_admin.send(());
        let _ = stop_callbacks.send(());
        if let Some(mut callbacks) = callbacks
            && tokio::time::timeout(grace, &mut callbacks).await.is_err()
        {
            callbacks.abort();
        }
        let mut admin = admin;
        if tokio::time::timeout(grace, &mut admin).await.is_err() {
            admin.abort();
        }
        tracing::info!("gateway stopped");
        result
    }
}

/// Streams a peer may reset before the server accepts them, per connection.
const MAX_PENDING_RESET_STREAMS: usize = 500;
/// Streams the server may reset for protocol errors, per connection.
const MAX_LOCAL_ERROR_RESET_STREAMS: usize = 1024;
/// Time left between cutting off calls at the end of the shutdown grace and
/// closing their connections, for the answers to be written: a tenth of the grace,
/// within these bounds.
const CUTOFF_ANSWER_TIME: (Duration, Duration) =
    (Duration::from_millis(100), Duration::from_secs(1));

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

/// Reads the apps a changed file lists, or says why it cannot be used.
type SpecsOf = Box<dyn Fn(Vec<u8>) -> Result<Vec<AppSpec>, String> + Send + Sync>;

/// Re-reads each suite's corps file and the apps file when they change, and
/// makes the apps they list the apps of their group: added, rebuilt when changed,
/// removed when gone; a version that cannot be used is logged and the apps stay.
fn watch_app_files(settings: &Settings, apps: &Arc<Apps>) {
    // `seen`: the digest of the bytes loaded with the configuration, so that a
    // change made since is seen at the first check.
    let watch = |what: &'static str,
                 path: &std::path::Path,
                 interval: Duration,
                 seen: Digest,
                 group: String,
                 specs: SpecsOf| {
        reload::watch(
            what,
            vec![path.to_path_buf()],
            interval,
            seen,
            Arc::downgrade(apps),
            move |apps: &Apps, mut contents| {
                let specs = specs(contents.pop().unwrap_or_default())?;
                let changes = apps
                    .replace_group(&group, specs)
                    .map_err(|e| e.to_string())?;
                log_changes(&group, &changes);
                Ok(())
            },
        );
    };
    for (name, suite) in &settings.suites {
        let Some(path) = &suite.corps_file else {
            continue;
        };
        let (name, suite_settings) = (name.clone(), suite.clone());
        watch(
            "suite corps",
            path,
            suite.reload_interval,
            suite.corps_digest,
            corps_group(&name),
            Box::new(move |bytes| {
                let corps = parse_corps(&bytes)?;
                Ok(corp_specs(&name, &suite_settings, &corps))
            }),
        );
    }
    if let Some(file) = &settings.apps_file {
        let api_base = file.api_base.clone();
        watch(
            "apps",
            &file.path,
            file.reload_interval,
            file.digest,
            APPS_FILE_GROUP.to_owned(),
            Box::new(move |bytes| {
                let apps =
                    parse_apps_file(&bytes, &ProcessEnv, &api_base).map_err(|e| e.to_string())?;
                Ok(app_specs(&apps, APPS_FILE_GROUP))
            }),
        );
    }
}

fn log_changes(group: &str, changes: &AppChanges) {
    tracing::info!(
        from = group,
        added = ?changes.added,
        changed = ?changes.changed,
        removed = ?changes.removed,
        "apps reloaded"
    );
}
