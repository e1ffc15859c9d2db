//! Logging: structured `tracing` events, JSON in production, readable in a terminal.

use std::io::IsTerminal;

use tracing_subscriber::{EnvFilter, fmt};

/// The filter used when `RUST_LOG` is unset: our events at info, the HTTP/2
/// machinery only when it warns.
const DEFAULT_FILTER: &str = "info,h2=warn,hyper=warn,hyper_util=warn,tower=warn";

/// Installs the global subscriber. `LOG_FORMAT=json|pretty` chooses the format;
/// otherwise JSON unless stderr is a terminal. `RUST_LOG` filters.
pub fn init() {
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(DEFAULT_FILTER));
    let json = match std::env::var("LOG_FORMAT").as_deref() {
        Ok("json") => true,
        Ok("pretty") => false,
        _ => !std::io::stderr().is_terminal(),
    };
    let builder = fmt().with_env_filter(filter).with_writer(std::io::stderr);
    // A second init (tests) keeps the first subscriber.
    let _ = if json {
        builder
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .try_init()
    } else {
        builder.try_init()
    };
}
