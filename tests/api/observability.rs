//! What an operator sees of the calls: the access log, `/metrics`, and the spans a
//! real OTLP receiver gets.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
};

use opentelemetry_proto::tonic::{
    collector::trace::v1::{
        ExportTraceServiceRequest, ExportTraceServiceResponse,
        trace_service_server::{TraceService, TraceServiceServer},
    },
    common::v1::{KeyValue, any_value::Value},
    trace::v1::{Span, span::SpanKind, status::StatusCode},
};
use tokio::net::TcpListener;
use tonic::{Code, transport::server::TcpIncoming};
use wecom_kf_upgrade::{
    grpc::pb,
    sandbox::DEMO_SECRET,
    telemetry::{ACCESS_TARGET, Traces},
    wecom::Endpoint,
};

use crate::helpers::*;

/// A caller's W3C trace context: its trace, its span, sampled.
const CALLER_TRACE: &str = "0af7651916cd43dd8448eb211c80319c";
const CALLER_SPAN: &str = "b7ad6b7169203331";

fn with_traceparent<T>(message: T) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    let traceparent = format!("00-{CALLER_TRACE}-{CALLER_SPAN}-01");
    request
        .metadata_mut()
        .insert("traceparent", traceparent.parse().unwrap());
    request
}

// === the access log ===

// Every call writes one line at info on the access target, with what an operator
// filters on; a caller's trace id is there even when the gateway exports no traces.
#[tokio::test(flavor = "current_thread")]
async fn every_call_writes_one_access_line() {
    let captured = Captured::default();
    let _guard = captured.install("info");
    let mut app = spawn_app().await;

    app.client
        .get_upgrade_config(with_traceparent(pb::GetUpgradeConfigRequest {}))
        .await
        .unwrap();
    app.client
        .get_upgrade_config(for_app(pb::GetUpgradeConfigRequest {}, "nope"))
        .await
        .unwrap_err();
    app.client
        .upgrade_service(member_upgrade("zhangsan", ""))
        .await
        .unwrap();

    let access = captured.events_on(ACCESS_TARGET);
    assert_eq!(access.len(), 2, "{access:#?}");
    let (ok, refused) = (&access[0], &access[1]);
    assert_eq!(ok["level"], "INFO");
    assert_eq!(ok["method"], "GetUpgradeConfig");
    assert_eq!(ok["app"], "default");
    assert_eq!(ok["code"], "OK");
    assert_eq!(ok["trace_id"], CALLER_TRACE);
    assert!(
        ok["duration_ms"].as_f64().is_some_and(|ms| ms > 0.0),
        "{ok}"
    );
    assert!(
        ok.get("reason").is_none() && ok.get("error").is_none(),
        "{ok}"
    );
    assert_eq!(refused["code"], "INVALID_ARGUMENT");
    assert_eq!(refused["reason"], "UNKNOWN_APP");
    assert_eq!(refused["fault"], "caller");
    assert!(refused.get("trace_id").is_none(), "{refused}");
    // The upgrade's one line is its audit line, with the access line's fields.
    let audit = captured.audit_events();
    assert_eq!(audit.len(), 1, "{audit:#?}");
    assert_eq!(audit[0]["method"], "UpgradeService");
    assert_eq!(audit[0]["code"], "OK");
    assert!(audit[0]["duration_ms"].as_f64().is_some(), "{}", audit[0]);
    // No line at the default level formats a span.
    let events = captured.events();
    assert!(
        events.iter().all(|e| e.get("span").is_none()),
        "{events:#?}"
    );
}

// === metrics ===

/// `/metrics` in the Prometheus text format: series → value.
async fn scrape(app: &TestApp) -> HashMap<String, f64> {
    let body = reqwest::get(format!("http://{}/metrics", app.admin_addr))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    body.lines()
        .filter(|line| !line.starts_with('#') && !line.is_empty())
        .filter_map(|line| {
            let (series, value) = line.rsplit_once(' ')?;
            Some((series.to_owned(), value.parse().ok()?))
        })
        .collect()
}

// The counters equal the calls made, by method, code, reason and errcode.
#[tokio::test]
async fn metrics_count_every_call_by_method_code_and_errcode() {
    let mut app = spawn_app().await;
    for _ in 0..2 {
        app.client
            .upgrade_service(member_upgrade("zhangsan", ""))
            .await
            .unwrap();
    }
    app.client
        .upgrade_service(member_upgrade("wangwu", ""))
        .await
        .unwrap_err();
    app.client
        .upgrade_service(pb::UpgradeServiceRequest::default())
        .await
        .unwrap_err();
    app.get_config().await.unwrap();

    let metrics = scrape(&app).await;
    let value = |series: &str| metrics.get(series).copied();
    let rpc = |method: &str, code: &str, reason: &str, fault: &str, app: &str| {
        value(&format!(
            r#"wecom_kf_upgrade_rpc_requests_total{{method="{method}",app="{app}",code="{code}",reason="{reason}",fault="{fault}"}}"#
        ))
    };
    assert_eq!(rpc("UpgradeService", "OK", "", "", "default"), Some(2.0));
    assert_eq!(
        rpc(
            "UpgradeService",
            "FAILED_PRECONDITION",
            "UPGRADE_TARGET_NOT_CONFIGURED",
            "caller",
            "default"
        ),
        Some(1.0)
    );
    // Refused before an app was chosen: no app.
    assert_eq!(
        rpc(
            "UpgradeService",
            "INVALID_ARGUMENT",
            "INVALID_REQUEST",
            "caller",
            ""
        ),
        Some(1.0)
    );
    assert_eq!(rpc("GetUpgradeConfig", "OK", "", "", "default"), Some(1.0));
    let rpc_total: f64 = metrics
        .iter()
        .filter(|(series, _)| series.starts_with("wecom_kf_upgrade_rpc_requests_total{"))
        .map(|(_, value)| value)
        .sum();
    assert_eq!(rpc_total, 5.0, "{metrics:#?}");
    assert_eq!(
        value(
            r#"wecom_kf_upgrade_rpc_duration_seconds_count{method="UpgradeService",app="default"}"#
        ),
        Some(3.0)
    );
    assert_eq!(
        value(r#"wecom_kf_upgrade_rpc_in_flight{method="UpgradeService"}"#),
        Some(0.0)
    );

    let wecom = |endpoint: Endpoint, outcome: &str, errcode: &str| {
        value(&format!(
            r#"wecom_kf_upgrade_wecom_requests_total{{endpoint="{}",app="default",outcome="{outcome}",errcode="{errcode}"}}"#,
            endpoint.path()
        ))
    };
    assert_eq!(wecom(Endpoint::UpgradeService, "ok", "0"), Some(2.0));
    assert_eq!(
        wecom(Endpoint::UpgradeService, "errcode", "95021"),
        Some(1.0)
    );
    assert_eq!(wecom(Endpoint::GetUpgradeConfig, "ok", "0"), Some(1.0));
    assert_eq!(wecom(Endpoint::GetToken, "ok", "0"), Some(1.0));
    assert_eq!(
        app.calls_to(Endpoint::UpgradeService),
        3,
        "the sandbox saw as many"
    );
    assert_eq!(
        value(
            r#"wecom_kf_upgrade_wecom_retries_total{endpoint="/cgi-bin/kf/customer/upgrade_service",app="default"}"#
        ),
        Some(0.0)
    );
    assert_eq!(
        value(r#"wecom_kf_upgrade_token_fetches_total{app="default",outcome="ok"}"#),
        Some(1.0)
    );
    assert_eq!(
        value(
            r#"wecom_kf_upgrade_token_fetches_total{app="default",outcome="credentials_rejected"}"#
        ),
        Some(0.0)
    );
    let expiry = value(r#"wecom_kf_upgrade_token_expiry_seconds{app="default"}"#).unwrap();
    assert!(
        (7000.0..=7200.0).contains(&expiry),
        "the sandbox's token lives 7200 s, less the margin: {expiry}"
    );
    assert_eq!(value("wecom_kf_upgrade_calls_shed_total"), Some(0.0));
}

// Retries and failed token fetches are counted as such.
#[tokio::test]
async fn retries_and_rejected_credentials_are_counted() {
    let mut app = spawn_app().await;
    app.fault(
        Endpoint::GetUpgradeConfig,
        wecom_kf_upgrade::sandbox::Fault {
            http_status: Some(502),
            times: 1,
            ..Default::default()
        },
    );
    app.get_config().await.unwrap();
    let metrics = scrape(&app).await;
    let endpoint = Endpoint::GetUpgradeConfig.path();
    assert_eq!(
        metrics.get(&format!(
            r#"wecom_kf_upgrade_wecom_requests_total{{endpoint="{endpoint}",app="default",outcome="http_5xx",errcode=""}}"#
        )),
        Some(&1.0),
        "{metrics:#?}"
    );
    assert_eq!(
        metrics.get(&format!(
            r#"wecom_kf_upgrade_wecom_retries_total{{endpoint="{endpoint}",app="default"}}"#
        )),
        Some(&1.0)
    );

    let mut rejected = spawn_app_with(|s| {
        s.apps.get_mut("default").unwrap().secret = "wrong-secret".to_owned().into();
    })
    .await;
    rejected.get_config().await.unwrap_err();
    let metrics = scrape(&rejected).await;
    assert_eq!(
        metrics.get(
            r#"wecom_kf_upgrade_token_fetches_total{app="default",outcome="credentials_rejected"}"#
        ),
        Some(&1.0),
        "{metrics:#?}"
    );
    assert_eq!(
        metrics.get(r#"wecom_kf_upgrade_rpc_requests_total{method="GetUpgradeConfig",app="default",code="FAILED_PRECONDITION",reason="CREDENTIALS_REJECTED",fault="operator"}"#),
        Some(&1.0)
    );
}

// A scraper that asks for OpenMetrics gets it, with the `# EOF` it requires.
#[tokio::test]
async fn metrics_are_served_as_openmetrics_to_a_scraper_that_asks() {
    let mut app = spawn_app().await;
    app.get_config().await.unwrap();
    let response = reqwest::Client::new()
        .get(format!("http://{}/metrics", app.admin_addr))
        .header(
            "accept",
            "application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5",
        )
        .send()
        .await
        .unwrap();
    assert_eq!(
        response.headers()["content-type"],
        "application/openmetrics-text; version=1.0.0; charset=utf-8"
    );
    let body = response.text().await.unwrap();
    assert!(body.ends_with("# EOF\n"), "{body}");
    assert!(
        body.contains("# TYPE wecom_kf_upgrade_rpc_requests counter"),
        "{body}"
    );
}

// === traces ===

/// An OTLP collector's TraceService: keeps what it receives.
#[derive(Clone, Default)]
struct Collector {
    spans: Arc<Mutex<Vec<Span>>>,
    service_names: Arc<Mutex<Vec<String>>>,
}

#[tonic::async_trait]
impl TraceService for Collector {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        for resource_spans in request.into_inner().resource_spans {
            let resource = resource_spans.resource.unwrap_or_default();
            if let Some(name) = attribute(&resource.attributes, "service.name") {
                self.service_names.lock().unwrap().push(name);
            }
            let spans = resource_spans.scope_spans.into_iter().flat_map(|s| s.spans);
            self.spans.lock().unwrap().extend(spans);
        }
        Ok(tonic::Response::new(ExportTraceServiceResponse {
            partial_success: None,
        }))
    }
}

impl Collector {
    /// Serves on a free loopback port; returns its endpoint.
    async fn start(&self) -> String {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let service = TraceServiceServer::new(self.clone());
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(service)
                .serve_with_incoming(TcpIncoming::from(listener)),
        );
        format!("http://{addr}")
    }

    fn spans(&self) -> Vec<Span> {
        self.spans.lock().unwrap().clone()
    }
}

/// An attribute's value, as text.
fn attribute(attributes: &[KeyValue], key: &str) -> Option<String> {
    let value = attributes.iter().find(|kv| kv.key == key)?.value.as_ref()?;
    Some(match value.value.as_ref()? {
        Value::StringValue(text) => text.clone(),
        Value::IntValue(number) => number.to_string(),
        Value::BoolValue(flag) => flag.to_string(),
        other => format!("{other:?}"),
    })
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

// One call with a caller's traceparent reaches a real OTLP receiver as the RPC
// span, child of the caller's span, with the RPC conventions' attributes, and the
// WeCom request under it; a failing call's span carries the errcode; the token
// fetch has its own span; nothing from the HTTP/2 machinery or the exporter, and
// no secret or token anywhere.
#[tokio::test(flavor = "current_thread")]
async fn spans_reach_an_otlp_receiver_as_children_of_the_callers_trace() {
    let collector = Collector::default();
    let endpoint = collector.start().await;
    let traces = Traces::to_endpoint(&endpoint, true).unwrap();
    let captured = Captured::default();
    let _guard = captured.install_with("info", Some(&traces));
    let mut app = spawn_app().await;

    app.client
        .upgrade_service(with_traceparent(member_upgrade("zhangsan", "")))
        .await
        .unwrap();
    let status = app
        .client
        .upgrade_service(member_upgrade("wangwu", ""))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::FailedPrecondition);
    traces.flush().await;

    let spans = collector.spans();
    let names: Vec<_> = spans.iter().map(|s| s.name.as_str()).collect();
    let rpcs: Vec<_> = spans
        .iter()
        .filter(|s| s.name == "wecom.kf.v1.CustomerUpgradeService/UpgradeService")
        .collect();
    assert_eq!(rpcs.len(), 2, "{names:?}");
    let (ok, failed) = if hex(&rpcs[0].trace_id) == CALLER_TRACE {
        (rpcs[0], rpcs[1])
    } else {
        (rpcs[1], rpcs[0])
    };

    // The RPC span: a server span, child of the caller's span, in the caller's trace.
    assert_eq!(hex(&ok.trace_id), CALLER_TRACE);
    assert_eq!(hex(&ok.parent_span_id), CALLER_SPAN);
    assert_eq!(ok.kind, SpanKind::Server as i32);
    for (key, want) in [
        ("rpc.system", "grpc"),
        ("rpc.service", "wecom.kf.v1.CustomerUpgradeService"),
        ("rpc.method", "UpgradeService"),
        ("rpc.grpc.status_code", "0"),
        ("wecom.app", "default"),
    ] {
        assert_eq!(
            attribute(&ok.attributes, key).as_deref(),
            Some(want),
            "{key} of {ok:#?}"
        );
    }

    // The WeCom request under it: a client span, path without the query.
    let upstream: Vec<_> = spans
        .iter()
        .filter(|s| s.parent_span_id == ok.span_id)
        .collect();
    assert_eq!(upstream.len(), 1, "{names:?}");
    let request = upstream[0];
    assert_eq!(request.name, "POST /cgi-bin/kf/customer/upgrade_service");
    assert_eq!(request.trace_id, ok.trace_id);
    assert_eq!(request.kind, SpanKind::Client as i32);
    for (key, want) in [
        ("http.request.method", "POST"),
        ("url.path", "/cgi-bin/kf/customer/upgrade_service"),
        ("http.response.status_code", "200"),
        ("wecom.attempt", "1"),
        ("wecom.errcode", "0"),
    ] {
        assert_eq!(
            attribute(&request.attributes, key).as_deref(),
            Some(want),
            "{key} of {request:#?}"
        );
    }

    // The failing call: its own trace (no traceparent), the errcode and the code.
    assert_ne!(failed.trace_id, ok.trace_id);
    assert!(failed.parent_span_id.is_empty(), "a root span: {failed:#?}");
    for (key, want) in [
        ("wecom.errcode", "95021"),
        ("rpc.grpc.status_code", "9"),
        ("error.type", "UPGRADE_TARGET_NOT_CONFIGURED"),
    ] {
        assert_eq!(
            attribute(&failed.attributes, key).as_deref(),
            Some(want),
            "{key} of {failed:#?}"
        );
    }
    // FAILED_PRECONDITION is the caller's: the server span is not an error.
    assert_ne!(
        failed.status.as_ref().map(|s| s.code),
        Some(StatusCode::Error as i32)
    );

    // The token fetch, with its gettoken request under it.
    let fetch = spans
        .iter()
        .find(|s| s.name == "wecom.token_fetch")
        .unwrap_or_else(|| panic!("no token fetch span in {names:?}"));
    assert_eq!(
        attribute(&fetch.attributes, "wecom.token.outcome").as_deref(),
        Some("ok")
    );
    let gettoken = spans
        .iter()
        .find(|s| s.parent_span_id == fetch.span_id)
        .unwrap_or_else(|| panic!("no gettoken span in {names:?}"));
    assert_eq!(gettoken.name, "GET /cgi-bin/gettoken");
    assert_eq!(
        attribute(&gettoken.attributes, "url.path").as_deref(),
        Some("/cgi-bin/gettoken")
    );

    // Only the gateway's spans: RPCs, WeCom requests, token fetches.
    for name in &names {
        assert!(
            name.starts_with("wecom.kf.v1.")
                || name.starts_with("GET /")
                || name.starts_with("POST /")
                || *name == "wecom.token_fetch",
            "unexpected span {name} in {names:?}"
        );
    }
    let token = app.sandbox_token().await;
    let everything = format!("{spans:?}");
    for secret in [DEMO_SECRET, token.as_str()] {
        assert!(!everything.contains(secret), "a secret in the spans");
    }
    assert_eq!(
        collector
            .service_names
            .lock()
            .unwrap()
            .first()
            .map(String::as_str),
        Some("wecom-kf-upgrade")
    );
    // With traces on, the access line names the gateway's trace.
    let access = captured.audit_events();
    assert_eq!(access[0]["trace_id"], CALLER_TRACE);
    assert_eq!(access[1]["trace_id"], hex(&failed.trace_id));
}
