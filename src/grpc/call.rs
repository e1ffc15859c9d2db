//! What the edge knows of a call besides its message, and the one place a call's
//! outcome is recorded.

use std::{
    future::Future,
    net::SocketAddr,
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
use tracing::Span;

use super::{
    APP_METADATA_KEY, deadline,
    error::{CallError, Failure, Fault},
    status,
};
use crate::{
    auth::{Access, AuthError, Caller},
    telemetry::ErrorChain,
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

/// One call in progress.
pub(super) struct Call {
    metadata: MetadataMap,
    arrival: Instant,
    /// The caller's address, for the audit.
    pub(super) peer: Option<SocketAddr>,
    /// Who the caller is, or why it is not recognised: decided once, on arrival.
    caller: Result<Caller, AuthError>,
    /// The RPC's span: the handler runs in it.
    pub(super) span: Span,
}

impl Call {
    /// Takes a gRPC request apart: the call, and its message.
    pub(super) fn accept<T>(
        method: &'static str,
        request: Request<T>,
        access: &Access,
    ) -> (Self, T) {
        let (metadata, extensions, message) = request.into_parts();
        let arrival = extensions
            .get::<Arrival>()
            .map_or_else(Instant::now, |arrival| arrival.0);
        (
            Self::new(method, metadata, &extensions, arrival, access),
            message,
        )
    }

    /// A call of `method` that arrived at `arrival`, on the connection the
    /// extensions describe, from the caller `access` recognises.
    pub(super) fn new(
        method: &'static str,
        metadata: MetadataMap,
        extensions: &Extensions,
        arrival: Instant,
        access: &Access,
    ) -> Self {
        let peer = Peer::of(extensions);
        let caller = access.identify(&metadata, peer.certificate.as_ref());
        let span = tracing::info_span!(
            "rpc",
            rpc.system = "grpc",
            rpc.service = "wecom.kf.v1.CustomerUpgradeService",
            rpc.method = method,
            rpc.grpc.status_code = tracing::field::Empty,
            enduser.id = caller.as_ref().ok().map(Caller::name),
            wecom.app = tracing::field::Empty,
            wecom.errcode = tracing::field::Empty,
        );
        Call {
            metadata,
            arrival,
            peer: peer.addr,
            caller,
            span,
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
            return Err(CallError::DeadlineExceeded { waited: budget }.into());
        }
        // The work's own waits (a rate-limit slot, a turn to reach WeCom) end a
        // little earlier, so that they report what they waited for, with nothing
        // sent, rather than this timeout, which means a request was in flight.
        let deadline = Instant::now() + budget;
        let work = work(deadline.checked_sub(WAIT_MARGIN).unwrap_or(deadline));
        let work = tokio::time::timeout_at(deadline.into(), work);
        let result = tokio::select! {
            result = work => result,
            () = cutoff.clone().reached() => return Err(CallError::ShuttingDown.into()),
        };
        match result {
            Ok(result) => Ok(result?),
            Err(_) if caller.is_some_and(|c| c <= limit) => {
                Err(CallError::DeadlineExceeded { waited: budget }.into())
            }
            Err(_) => Err(CallError::CallTimeout { timeout: limit }.into()),
        }
    }

    /// Time left before the caller's deadline, less the headroom.
    pub(super) fn caller_budget(&self) -> Option<Duration> {
        let timeout = deadline::caller_timeout(&self.metadata)?;
        let headroom = DEADLINE_HEADROOM.max(timeout / 20);
        Some(timeout.saturating_sub(self.arrival.elapsed() + headroom))
    }

    /// Ends the call, over gRPC or HTTP: records its status on the span and logs a
    /// failure once, at the level its fault calls for (the cause chain stays in the
    /// log; the caller gets the mapped status).
    pub(super) fn finish<T>(self, result: Result<T, Failure>) -> Result<T, Status> {
        let _in_span = self.span.enter();
        let failure = match result {
            Ok(message) => {
                self.span.record("rpc.grpc.status_code", Code::Ok as i32);
                tracing::debug!(code = ?Code::Ok, "rpc finished");
                return Ok(message);
            }
            Err(failure) => failure,
        };
        let code = failure.status.code();
        self.span.record("rpc.grpc.status_code", code as i32);
        if let Some(errcode) = failure.error.errcode() {
            self.span.record("wecom.errcode", errcode);
        }
        let error = ErrorChain(&failure.error);
        match failure.fault {
            Fault::Caller => {
                tracing::info!(code = ?code, reason = failure.reason, %error, "call refused")
            }
            Fault::Operator | Fault::WeCom => tracing::warn!(
                code = ?code,
                reason = failure.reason,
                fault = ?failure.fault,
                %error,
                "call failed"
            ),
        }
        Err(failure.status)
    }
}
