//! Prometheus metrics: one registry per gateway, served on the admin port's
//! `/metrics`, and the handle the call path and the adapter record into.
//!
//! Every label value is bounded: names from the code (methods, endpoints, codes,
//! reasons, outcomes), configured app names, and WeCom errcodes the gateway knows
//! (any other is `other`). Never a user id, an open_kfid or what a caller sent.

use std::{
    fmt::{self, Write as _},
    sync::{Arc, Mutex},
    time::Duration,
};

use opentelemetry::trace::TraceId;
use prometheus_client::{
    collector::Collector,
    encoding::{
        DescriptorEncoder, EncodeLabelSet, EncodeLabelValue, EncodeMetric, LabelValueEncoder,
    },
    metrics::{
        counter::Counter,
        exemplar::HistogramWithExemplars,
        family::Family,
        gauge::{ConstGauge, Gauge},
        info::Info,
    },
    registry::{Registry, Unit},
};

/// Every metric's name starts with this, then `_`.
pub const PREFIX: &str = "wecom_kf_upgrade";

/// Content type of the OpenMetrics text format, the one that carries exemplars.
pub const OPENMETRICS_CONTENT_TYPE: &str =
    "application/openmetrics-text; version=1.0.0; charset=utf-8";
/// Content type of the Prometheus text format (0.0.4), for scrapers that do not ask
/// for OpenMetrics.
pub const PROMETHEUS_CONTENT_TYPE: &str =
    prometheus_client::encoding::prometheus_text::CONTENT_TYPE;

/// Latency buckets, seconds: a WeCom call takes tens of milliseconds; the gateway's
/// call timeout is 10 s.
const LATENCY_BUCKETS: [f64; 12] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

/// The gateway's metrics. Cloning is cheap: clones share the registry.
#[derive(Clone, Debug)]
pub struct Metrics {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    registry: Registry,
    rpc_requests: Family<RpcLabels, Counter>,
    rpc_duration: Family<RpcDurationLabels, HistogramWithExemplars<TraceLabel>>,
    rpc_in_flight: Family<MethodLabel, Gauge>,
    wecom_requests: Family<WeComLabels, Counter>,
    wecom_duration: Family<EndpointLabels, HistogramWithExemplars<TraceLabel>>,
    wecom_retries: Family<EndpointLabels, Counter>,
    token_fetches: Family<TokenFetchLabels, Counter>,
    token_expiry: Arc<TokenExpiry>,
    calls_shed: Counter,
    calls_rate_limited: Family<RateLimitLabels, Counter>,
    redis_errors: Family<OperationLabel, Counter>,
    redis_fallbacks: Family<KindLabel, Counter>,
    suite_callbacks: Family<CallbackLabels, Counter>,
}

// === label sets ===

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RpcLabels {
    method: &'static str,
    app: Option<Arc<str>>,
    code: &'static str,
    reason: &'static str,
    fault: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RpcDurationLabels {
    method: &'static str,
    app: Option<Arc<str>>,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct MethodLabel {
    method: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct WeComLabels {
    endpoint: &'static str,
    app: Arc<str>,
    outcome: &'static str,
    errcode: Errcode,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct EndpointLabels {
    endpoint: &'static str,
    app: Arc<str>,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TokenFetchLabels {
    app: Arc<str>,
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RateLimitLabels {
    api: &'static str,
    app: Arc<str>,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OperationLabel {
    operation: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindLabel {
    kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CallbackLabels {
    suite: Arc<str>,
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct AppLabel {
    app: Arc<str>,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BuildLabels {
    version: &'static str,
}

/// An exemplar's label: the trace the observation belongs to.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TraceLabel {
    trace_id: TraceIdValue,
}

/// A trace id as a label value (32 hex digits), written only when scraped.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
struct TraceIdValue(TraceId);

impl EncodeLabelValue for TraceIdValue {
    fn encode(&self, encoder: &mut LabelValueEncoder<'_>) -> fmt::Result {
        write!(encoder, "{}", self.0)
    }
}

/// A WeCom errcode as a label value: bounded to the errcodes the gateway knows.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub(crate) enum Errcode {
    /// WeCom sent no errcode (no answer, or not its JSON): an empty value.
    None,
    /// An errcode the gateway knows.
    Known(i64),
    /// Any other errcode: `other`.
    Other,
}

impl EncodeLabelValue for Errcode {
    fn encode(&self, encoder: &mut LabelValueEncoder<'_>) -> fmt::Result {
        match self {
            Errcode::None => Ok(()),
            Errcode::Known(errcode) => write!(encoder, "{errcode}"),
            Errcode::Other => encoder.write_str("other"),
        }
    }
}

// === what the call path reports ===

/// A finished RPC, as its metrics see it.
#[derive(Debug)]
pub(crate) struct FinishedCall<'a> {
    /// The RPC's method name, e.g. `UpgradeService`.
    pub(crate) method: &'static str,
    /// The configured app that served it, if it got that far.
    pub(crate) app: Option<&'a Arc<str>>,
    /// The gRPC code's name, e.g. `OK`, `FAILED_PRECONDITION`.
    pub(crate) code: &'static str,
    /// The ErrorInfo reason; empty for a success.
    pub(crate) reason: &'static str,
    /// Who must act: `caller`, `operator`, `wecom`; empty for a success.
    pub(crate) fault: &'static str,
    /// From arrival to answer.
    pub(crate) elapsed: Duration,
    /// The exported trace the call belongs to, for the latency exemplar.
    pub(crate) trace: Option<TraceId>,
}

/// One HTTP request to WeCom, as its metrics see it.
#[derive(Debug)]
pub(crate) struct WeComRequest<'a> {
    /// The endpoint's path, e.g. `/cgi-bin/gettoken`.
    pub(crate) endpoint: &'static str,
    /// The app it was made for.
    pub(crate) app: &'a Arc<str>,
    /// 1 for the first attempt; more for a retry.
    pub(crate) attempt: u32,
    /// How it ended: `ok`, `errcode`, `http_5xx`, `timeout`, …
    pub(crate) outcome: &'static str,
    /// WeCom's errcode, bounded.
    pub(crate) errcode: Errcode,
    /// From sending to the decoded answer.
    pub(crate) elapsed: Duration,
    /// The exported trace the request belongs to, for the latency exemplar.
    pub(crate) trace: Option<TraceId>,
}

/// Keeps a call counted in `rpc_in_flight` until it is dropped.
#[derive(Debug)]
pub(crate) struct InFlight(Gauge);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.dec();
    }
}

// === impl Metrics ===

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// A registry with every metric, all at zero.
    pub fn new() -> Self {
        let latency = || HistogramWithExemplars::new(LATENCY_BUCKETS.into_iter());
        let mut registry = Registry::with_prefix(PREFIX);
        let mut inner = Inner {
            rpc_requests: Family::default(),
            rpc_duration: Family::new_with_constructor(latency),
            rpc_in_flight: Family::default(),
            wecom_requests: Family::default(),
            wecom_duration: Family::new_with_constructor(latency),
            wecom_retries: Family::default(),
            token_fetches: Family::default(),
            token_expiry: Arc::default(),
            calls_shed: Counter::default(),
            calls_rate_limited: Family::default(),
            redis_errors: Family::default(),
            redis_fallbacks: Family::default(),
            suite_callbacks: Family::default(),
            registry: Registry::default(),
        };
        registry.register(
            "rpc_requests",
            "RPCs answered, by method, app, gRPC code, ErrorInfo reason and who is at fault",
            inner.rpc_requests.clone(),
        );
        registry.register_with_unit(
            "rpc_duration",
            "Time from an RPC's arrival to its answer, by method and app",
            Unit::Seconds,
            inner.rpc_duration.clone(),
        );
        registry.register(
            "rpc_in_flight",
            "RPCs being served now, by method",
            inner.rpc_in_flight.clone(),
        );
        registry.register(
            "wecom_requests",
            "HTTP requests to WeCom, retries included, by endpoint, app, outcome and errcode",
            inner.wecom_requests.clone(),
        );
        registry.register_with_unit(
            "wecom_request_duration",
            "Time from sending a request to WeCom to its decoded answer, by endpoint and app",
            Unit::Seconds,
            inner.wecom_duration.clone(),
        );
        registry.register(
            "wecom_retries",
            "Requests to WeCom that repeat an earlier one (after a transient failure or a \
             refused token), by endpoint and app",
            inner.wecom_retries.clone(),
        );
        registry.register(
            "token_fetches",
            "Access token fetches by app and outcome (ok, credentials_rejected, error)",
            inner.token_fetches.clone(),
        );
        registry.register_collector(Box::new(Arc::clone(&inner.token_expiry)));
        registry.register(
            "calls_shed",
            "RPCs refused at once because the gateway was at its limit of calls in flight",
            inner.calls_shed.clone(),
        );
        registry.register(
            "calls_rate_limited",
            "RPCs refused by the gateway's own rate limit, by WeCom API and app",
            inner.calls_rate_limited.clone(),
        );
        registry.register(
            "redis_errors",
            "Redis operations of a fleet's replica that failed or timed out, by operation",
            inner.redis_errors.clone(),
        );
        registry.register(
            "redis_fallbacks",
            "Token reads and rate-limit checks done without Redis, by kind (token, rate \
             budget): this replica on its own while Redis is down or slow",
            inner.redis_fallbacks.clone(),
        );
        registry.register(
            "suite_callbacks",
            "Callbacks WeCom made to a suite's callback endpoint, by suite and outcome \
             (ticket_stored, ticket_older, event, url_verified, or why it was refused)",
            inner.suite_callbacks.clone(),
        );
        registry.register(
            "build",
            "The gateway's version",
            Info::new(BuildLabels {
                version: env!("CARGO_PKG_VERSION"),
            }),
        );
        inner.registry = registry;
        Self {
            inner: Arc::new(inner),
        }
    }

    /// Starts the series of a configured app at zero, so rates and alerts see it
    /// before its first failure; `endpoints` are the WeCom paths it calls.
    pub(crate) fn add_app(&self, app: &Arc<str>, endpoints: &[&'static str]) {
        let inner = &self.inner;
        for outcome in TokenFetchOutcome::ALL {
            let _ = inner.token_fetches.get_or_create(&TokenFetchLabels {
                app: Arc::clone(app),
                outcome: outcome.as_str(),
            });
        }
        for &endpoint in endpoints {
            let labels = EndpointLabels {
                endpoint,
                app: Arc::clone(app),
            };
            let _ = inner.wecom_retries.get_or_create(&labels);
            let _ = inner.calls_rate_limited.get_or_create(&RateLimitLabels {
                api: endpoint,
                app: Arc::clone(app),
            });
        }
    }

    /// Counts a call in `rpc_in_flight` until the guard is dropped.
    pub(crate) fn call_started(&self, method: &'static str) -> InFlight {
        let gauge = self
            .inner
            .rpc_in_flight
            .get_or_create_owned(&MethodLabel { method });
        gauge.inc();
        InFlight(gauge)
    }

    /// Records a finished RPC: its count and its latency.
    pub(crate) fn call_finished(&self, call: FinishedCall<'_>) {
        let app = call.app.cloned();
        self.inner
            .rpc_requests
            .get_or_create(&RpcLabels {
                method: call.method,
                app: app.clone(),
                code: call.code,
                reason: call.reason,
                fault: call.fault,
            })
            .inc();
        self.inner
            .rpc_duration
            .get_or_create(&RpcDurationLabels {
                method: call.method,
                app,
            })
            .observe(call.elapsed.as_secs_f64(), exemplar(call.trace), None);
    }

    /// Records one HTTP request to WeCom.
    pub(crate) fn wecom_request(&self, request: WeComRequest<'_>) {
        let endpoint = EndpointLabels {
            endpoint: request.endpoint,
            app: Arc::clone(request.app),
        };
        self.inner
            .wecom_requests
            .get_or_create(&WeComLabels {
                endpoint: request.endpoint,
                app: Arc::clone(request.app),
                outcome: request.outcome,
                errcode: request.errcode,
            })
            .inc();
        if request.attempt > 1 {
            self.inner.wecom_retries.get_or_create(&endpoint).inc();
        }
        self.inner.wecom_duration.get_or_create(&endpoint).observe(
            request.elapsed.as_secs_f64(),
            exemplar(request.trace),
            None,
        );
    }

    /// Records the outcome of one token fetch.
    pub(crate) fn token_fetched(&self, app: &Arc<str>, outcome: TokenFetchOutcome) {
        self.inner
            .token_fetches
            .get_or_create(&TokenFetchLabels {
                app: Arc::clone(app),
                outcome: outcome.as_str(),
            })
            .inc();
    }

    /// Reports `remaining()` as the app's `token_expiry_seconds` at each scrape:
    /// the time left before its token is dropped (no sample while it has none).
    /// Stops when `remaining` answers `Err` (its cache is gone).
    pub(crate) fn watch_token_expiry(
        &self,
        app: &Arc<str>,
        remaining: impl Fn() -> Result<Option<Duration>, Gone> + Send + Sync + 'static,
    ) {
        let mut watched = lock(&self.inner.token_expiry.watched);
        watched.push((Arc::clone(app), Box::new(remaining)));
    }

    /// Counts an RPC refused because the gateway was at its limit of calls in
    /// flight (load shedding): `wecom_kf_upgrade_calls_shed_total`. Call it once
    /// per refused call, where it is refused.
    pub fn call_shed(&self) {
        self.inner.calls_shed.inc();
    }

    /// Counts an RPC refused by the gateway's own rate limit for `app` (the
    /// configured app's name, never its corp id) and `api` (the WeCom endpoint's
    /// path, e.g. `/cgi-bin/kf/customer/upgrade_service`):
    /// `wecom_kf_upgrade_calls_rate_limited_total{api, app}`. Call it once per
    /// refused call, where it is refused.
    pub fn call_rate_limited(&self, api: &'static str, app: &str) {
        self.inner
            .calls_rate_limited
            .get_or_create(&RateLimitLabels {
                api,
                app: Arc::from(app),
            })
            .inc();
    }

    /// Counts a Redis operation of the fleet that failed or timed out.
    pub(crate) fn redis_failed(&self, operation: &'static str) {
        let labels = OperationLabel { operation };
        self.inner.redis_errors.get_or_create(&labels).inc();
    }

    /// Counts a callback to `suite`'s endpoint (`unknown` for a path that names
    /// no suite) and what became of it.
    pub(crate) fn suite_callback(&self, suite: &Arc<str>, outcome: &'static str) {
        let labels = CallbackLabels {
            suite: Arc::clone(suite),
            outcome,
        };
        self.inner.suite_callbacks.get_or_create(&labels).inc();
    }

    /// Counts a token read or a rate-limit check done without Redis.
    pub(crate) fn redis_fell_back(&self, kind: &'static str) {
        let labels = KindLabel { kind };
        self.inner.redis_fallbacks.get_or_create(&labels).inc();
    }

    /// Every metric, in OpenMetrics text (with exemplars) or in the Prometheus
    /// text format; with the content type to serve it as.
    pub fn encode(&self, openmetrics: bool) -> (&'static str, String) {
        let mut text = String::new();
        let registry = &self.inner.registry;
        // Writing to a String cannot fail, nor can our encoders.
        let _ = if openmetrics {
            prometheus_client::encoding::text::encode(&mut text, registry)
        } else {
            prometheus_client::encoding::prometheus_text::encode(&mut text, registry)
        };
        let content_type = if openmetrics {
            OPENMETRICS_CONTENT_TYPE
        } else {
            PROMETHEUS_CONTENT_TYPE
        };
        (content_type, text)
    }
}

fn exemplar(trace: Option<TraceId>) -> Option<TraceLabel> {
    trace.map(|id| TraceLabel {
        trace_id: TraceIdValue(id),
    })
}

/// How a token fetch ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum TokenFetchOutcome {
    /// A token was fetched.
    Ok,
    /// WeCom refused the corp id or the secret (40001, 40013).
    CredentialsRejected,
    /// Any other failure, after the fetch's retries.
    Error,
}

impl TokenFetchOutcome {
    const ALL: [Self; 3] = [Self::Ok, Self::CredentialsRejected, Self::Error];

    /// The `outcome` label value.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Self::Ok => "ok",
            Self::CredentialsRejected => "credentials_rejected",
            Self::Error => "error",
        }
    }
}

// === token expiry, read at each scrape ===

/// The watched token cache is gone: stop reporting it.
#[derive(Debug)]
pub(crate) struct Gone;

type Remaining = Box<dyn Fn() -> Result<Option<Duration>, Gone> + Send + Sync>;

/// `token_expiry_seconds`: each watched app's time left, asked at each scrape.
#[derive(Default)]
struct TokenExpiry {
    watched: Mutex<Vec<(Arc<str>, Remaining)>>,
}

impl fmt::Debug for TokenExpiry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TokenExpiry").finish_non_exhaustive()
    }
}

impl Collector for TokenExpiry {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> fmt::Result {
        let mut watched = lock(&self.watched);
        let mut samples = Vec::with_capacity(watched.len());
        watched.retain(|(app, remaining)| match remaining() {
            Ok(left) => {
                samples.extend(left.map(|left| (Arc::clone(app), left)));
                true
            }
            Err(Gone) => false,
        });
        drop(watched);
        if samples.is_empty() {
            return Ok(());
        }
        let mut metric = encoder.encode_descriptor(
            "token_expiry",
            "Seconds until the app's cached access token is dropped (no sample while it has none)",
            Some(&Unit::Seconds),
            prometheus_client::metrics::MetricType::Gauge,
        )?;
        for (app, left) in samples {
            let labels = AppLabel { app };
            ConstGauge::new(left.as_secs_f64()).encode(metric.encode_family(&labels)?)?;
        }
        Ok(())
    }
}

/// The lock, even if a panic poisoned it: the list stays usable.
fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(text: &str, series: &str) -> Option<f64> {
        text.lines().find_map(|line| {
            line.strip_prefix(series)?
                .trim()
                .split(' ')
                .next()?
                .parse()
                .ok()
        })
    }

    #[test]
    fn counters_carry_their_labels_and_the_total_suffix() {
        let metrics = Metrics::new();
        let app: Arc<str> = Arc::from("shop");
        for _ in 0..2 {
            metrics.call_finished(FinishedCall {
                method: "UpgradeService",
                app: Some(&app),
                code: "FAILED_PRECONDITION",
                reason: "UPGRADE_TARGET_NOT_CONFIGURED",
                fault: "caller",
                elapsed: Duration::from_millis(3),
                trace: None,
            });
        }
        let (content_type, text) = metrics.encode(false);
        assert_eq!(content_type, PROMETHEUS_CONTENT_TYPE);
        let series = r#"wecom_kf_upgrade_rpc_requests_total{method="UpgradeService",app="shop",code="FAILED_PRECONDITION",reason="UPGRADE_TARGET_NOT_CONFIGURED",fault="caller"}"#;
        assert_eq!(sample(&text, series), Some(2.0), "{text}");
        let count =
            r#"wecom_kf_upgrade_rpc_duration_seconds_count{method="UpgradeService",app="shop"}"#;
        assert_eq!(sample(&text, count), Some(2.0), "{text}");
        assert!(
            text.contains(r#"wecom_kf_upgrade_build_info{version=""#),
            "{text}"
        );
    }

    #[test]
    fn exemplars_carry_the_trace_id_in_openmetrics_only() {
        let metrics = Metrics::new();
        let app: Arc<str> = Arc::from("shop");
        let trace = TraceId::from_hex("0af7651916cd43dd8448eb211c80319c").unwrap();
        metrics.wecom_request(WeComRequest {
            endpoint: "/cgi-bin/gettoken",
            app: &app,
            attempt: 2,
            outcome: "errcode",
            errcode: Errcode::Known(40013),
            elapsed: Duration::from_millis(20),
            trace: Some(trace),
        });
        let (content_type, text) = metrics.encode(true);
        assert_eq!(content_type, OPENMETRICS_CONTENT_TYPE);
        assert!(
            text.contains(r#"# {trace_id="0af7651916cd43dd8448eb211c80319c"} 0.02"#),
            "{text}"
        );
        assert!(text.ends_with("# EOF\n"), "{text}");
        assert!(
            text.contains(r#"wecom_kf_upgrade_wecom_requests_total{endpoint="/cgi-bin/gettoken",app="shop",outcome="errcode",errcode="40013"} 1"#),
            "{text}"
        );
        assert!(
            text.contains(
                r#"wecom_kf_upgrade_wecom_retries_total{endpoint="/cgi-bin/gettoken",app="shop"} 1"#
            ),
            "{text}"
        );
        let (_, plain) = metrics.encode(false);
        assert!(!plain.contains("trace_id"), "{plain}");
    }

    #[test]
    fn token_expiry_is_read_at_each_scrape_until_the_cache_is_gone() {
        let metrics = Metrics::new();
        let app: Arc<str> = Arc::from("shop");
        let left = Arc::new(Mutex::new(Ok(Some(Duration::from_secs(90)))));
        let reported = Arc::clone(&left);
        metrics.watch_token_expiry(&app, move || {
            lock(&reported)
                .as_ref()
                .map(|left| *left)
                .map_err(|Gone| Gone)
        });
        let series = r#"wecom_kf_upgrade_token_expiry_seconds{app="shop"}"#;
        assert_eq!(sample(&metrics.encode(false).1, series), Some(90.0));
        *lock(&left) = Ok(None);
        assert_eq!(sample(&metrics.encode(false).1, series), None);
        *lock(&left) = Err(Gone);
        metrics.encode(false);
        assert!(lock(&metrics.inner.token_expiry.watched).is_empty());
    }

    #[test]
    fn an_unknown_errcode_and_a_missing_one_are_bounded_label_values() {
        let metrics = Metrics::new();
        let app: Arc<str> = Arc::from("shop");
        for (outcome, errcode) in [("errcode", Errcode::Other), ("timeout", Errcode::None)] {
            metrics.wecom_request(WeComRequest {
                endpoint: "/cgi-bin/gettoken",
                app: &app,
                attempt: 1,
                outcome,
                errcode,
                elapsed: Duration::from_millis(1),
                trace: None,
            });
        }
        let text = metrics.encode(false).1;
        assert!(
            text.contains(r#"outcome="errcode",errcode="other"} 1"#),
            "{text}"
        );
        assert!(
            text.contains(r#"outcome="timeout",errcode=""} 1"#),
            "{text}"
        );
    }
}
