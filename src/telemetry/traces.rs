//! Traces: spans exported over OTLP/gRPC, and the W3C trace context of incoming calls.
//!
//! Configured by the standard variables: `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` or
//! `OTEL_EXPORTER_OTLP_ENDPOINT` turns export on (it is off without one, and with
//! `OTEL_SDK_DISABLED=true`; plain gRPC only, so an `https://` endpoint is refused);
//! `OTEL_EXPORTER_OTLP_(TRACES_)PROTOCOL` must be `grpc` if set; the SDK reads
//! `OTEL_SERVICE_NAME`, `OTEL_RESOURCE_ATTRIBUTES`, `OTEL_TRACES_SAMPLER(_ARG)`,
//! `OTEL_EXPORTER_OTLP_(TRACES_)HEADERS`, `_TIMEOUT`, `_COMPRESSION` and `OTEL_BSP_*`.
//!
//! Spans are batched and exported from a thread of the SDK's own, never from a
//! call's path; [`Traces::shutdown`] flushes what is left when the gateway stops.

use opentelemetry::{
    Context, KeyValue,
    propagation::{Extractor, TextMapPropagator},
    trace::{TraceContextExt, TraceId, TracerProvider as _},
};
use opentelemetry_otlp::{SpanExporter, WithExportConfig};
use opentelemetry_sdk::{
    Resource,
    propagation::TraceContextPropagator,
    trace::{SdkTracer, SdkTracerProvider},
};
use tonic::metadata::MetadataMap;
use tracing::{Level, Metadata, Span, Subscriber};
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::{Layer, filter::filter_fn, registry::LookupSpan};

use crate::config::Environment;

/// The service name spans carry when neither `OTEL_SERVICE_NAME` nor
/// `OTEL_RESOURCE_ATTRIBUTES` names one.
pub const SERVICE_NAME: &str = "wecom-kf-upgrade";

/// Why traces cannot be exported as configured.
#[derive(Debug, thiserror::Error)]
pub enum TracesError {
    /// A protocol other than OTLP over gRPC was asked for.
    #[error(
        "{variable}: `{value}` is not supported: this gateway exports OTLP over gRPC only; \
         set it to `grpc` (or unset it) and point the endpoint at the collector's gRPC port (4317)"
    )]
    Protocol {
        /// The variable that asked for it.
        variable: &'static str,
        /// What it says.
        value: String,
    },
    /// An `https://` endpoint: this build has no TLS towards the collector.
    #[error(
        "{variable}: `{endpoint}`: this gateway sends traces over plain gRPC only; use an \
         http:// endpoint (a collector agent on the node, or a sidecar, reached in clear text)"
    )]
    Tls {
        /// The variable that named it.
        variable: &'static str,
        /// The endpoint.
        endpoint: String,
    },
    /// The exporter could not be built (an endpoint that is not a URL, say).
    #[error("cannot export traces to {endpoint}: {source}")]
    Exporter {
        /// The configured endpoint.
        endpoint: String,
        /// Why.
        source: opentelemetry_otlp::ExporterBuildError,
    },
}

impl TracesError {
    /// The variable at fault, for the log line that reports it.
    pub fn key(&self) -> &'static str {
        match self {
            TracesError::Protocol { variable, .. } | TracesError::Tls { variable, .. } => variable,
            TracesError::Exporter { .. } => "OTEL_EXPORTER_OTLP_ENDPOINT",
        }
    }
}

/// Trace export to an OTLP collector: the provider behind the subscriber's
/// OpenTelemetry layer.
#[derive(Debug)]
pub struct Traces {
    provider: SdkTracerProvider,
}

impl Traces {
    /// Export as the environment says; `None` when no endpoint is set. Call it
    /// within the Tokio runtime: the gRPC channel to the collector lives there.
    pub fn from_env(env: &impl Environment) -> Result<Option<Self>, TracesError> {
        if env
            .var("OTEL_SDK_DISABLED")
            .is_some_and(|value| value.eq_ignore_ascii_case("true"))
        {
            return Ok(None);
        }
        for variable in [
            "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL",
            "OTEL_EXPORTER_OTLP_PROTOCOL",
        ] {
            if let Some(value) = env.var(variable) {
                if value != "grpc" {
                    return Err(TracesError::Protocol { variable, value });
                }
                break;
            }
        }
        let endpoint = [
            "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
            "OTEL_EXPORTER_OTLP_ENDPOINT",
        ]
        .into_iter()
        .find_map(|variable| Some((variable, env.var(variable)?)));
        let Some((variable, endpoint)) = endpoint else {
            return Ok(None);
        };
        if endpoint.to_ascii_lowercase().starts_with("https://") {
            return Err(TracesError::Tls { variable, endpoint });
        }
        let named = env.var("OTEL_SERVICE_NAME").is_some()
            || env
                .var("OTEL_RESOURCE_ATTRIBUTES")
                .is_some_and(|attributes| attributes.contains("service.name="));
        Self::to_endpoint(&endpoint, !named).map(Some)
    }

    /// Export to `endpoint` (`http://collector:4317`); with `name_service`, spans
    /// name the service [`SERVICE_NAME`].
    pub fn to_endpoint(endpoint: &str, name_service: bool) -> Result<Self, TracesError> {
        let exporter = SpanExporter::builder()
            .with_tonic()
            .with_endpoint(endpoint)
            .build()
            .map_err(|source| TracesError::Exporter {
                endpoint: endpoint.to_owned(),
                source,
            })?;
        // The default detectors read OTEL_SERVICE_NAME and OTEL_RESOURCE_ATTRIBUTES.
        let mut resource = Resource::builder()
            .with_attribute(KeyValue::new("service.version", env!("CARGO_PKG_VERSION")));
        if name_service {
            resource = resource.with_service_name(SERVICE_NAME);
        }
        // The default configuration reads OTEL_TRACES_SAMPLER(_ARG).
        let provider = SdkTracerProvider::builder()
            .with_batch_exporter(exporter)
            .with_resource(resource.build())
            .build();
        Ok(Self { provider })
    }

    /// The layer that turns the gateway's spans into OpenTelemetry spans. It takes
    /// only the gateway's own spans and its warnings and errors (as span events):
    /// never the HTTP/2 and gRPC machinery, whose spans would include the
    /// exporter's own requests, and never the access or audit lines, whose
    /// content the RPC span already carries as attributes or that stays in the log.
    pub fn layer<S>(&self) -> impl Layer<S> + Send + Sync + use<S>
    where
        S: Subscriber + Send + Sync + for<'span> LookupSpan<'span>,
    {
        tracing_opentelemetry::layer()
            .with_tracer(self.tracer())
            // Attributes the RPC conventions do not ask for, each a cost per span.
            .with_tracked_inactivity(false)
            .with_threads(false)
            .with_location(false)
            .with_target(false)
            .with_filter(filter_fn(exported))
    }

    fn tracer(&self) -> SdkTracer {
        self.provider.tracer(SERVICE_NAME)
    }

    /// Exports the spans ended so far (tests read them at once).
    pub async fn flush(&self) {
        let provider = self.provider.clone();
        // Blocking: the export runs on the SDK's thread but needs this runtime free.
        let _ = tokio::task::spawn_blocking(move || provider.force_flush()).await;
    }

    /// Exports what is left and stops the exporter.
    pub async fn shutdown(self) {
        let provider = self.provider;
        let _ = tokio::task::spawn_blocking(move || provider.shutdown()).await;
    }
}

/// What the OpenTelemetry layer takes (see [`Traces::layer`]).
fn exported(metadata: &Metadata<'_>) -> bool {
    let target = metadata.target();
    target.starts_with("wecom_kf_upgrade")
        && !target.starts_with(super::ACCESS_TARGET)
        && (metadata.is_span() || *metadata.level() <= Level::WARN)
}

// === trace context ===

/// The W3C trace context (`traceparent`, `tracestate`) of an incoming call, from
/// its metadata (HTTP/JSON callers send the same headers): the parent of its RPC
/// span. Empty when the caller sent none or an invalid one.
pub(crate) fn caller_context(metadata: &MetadataMap) -> Option<Context> {
    metadata.get("traceparent")?;
    let context = TraceContextPropagator::new().extract(&MetadataExtractor(metadata));
    context.span().span_context().is_valid().then_some(context)
}

/// Reads trace context from gRPC metadata (HTTP headers, for HTTP/JSON calls).
struct MetadataExtractor<'a>(&'a MetadataMap);

impl Extractor for MetadataExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|value| value.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0
            .keys()
            .filter_map(|key| match key {
                tonic::metadata::KeyRef::Ascii(key) => Some(key.as_str()),
                tonic::metadata::KeyRef::Binary(_) => None,
            })
            .collect()
    }
}

/// The trace a span or a call belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Trace {
    /// Its id.
    pub(crate) id: TraceId,
    /// Whether the gateway exports this span (traces on, span sampled): only then
    /// is the id worth an exemplar.
    pub(crate) exported: bool,
}

/// The trace of `span`, when traces are on; nothing (and no cost) when they are off.
pub(crate) fn span_trace(span: &Span) -> Option<Trace> {
    // A disabled span, or one no OpenTelemetry layer saw, has an empty context.
    let context = span.context();
    let span = context.span();
    let span_context = span.span_context();
    span_context.is_valid().then(|| Trace {
        id: span_context.trace_id(),
        exported: span_context.is_sampled(),
    })
}

/// The trace a caller's context names; the gateway exports none of its spans.
pub(crate) fn context_trace(context: &Context) -> Option<Trace> {
    let span = context.span();
    let span_context = span.span_context();
    span_context.is_valid().then(|| Trace {
        id: span_context.trace_id(),
        exported: false,
    })
}

/// Makes `parent` the parent of `span`; nothing when traces are off.
pub(crate) fn set_parent(span: &Span, parent: Context) {
    // Fails only where there is no OpenTelemetry layer or the span is disabled:
    // then there is nothing to link.
    let _ = span.set_parent(parent);
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    fn env(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[tokio::test]
    async fn traces_are_off_without_an_endpoint() {
        assert!(Traces::from_env(&env(&[])).unwrap().is_none());
        let only_name = env(&[("OTEL_SERVICE_NAME", "x")]);
        assert!(Traces::from_env(&only_name).unwrap().is_none());
    }

    #[tokio::test]
    async fn a_protocol_other_than_grpc_is_refused_naming_the_variable() {
        let http = env(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4318"),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf"),
        ]);
        let error = Traces::from_env(&http).unwrap_err();
        assert_eq!(error.key(), "OTEL_EXPORTER_OTLP_PROTOCOL");
        assert!(error.to_string().contains("`grpc`"), "{error}");
        // The signal's own variable wins over the generic one.
        let grpc = env(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4317"),
            ("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "grpc"),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf"),
        ]);
        assert!(Traces::from_env(&grpc).unwrap().is_some());
    }

    #[tokio::test]
    async fn an_https_endpoint_is_refused_with_what_to_do() {
        let tls = env(&[(
            "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
            "https://collector:4317",
        )]);
        let error = Traces::from_env(&tls).unwrap_err();
        assert_eq!(error.key(), "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT");
        assert!(error.to_string().contains("http://"), "{error}");
    }

    #[tokio::test]
    async fn an_endpoint_that_is_not_a_url_is_refused() {
        let bad = env(&[("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "not a url")]);
        let error = Traces::from_env(&bad).unwrap_err();
        assert!(error.to_string().contains("not a url"), "{error}");
    }

    #[test]
    fn the_callers_traceparent_is_read_and_a_broken_one_ignored() {
        let mut metadata = MetadataMap::new();
        assert!(caller_context(&metadata).is_none());
        metadata.insert(
            "traceparent",
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
                .parse()
                .unwrap(),
        );
        let context = caller_context(&metadata).unwrap();
        assert_eq!(
            context.span().span_context().trace_id().to_string(),
            "0af7651916cd43dd8448eb211c80319c"
        );
        metadata.insert("traceparent", "00-garbage".parse().unwrap());
        assert!(caller_context(&metadata).is_none());
    }
}
