//! Logging: structured `tracing` events, JSON in production, readable in a terminal.
//!
//! [`subscriber`] builds the subscriber for any writer, so tests can send the
//! gateway's output to a sink; [`init`] installs it for the process, on stderr.

use std::{borrow::Cow, error::Error, fmt, io::IsTerminal};

use tracing::Subscriber;
use tracing_subscriber::{EnvFilter, fmt::MakeWriter};
use url::Url;

/// The filter used when `RUST_LOG` is unset: our events at info, the HTTP/2
/// machinery only when it warns.
pub const DEFAULT_FILTER: &str = "info,h2=warn,hyper=warn,hyper_util=warn,tower=warn";

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

/// The gateway's subscriber, writing to `writer`.
pub fn subscriber<W>(
    filter: EnvFilter,
    format: LogFormat,
    writer: W,
) -> Box<dyn Subscriber + Send + Sync>
where
    W: for<'a> MakeWriter<'a> + Send + Sync + 'static,
{
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(writer);
    match format {
        LogFormat::Json => Box::new(
            builder
                .json()
                .flatten_event(true)
                .with_current_span(true)
                .finish(),
        ),
        LogFormat::Pretty => Box::new(builder.finish()),
    }
}

/// Installs the gateway's subscriber for the process, on stderr. `RUST_LOG`
/// filters (default [`DEFAULT_FILTER`]); `LOG_FORMAT` chooses the format. A second
/// call (tests) keeps the first subscriber.
pub fn init() {
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(DEFAULT_FILTER));
    let subscriber = subscriber(filter, LogFormat::from_env(), std::io::stderr);
    let _ = tracing::subscriber::set_global_default(subscriber);
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
