//! Observability: structured logs, OpenTelemetry traces, Prometheus metrics.
//!
//! - logs: [`subscriber`] builds the subscriber for any writer, so tests can send
//!   the gateway's output to a sink; [`init`] installs it for the process, on
//!   stderr. Each RPC writes one line, on [`ACCESS_TARGET`] (or, for an upgrade or
//!   cancel, its audit line on `audit`, which carries the same fields);
//! - [`traces`]: spans over OTLP, configured by the standard `OTEL_*` variables,
//!   and the W3C trace context callers send;
//! - [`metrics`]: the Prometheus registry served on the admin port's `/metrics`.
//!
//! The spans (one per RPC, WeCom request and token fetch) are at DEBUG: at the
//! default level no log line formats them, so logging costs one line per call;
//! the OpenTelemetry layer, when traces are on, takes them whatever the level.

pub mod metrics;
pub mod traces;

use std::{borrow::Cow, error::Error, fmt, io::IsTerminal};

use tracing::Subscriber;
use tracing_subscriber::{EnvFilter, Layer, Registry, fmt::MakeWriter, layer::SubscriberExt};
use url::Url;

pub use metrics::Metrics;
pub use traces::{Traces, TracesError};

use crate::config::ProcessEnv;

/// The filter used when `RUST_LOG` is unset: our events at info, the HTTP/2
/// machinery only when it warns.
pub const DEFAULT_FILTER: &str = "info,h2=warn,hyper=warn,hyper_util=warn,tower=warn";

/// The `tracing` target of the access log: one line per RPC, with method, app,
/// code, reason, errcode, duration and trace id.
pub const ACCESS_TARGET: &str = "wecom_kf_upgrade::access";

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    /// One JSON object per line, for log pipelines.
    Json,
    /// Human-readable lines, for a terminal.
    Pretty,
}

impl LogFormat {
    /// `LOG_FORMAT=json|pretty`; otherwise JSON unless stderr is a terminal.
    pub fn from_env() -> Self {
        match std::env::var("LOG_FORMAT").as_deref() {
            Ok("json") => LogFormat::Json,
            Ok("pretty") => LogFormat::Pretty,
            _ if std::io::stderr().is_terminal() => LogFormat::Pretty,
            _ => LogFormat::Json,
        }
    }
}

/// The gateway's subscriber: log lines to `writer`, filtered by `filter`; spans to
/// `traces` too, if given (their own filter: see [`Traces::layer`]).
pub fn subscriber<W>(
    filter: EnvFilter,
    format: LogFormat,
    writer: W,
    traces: Option<&Traces>,
) -> Box<dyn Subscriber + Send + Sync>
where
    W: for<'a> MakeWriter<'a> + Send + Sync + 'static,
{
    let logs = tracing_subscriber::fmt::layer().with_writer(writer);
    let logs = match format {
        // The span a line was written in, once: not again in a list of spans.
        LogFormat::Json => logs
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .with_span_list(false)
            .with_filter(filter)
            .boxed(),
        LogFormat::Pretty => logs.with_filter(filter).boxed(),
    };
    let traces = traces.map(Traces::layer);
    Box::new(Registry::default().with(logs).with(traces))
}

/// Installs the gateway's subscriber for the process, on stderr: `RUST_LOG`
/// filters (default [`DEFAULT_FILTER`]), `LOG_FORMAT` chooses the format. With
/// `export_traces`, spans are exported as the `OTEL_*` variables say (if they name
/// an endpoint). A second call (tests) keeps the first subscriber.
///
/// On a trace configuration error the logs are installed all the same, so the
/// error can be reported.
pub fn init(export_traces: bool) -> Result<Telemetry, TracesError> {
    let traces = if export_traces {
        Traces::from_env(&ProcessEnv)
    } else {
        Ok(None)
    };
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(DEFAULT_FILTER));
    let installed = traces.as_ref().ok().and_then(Option::as_ref);
    let subscriber = subscriber(filter, LogFormat::from_env(), std::io::stderr, installed);
    let _ = tracing::subscriber::set_global_default(subscriber);
    traces.map(|traces| Telemetry { traces })
}

/// What must outlive the process's work: the trace exporter, flushed at the end.
#[derive(Debug)]
#[must_use = "flush it with `shutdown` when the work is done"]
pub struct Telemetry {
    traces: Option<Traces>,
}

impl Telemetry {
    /// Exports the spans not yet exported.
    pub async fn shutdown(self) {
        if let Some(traces) = self.traces {
            traces.shutdown().await;
        }
    }
}

/// The URL with any password shown as `****`, for output of every kind: logs,
/// errors, `Debug`, `check-config`.
pub fn redacted(url: &Url) -> Cow<'_, Url> {
    if url.password().is_none() {
        return Cow::Borrowed(url);
    }
    let mut shown = url.clone();
    // Only fails for URLs that cannot have a password, and this one has one.
    let _ = shown.set_password(Some("****"));
    Cow::Owned(shown)
}

/// Displays an error with its causes, `outer: inner: innermost`, for one log field.
#[derive(Debug, Clone, Copy)]
pub struct ErrorChain<'a>(pub &'a (dyn Error + 'static));

impl fmt::Display for ErrorChain<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)?;
        let mut source = self.0.source();
        while let Some(cause) = source {
            write!(f, ": {cause}")?;
            source = cause.source();
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("outer")]
    struct Outer(#[source] std::io::Error);

    #[test]
    fn an_error_chain_shows_every_cause() {
        let error = Outer(std::io::Error::other("inner"));
        assert_eq!(ErrorChain(&error).to_string(), "outer: inner");
    }
}
