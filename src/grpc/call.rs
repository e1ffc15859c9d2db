//! What the edge knows of a call besides its message, and the one place a call's
//! outcome is recorded: its span's status, its metrics, and its one log line.

use std::{
    future::Future,
    net::SocketAddr,
    sync::{
        Arc, OnceLock,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use tokio::sync::watch;
use tonic::{
    Code, Extensions, Request, Status,
    metadata::MetadataMap,
    transport::{
        CertificateDer,
        server::{TcpConnectInfo, TlsConnectInfo},
    },
};
use tracing::{Span, field::Empty};

use super::{
    APP_METADATA_KEY, deadline,
    error::{CallError, Failure, Fault},
    status::{self, code_name},
};
use crate::{
    auth::{Access, AuthError, Caller},
    telemetry::{
        ACCESS_TARGET, ErrorChain, Metrics,
        metrics::{FinishedCall, InFlight},
        traces::{self, Trace},
    },
    wecom,
};

/// Answers are computed at least this much before the caller's deadline, so the
/// caller gets the gateway's DEADLINE_EXCEEDED (with details) rather than the bare
/// CANCELLED tonic sends when the deadline passes first.
const DEADLINE_HEADROOM: Duration = Duration::from_millis(20);

/// How much earlier than the call's budget the WeCom work's own waits end.
const WAIT_MARGIN: Duration = Duration::from_millis(5);

/// When a call arrived: the caller's deadline counts from here.
#[derive(Debug, Clone, Copy)]
struct Arrival(Instant);

/// Interceptor for the service: stamps each call's arrival before its message is
/// decoded.
pub fn stamp_arrival(mut request: Request<()>) -> Result<Request<()>, Status> {
    request.extensions_mut().insert(Arrival(Instant::now()));
    Ok(request)
}

/// What the connection tells of the caller: its address and, under mTLS, the
/// client certificate the handshake verified.
pub(super) struct Peer {
    pub(super) addr: Option<SocketAddr>,
    pub(super) certificate: Option<CertificateDer<'static>>,
}

impl Peer {
    /// From a request's extensions, over plain TCP or TLS (gRPC and HTTP alike).
    pub(super) fn of(extensions: &Extensions) -> Self {
        if let Some(tls) = extensions.get::<TlsConnectInfo<TcpConnectInfo>>() {
            return Self {
                addr: tls.get_ref().remote_addr(),
                certificate: tls.peer_certs().and_then(|chain| chain.first().cloned()),
            };
        }
        Self {
            addr: extensions
                .get::<TcpConnectInfo>()
                .and_then(TcpConnectInfo::remote_addr),
            certificate: None,
        }
    }
}

/// Interceptor for the services besides the gateway's own (health, reflection):
/// unless `open`, their callers must prove who they are like any other.
pub fn admit(
    access: Access,
    open: bool,
) -> impl FnMut(Request<()>) -> Result<Request<()>, Status> + Clone {
    move |request: Request<()>| {
        if open {
            return Ok(request);
        }
        let peer = Peer::of(request.extensions());
        match access.identify(request.metadata(), peer.certificate.as_ref()) {
            Ok(_) => Ok(request),
            Err(why) => {
                let failure = status::refuse(CallError::Unauthenticated(why));
                tracing::debug!(reason = failure.reason, peer = ?peer.addr, "call refused");
                Err(failure.status)
            }
        }
    }
}

/// Raised when the shutdown grace is running out: calls still waiting for WeCom
/// end at once with SHUTTING_DOWN, so each gets a real status and its audit event
/// before the server closes its connections.
#[derive(Debug, Clone)]
pub struct Cutoff(watch::Receiver<bool>);

impl Cutoff {
    /// A cutoff, and the sender that raises it.
    pub fn new() -> (watch::Sender<bool>, Self) {
        let (raise, cutoff) = watch::channel(false);
        (raise, Self(cutoff))
    }

    /// Completes once the cutoff is raised; never if its sender is dropped unraised.
    async fn reached(mut self) {
        if self.0.wait_for(|raised| *raised).await.is_err() {
            std::future::pending::<()>().await;
        }
    }
}

/// The RPCs of `wecom.kf.v1.CustomerUpgradeService`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Method {
    GetUpgradeConfig,
    UpgradeService,
    CancelUpgrade,
}

impl Method {
    /// The method's name, as `rpc.method`, metrics and logs give it.
    pub(super) const fn name(self) -> &'static str {
        match self {
            Method::GetUpgradeConfig => "GetUpgradeConfig",
            Method::UpgradeService => "UpgradeService",
            Method::CancelUpgrade => "CancelUpgrade",
        }
    }

    /// `service/method`: the RPC span's name, as the OpenTelemetry RPC conventions
    /// want it.
    const fn span_name(self) -> &'static str {
        match self {
            Method::GetUpgradeConfig => "wecom.kf.v1.CustomerUpgradeService/GetUpgradeConfig",
            Method::UpgradeService => "wecom.kf.v1.CustomerUpgradeService/UpgradeService",
            Method::CancelUpgrade => "wecom.kf.v1.CustomerUpgradeService/CancelUpgrade",
        }
    }
}

/// One call in progress.
pub(super) struct Call {
    method: Method,
    metadata: MetadataMap,
    arrival: Instant,
    /// The caller's address, for the audit.
    pub(super) peer: Option<SocketAddr>,
    /// Who the caller is, or why it is not recognised: decided once, on arrival.
    caller: Result<Caller, AuthError>,
    /// The RPC's span: the handler runs in it. Disabled (free) unless traces are
    /// on or logs are at debug.
    pub(super) span: Span,
    /// The configured app serving the call, once it is known.
    app: OnceLock<Arc<str>>,
    /// The trace the caller's `traceparent` named, for the log line when the
    /// gateway exports no traces of its own.
    caller_trace: Option<Trace>,
    metrics: Metrics,
    /// Counts the call in flight until it is dropped.
    _in_flight: InFlight,
    /// The call's one log line is written (the audit line of an upgrade or cancel).
    logged: AtomicBool,
}

/// What a call's one log line says: the access line, or the audit line that
/// stands for it.
pub(super) struct Line<'a> {
    pub(super) method: &'static str,
    /// The configured app, or empty if the call never got one.
    pub(super) app: &'a str,
    pub(super) code: &'static str,
    /// The ErrorInfo reason; absent for a success.
    pub(super) reason: Option<&'static str>,
    pub(super) errcode: Option<i64>,
    pub(super) duration_ms: f64,
    pub(super) trace_id: Option<opentelemetry::trace::TraceId>,
    pub(super) fault: Option<Fault>,
    /// The cause chain of a failure.
    pub(super) error: Option<ErrorChain<'a>>,
}

/// Writes a call's line (see [`Line`]) on `target`: at info when it succeeded or
/// the caller must act, at warn when an operator should look (WeCom down or slow,
/// credentials, permissions). More fields and the message follow the line.
macro_rules! call_line {
    (target: $target:expr, $line:expr, $($rest:tt)+) => {{
        let line: &$crate::grpc::call::Line<'_> = &$line;
        let trace_id = line.trace_id.map(tracing::field::display);
        let fault = line.fault.map($crate::grpc::error::Fault::as_str);
        let error = line.error.map(tracing::field::display);
        // tracing fixes an event's level where it is written: one event per level.
        match line.fault {
            None | Some($crate::grpc::error::Fault::Caller) => tracing::info!(
                target: $target,
                method = line.method,
                code = line.code,
                reason = line.reason,
                errcode = line.errcode,
                duration_ms = line.duration_ms,
                trace_id,
                fault,
                error,
                $($rest)+
            ),
            Some(_) => tracing::warn!(
                target: $target,
                method = line.method,
                code = line.code,
                reason = line.reason,
                errcode = line.errcode,
                duration_ms = line.duration_ms,
                trace_id,
                fault,
                error,
                $($rest)+
            ),
        }
    }};
}
pub(super) use call_line;

impl Call {
    /// Takes a gRPC request apart: the call, and its message.
    pub(super) fn accept<T>(
        method: Method,
        request: Request<T>,
        access: &Access,
        metrics: &Metrics,
    ) -> (Self, T) {
        let (metadata, extensions, message) = request.into_parts();
        let arrival = extensions
            .get::<Arrival>()
            .map_or_else(Instant::now, |arrival| arrival.0);
        let call = Self::new(method, metadata, &extensions, arrival, access, metrics);
        (call, message)
    }

    /// A call of `method` that arrived at `arrival`, on the connection the
    /// extensions describe, from the caller `access` recognises.
    pub(super) fn new(
        method: Method,
        metadata: MetadataMap,
        extensions: &Extensions,
        arrival: Instant,
        access: &Access,
        metrics: &Metrics,
    ) -> Self {
        let peer = Peer::of(extensions);
        let caller = access.identify(&metadata, peer.certificate.as_ref());
        let span = tracing::debug_span!(
            "rpc",
            otel.name = method.span_name(),
            otel.kind = "server",
            otel.status_code = Empty,
            rpc.system = "grpc",
            rpc.service = "wecom.kf.v1.CustomerUpgradeService",
            rpc.method = method.name(),
            rpc.grpc.status_code = Empty,
            enduser.id = caller.as_ref().ok().map(Caller::name),
            error.type = Empty,
            wecom.app = Empty,
            wecom.errcode = Empty,
        );
        let parent = traces::caller_context(&metadata);
        let caller_trace = parent.as_ref().and_then(traces::context_trace);
        if let Some(parent) = parent {
            traces::set_parent(&span, parent);
        }
        Call {
            method,
            metadata,
            arrival,
            peer: peer.addr,
            caller,
            span,
            app: OnceLock::new(),
            caller_trace,
            metrics: metrics.clone(),
            _in_flight: metrics.call_started(method.name()),
            logged: AtomicBool::new(false),
        }
    }

    /// The caller, if it proved who it is.
    pub(super) fn caller(&self) -> Result<&Caller, CallError> {
        self.caller
            .as_ref()
            .map_err(|why| CallError::Unauthenticated(why.clone()))
    }

    /// The app the caller asked for, if any; sent at most once.
    pub(super) fn requested_app(&self) -> Result<Option<&str>, CallError> {
        let invalid = |problem| CallError::InvalidMetadata {
            key: APP_METADATA_KEY,
            problem,
        };
        let mut values = self.metadata.get_all(APP_METADATA_KEY).iter();
        let Some(value) = values.next() else {
            return Ok(None);
        };
        if values.next().is_some() {
            return Err(invalid("was sent more than once; send it once"));
        }
        value
            .to_str()
            .map(Some)
            .map_err(|_| invalid("must be printable ASCII"))
    }

    /// The configured app that serves the call.
    pub(super) fn serve_with(&self, app: &Arc<str>) {
        self.span.record("wecom.app", &**app);
        let _ = self.app.set(Arc::clone(app));
    }

    /// Runs the WeCom work within the time left: `limit` (the gateway's call
    /// timeout) or the caller's deadline less the headroom, whichever is sooner,
    /// and no later than the shutdown's `cutoff`. The work is told its deadline.
    pub(super) async fn within<T, F>(
        &self,
        limit: Duration,
        cutoff: &Cutoff,
        work: impl FnOnce(Instant) -> F,
    ) -> Result<T, Failure>
    where
        F: Future<Output = Result<T, wecom::Failed>>,
    {
        let caller = self.caller_budget();
        let budget = caller.map_or(limit, |c| c.min(limit));
        if budget.is_zero() {
            // No time left: starting the call would only send WeCom work nobody awaits.
            return Err(CallError::DeadlineExceeded {
                waited: budget,
                sent: false,
            }
            .into());
        }
        // The work's own waits (a rate-limit slot, a turn to reach WeCom) end a
        // little earlier, so that they report what they waited for, with nothing
        // sent, rather than this timeout, which means a request was in flight.
        let deadline = Instant::now() + budget;
        let work = work(deadline.checked_sub(WAIT_MARGIN).unwrap_or(deadline));
        let work = tokio::time::timeout_at(deadline.into(), work);
        let result = tokio::select! {
            // An answer that is in wins over a cutoff raised in the same instant.
            biased;
            result = work => result,
            () = cutoff.clone().reached() => return Err(CallError::ShuttingDown.into()),
        };
        let callers_deadline = caller.is_some_and(|c| c <= limit);
        match result {
            // Still waiting for a token when the caller's deadline came: its deadline,
            // though nothing was sent.
            Ok(Err(wecom::Failed {
                error: wecom::Error::NoToken { .. },
                may_have_taken_effect: false,
            })) if callers_deadline => Err(CallError::DeadlineExceeded {
                waited: budget,
                sent: false,
            }
            .into()),
            Ok(result) => Ok(result?),
            Err(_) if callers_deadline => Err(CallError::DeadlineExceeded {
                waited: budget,
                sent: true,
            }
            .into()),
            Err(_) => Err(CallError::CallTimeout { timeout: limit }.into()),
        }
    }

    /// Time left before the caller's deadline, less the headroom.
    pub(super) fn caller_budget(&self) -> Option<Duration> {
        let timeout = deadline::caller_timeout(&self.metadata)?;
        let headroom = DEADLINE_HEADROOM.max(timeout / 20);
        Some(timeout.saturating_sub(self.arrival.elapsed() + headroom))
    }

    /// The line that records the call's `outcome`, for a line written elsewhere
    /// (the audit line): the call then writes no access line of its own.
    pub(super) fn line_for<'a, T>(&'a self, outcome: &'a Result<T, Failure>) -> Line<'a> {
        self.logged.store(true, Ordering::Relaxed);
        self.line(outcome, self.trace())
    }

    fn line<'a, T>(&'a self, outcome: &'a Result<T, Failure>, trace: Option<Trace>) -> Line<'a> {
        let failure = outcome.as_ref().err();
        let code = failure.map_or(Code::Ok, |f| f.status.code());
        Line {
            method: self.method.name(),
            app: self.app.get().map_or("", |app| app),
            code: code_name(code),
            reason: failure.map(|f| f.reason),
            errcode: failure.and_then(|f| f.error.errcode()),
            duration_ms: self.arrival.elapsed().as_micros() as f64 / 1000.0,
            trace_id: trace.map(|trace| trace.id),
            fault: failure.map(|f| f.fault),
            error: failure.map(|f| ErrorChain(&f.error)),
        }
    }

    /// The trace the call is part of: the gateway's own when it exports traces,
    /// else the one the caller named.
    fn trace(&self) -> Option<Trace> {
        traces::span_trace(&self.span).or(self.caller_trace)
    }

    /// Ends the call, over gRPC or HTTP: records its status on the span, counts it,
    /// and writes its one log line unless its audit line was that line (the cause
    /// chain stays in the log; the caller gets the mapped status).
    pub(super) fn finish<T>(self, result: Result<T, Failure>) -> Result<T, Status> {
        let failure = result.as_ref().err();
        let code = failure.map_or(Code::Ok, |f| f.status.code());
        self.span.record("rpc.grpc.status_code", code as i32);
        if let Some(failure) = failure {
            self.span.record("error.type", failure.reason);
            if let Some(errcode) = failure.error.errcode() {
                self.span.record("wecom.errcode", errcode);
            }
            if is_server_error(code) {
                self.span.record("otel.status_code", "error");
            }
        }
        let trace = self.trace();
        self.metrics.call_finished(FinishedCall {
            method: self.method.name(),
            app: self.app.get(),
            code: code_name(code),
            reason: failure.map_or("", |f| f.reason),
            fault: failure.map_or("", |f| f.fault.as_str()),
            elapsed: self.arrival.elapsed(),
            trace: trace.filter(|t| t.exported).map(|t| t.id),
        });
        if !self.logged.load(Ordering::Relaxed) {
            let line = self.line(&result, trace);
            call_line!(target: ACCESS_TARGET, line, app = line.app, "call finished");
        }
        result.map_err(|failure| failure.status)
    }
}

/// The codes that mark a server span as failed, per the OpenTelemetry gRPC
/// conventions; the others are the caller's business.
fn is_server_error(code: Code) -> bool {
    matches!(
        code,
        Code::Unknown
            | Code::DeadlineExceeded
            | Code::Unimplemented
            | Code::Internal
            | Code::Unavailable
            | Code::DataLoss
    )
}
