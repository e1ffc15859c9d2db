//! HTTP/JSON: the same three calls on the gRPC port, with the same results and, for
//! every error the sandbox can produce, the same code and reason as over gRPC.

use reqwest::header::{HeaderMap, HeaderValue};
use serde_json::{Value, json};
use tonic::{Code, Status};
use tonic_types::StatusExt;
use wecom_kf_upgrade::{sandbox::Fault, wecom::Endpoint};

use crate::helpers::*;

/// An HTTP/JSON call to the gateway: its HTTP status and JSON body.
async fn http(app: &TestApp, path: &str, body: Option<Value>, headers: HeaderMap) -> (u16, Value) {
    let url = format!("http://{}{path}", app.grpc_addr);
    let client = reqwest::Client::new();
    let request = match body {
        Some(body) => client
            .post(url)
            .header("content-type", "application/json")
            .body(body.to_string()),
        None => client.get(url),
    };
    let response = request.headers(headers).send().await.expect("HTTP call");
    let status = response.status().as_u16();
    let body = response.bytes().await.expect("a body");
    (status, serde_json::from_slice(&body).expect("a JSON body"))
}

/// `POST /v1/upgrade-service` without headers.
async fn upgrade_over_http(app: &TestApp, body: Value) -> (u16, Value) {
    http(app, "/v1/upgrade-service", Some(body), HeaderMap::new()).await
}

fn member_json(userid: &str) -> Value {
    json!({"openKfid": OPEN_KFID, "externalUserid": EXTERNAL_USERID,
           "member": {"userid": userid, "wording": "你好"}})
}

#[tokio::test]
async fn the_three_calls_over_http_match_their_grpc_twins() {
    let mut app = spawn_app().await;

    let (status, config) = http(&app, "/v1/upgrade-config", None, HeaderMap::new()).await;
    assert_eq!(status, 200, "{config}");
    let grpc = app.get_config().await.unwrap();
    let members = grpc.member_range.unwrap();
    assert_eq!(
        config["memberRange"]["useridList"],
        json!(members.userid_list)
    );
    assert_eq!(
        config["memberRange"]["departmentIdList"],
        json!(members.department_id_list)
    );
    let chats = grpc.groupchat_range.unwrap().chat_id_list;
    assert_eq!(config["groupchatRange"]["chatIdList"], json!(chats));

    let (status, body) = upgrade_over_http(&app, member_json("zhangsan")).await;
    assert_eq!((status, body), (200, json!({})));
    let sent = app
        .sandbox
        .recommendation(OPEN_KFID, EXTERNAL_USERID)
        .unwrap();
    assert_eq!(sent["type"], 1);
    assert_eq!(
        sent["member"],
        json!({"userid": "zhangsan", "wording": "你好"})
    );

    // The proto's own field names are accepted too.
    let groupchat = json!({"open_kfid": OPEN_KFID, "external_userid": EXTERNAL_USERID,
                           "groupchat": {"chat_id": "wraaaaaaaaaaaaaaaa"}});
    let (status, _) = upgrade_over_http(&app, groupchat).await;
    assert_eq!(status, 200);
    let sent = app
        .sandbox
        .recommendation(OPEN_KFID, EXTERNAL_USERID)
        .unwrap();
    assert_eq!(
        sent,
        json!({"open_kfid": OPEN_KFID, "external_userid": EXTERNAL_USERID,
                            "type": 2, "groupchat": {"chat_id": "wraaaaaaaaaaaaaaaa"}})
    );

    let mut headers = HeaderMap::new();
    headers.insert("x-wecom-app", HeaderValue::from_static("default"));
    let customer = json!({"openKfid": OPEN_KFID, "externalUserid": EXTERNAL_USERID});
    let (status, _) = http(&app, "/v1/cancel-upgrade-service", Some(customer), headers).await;
    assert_eq!(status, 200);
    assert_eq!(app.sandbox.recommendation(OPEN_KFID, EXTERNAL_USERID), None);
}

/// What one case scripts and sends, over both protocols.
struct Case {
    name: &'static str,
    fault: Option<(Endpoint, Fault)>,
    /// The upgrade request, as JSON (its gRPC twin is derived from it).
    request: Value,
    /// Metadata and headers, both protocols.
    headers: &'static [(&'static str, &'static [u8])],
}

fn errcode(endpoint: Endpoint, errcode: i64) -> Option<(Endpoint, Fault)> {
    let fault = Fault {
        errcode: Some(errcode),
        errmsg: Some(format!("scripted {errcode}")),
        times: 100,
        ..Fault::default()
    };
    Some((endpoint, fault))
}

fn http_fault(http_status: u16, body: Option<&str>) -> Option<(Endpoint, Fault)> {
    let fault = Fault {
        http_status: Some(http_status),
        body: body.map(str::to_owned),
        times: 100,
        ..Fault::default()
    };
    Some((Endpoint::UpgradeService, fault))
}

fn cases() -> Vec<Case> {
    let valid = member_json("zhangsan");
    let case = |name, fault, request: &Value| Case {
        name,
        fault,
        request: request.clone(),
        headers: &[],
    };
    let upgrade = Endpoint::UpgradeService;
    let mut cases: Vec<Case> = [
        95000, 95004, 95021, 95013, 40096, 40003, 40058, 48002, 60011, 60020, 301002, 41001, 47001,
        45009, 45033, -1, 40014, 123456,
    ]
    .into_iter()
    .map(|code| case("errcode", errcode(upgrade, code), &valid))
    .collect();
    cases.extend([
        case("credentials", errcode(Endpoint::GetToken, 40001), &valid),
        case("corp id", errcode(Endpoint::GetToken, 40013), &valid),
        case(
            "HTML 502",
            http_fault(502, Some("<html>bad gateway</html>")),
            &valid,
        ),
        case("404", http_fault(404, None), &valid),
        case("429", http_fault(429, None), &valid),
        case(
            "HTML with 200",
            http_fault(200, Some("<html>maintenance</html>")),
            &valid,
        ),
        case("the sandbox's own 95021", None, &member_json("wangwu")),
        case("invalid request", None, &json!({"member": {}})),
        Case {
            name: "unknown app",
            fault: None,
            request: valid.clone(),
            headers: &[("x-wecom-app", b"nope")],
        },
        Case {
            name: "non-ASCII app",
            fault: None,
            request: valid.clone(),
            headers: &[("x-wecom-app", b"caf\xe9")],
        },
    ]);
    cases
}

/// The gRPC twin of an upgrade request in JSON.
fn grpc_request(case: &Case) -> tonic::Request<wecom_kf_upgrade::grpc::pb::UpgradeServiceRequest> {
    let json = &case.request;
    let text = |v: &Value| v.as_str().unwrap_or_default().to_owned();
    let mut message = member_upgrade(
        &text(&json["member"]["userid"]),
        &text(&json["member"]["wording"]),
    );
    message.open_kfid = text(&json["openKfid"]);
    message.external_userid = text(&json["externalUserid"]);
    if json["member"].is_null() {
        message.target = None;
    }
    let mut request = tonic::Request::new(message);
    for (key, value) in case.headers {
        let value = tonic::metadata::MetadataValue::try_from(*value).unwrap();
        request.metadata_mut().insert(*key, value);
    }
    request
}

/// The status's code, reason and errcode, and over HTTP the same three from the body.
fn summary(status: &Status) -> (i64, String, Value) {
    let info = status.get_details_error_info().unwrap();
    let errcode = info
        .metadata
        .get("errcode")
        .map_or(Value::Null, |e| json!(e));
    (status.code() as i64, info.reason, errcode)
}

fn http_summary(body: &Value) -> (i64, String, Value) {
    let info = body["details"]
        .as_array()
        .and_then(|d| {
            d.iter()
                .find(|d| d["@type"] == "type.googleapis.com/google.rpc.ErrorInfo")
        })
        .unwrap_or_else(|| panic!("no ErrorInfo in {body}"));
    let code = body["code"].as_i64().unwrap();
    (
        code,
        info["reason"].as_str().unwrap().to_owned(),
        info["metadata"]["errcode"].clone(),
    )
}

#[tokio::test]
async fn every_error_the_sandbox_can_produce_is_the_same_over_http_and_grpc() {
    let mut failures = Vec::new();
    for case in cases() {
        let mut app = spawn_app().await;
        if let Some((endpoint, fault)) = case.fault.clone() {
            app.fault(endpoint, fault);
        }
        let status = app
            .client
            .upgrade_service(grpc_request(&case))
            .await
            .unwrap_err();
        let mut headers = HeaderMap::new();
        for (key, value) in case.headers {
            headers.insert(*key, HeaderValue::from_bytes(value).unwrap());
        }
        let request = Some(case.request.clone());
        let (http_status, body) = http(&app, "/v1/upgrade-service", request, headers).await;

        let (grpc, over_http) = (summary(&status), http_summary(&body));
        let expected_http = match status.code() {
            Code::InvalidArgument | Code::FailedPrecondition => 400,
            Code::NotFound => 404,
            Code::PermissionDenied => 403,
            Code::ResourceExhausted => 429,
            Code::Unavailable => 503,
            Code::Internal | Code::Unknown => 500,
            other => panic!("{}: no expectation for {other:?}", case.name),
        };
        if grpc != over_http || http_status != expected_http || body["message"] != status.message()
        {
            failures.push(format!(
                "{}: gRPC {grpc:?} vs HTTP {http_status} {body}",
                case.name
            ));
        }
    }
    assert!(failures.is_empty(), "{failures:#?}");
}

#[tokio::test]
async fn a_malformed_or_oversized_body_is_refused_with_error_info() {
    let app = spawn_app().await;
    let (status, body) = upgrade_over_http(&app, json!({"member": {}, "groupchat": {}})).await;
    assert_eq!(status, 400);
    assert_eq!(http_summary(&body).1, "MALFORMED_REQUEST");

    let (status, body) = upgrade_over_http(&app, json!({"open_kfid": 7})).await;
    assert_eq!(
        (status, http_summary(&body).1.as_str()),
        (400, "MALFORMED_REQUEST"),
        "{body}"
    );

    let huge = json!({"openKfid": "x".repeat(100 * 1024)});
    let (status, body) = upgrade_over_http(&app, huge).await;
    assert_eq!(
        (status, http_summary(&body).1.as_str()),
        (400, "REQUEST_TOO_LARGE"),
        "{body}"
    );
    assert_eq!(body["code"], Code::OutOfRange as i32);
    assert!(app.sandbox.requests().is_empty(), "nothing reached WeCom");
}

#[tokio::test]
async fn rate_limits_carry_retry_info_over_http() {
    let app = spawn_app().await;
    let (endpoint, fault) = errcode(Endpoint::UpgradeService, 45009).unwrap();
    app.fault(endpoint, fault);
    let (status, body) = upgrade_over_http(&app, member_json("zhangsan")).await;
    assert_eq!(status, 429);
    let retry = body["details"].as_array().and_then(|d| {
        d.iter()
            .find(|d| d["@type"] == "type.googleapis.com/google.rpc.RetryInfo")
    });
    assert_eq!(
        retry.map(|r| r["retryDelay"].clone()),
        Some(json!("10s")),
        "{body}"
    );
}

#[tokio::test]
async fn a_wrong_method_is_405_with_a_status_body() {
    let app = spawn_app().await;
    let (status, body) = http(&app, "/v1/upgrade-service", None, HeaderMap::new()).await;
    assert_eq!(status, 405);
    assert_eq!(body["code"], Code::Unimplemented as i32, "{body}");
    assert!(app.sandbox.requests().is_empty());
}

#[tokio::test]
async fn an_unknown_path_is_404_over_http_and_unimplemented_over_grpc() {
    let app = spawn_app().await;
    let (status, body) = http(
        &app,
        "/v1/cancel-upgrade",
        Some(json!({})),
        HeaderMap::new(),
    )
    .await;
    assert_eq!(status, 404, "never a 200 a caller could take for success");
    assert_eq!(body["code"], Code::NotFound as i32, "{body}");
    assert_eq!(http_summary(&body).1, "UNKNOWN_ROUTE");

    let channel = tonic::transport::Endpoint::from_shared(format!("http://{}", app.grpc_addr))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready().await.unwrap();
    let path = tonic::codegen::http::uri::PathAndQuery::from_static("/wecom.kf.v1.Nope/Nothing");
    let codec = tonic_prost::ProstCodec::<(), ()>::default();
    let status = grpc
        .unary(tonic::Request::new(()), path, codec)
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unimplemented);
}

#[tokio::test]
async fn a_post_that_is_not_json_is_refused_and_reaches_no_wecom() {
    let app = spawn_app().await;
    let response = reqwest::Client::new()
        .post(format!("http://{}/v1/upgrade-service", app.grpc_addr))
        .header("content-type", "text/plain")
        .body(member_json("zhangsan").to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 400);
    let body: Value = serde_json::from_slice(&response.bytes().await.unwrap()).unwrap();
    assert_eq!(http_summary(&body).1, "UNSUPPORTED_CONTENT_TYPE", "{body}");
    assert!(app.sandbox.requests().is_empty());
}

// tonic answers a passed grpc-timeout itself, as gRPC; the gateway must answer an
// HTTP caller first, as HTTP, however slowly its body arrives.
#[tokio::test]
async fn a_body_slower_than_the_callers_deadline_is_deadline_exceeded_as_json() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let app = spawn_app().await;
    let body = member_json("zhangsan").to_string();
    let mut socket = tokio::net::TcpStream::connect(app.grpc_addr).await.unwrap();
    let head = format!(
        "POST /v1/upgrade-service HTTP/1.1\r\nhost: gateway\r\ncontent-type: application/json\r\n\
         grpc-timeout: 300m\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
        body.len()
    );
    socket.write_all(head.as_bytes()).await.unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(600)).await;
    let _ = socket.write_all(body.as_bytes()).await;
    let mut answer = String::new();
    socket.read_to_string(&mut answer).await.unwrap();

    assert!(answer.starts_with("HTTP/1.1 504"), "{answer}");
    let json = &answer[answer.find('{').unwrap_or(0)..];
    let body: Value = serde_json::from_str(json).unwrap();
    assert_eq!(http_summary(&body).1, "DEADLINE_EXCEEDED", "{body}");
    assert!(app.sandbox.requests().is_empty());
}

// Without a deadline of the caller's, the gateway bounds the body's arrival itself
// and answers as HTTP, not with tonic's gRPC-shaped timeout.
#[tokio::test]
async fn a_body_that_never_arrives_whole_is_refused_as_json_after_the_read_timeout() {
    use std::time::Duration;

    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let app = spawn_app_with(|s| s.server.request_read_timeout = Duration::from_millis(300)).await;
    let mut socket = tokio::net::TcpStream::connect(app.grpc_addr).await.unwrap();
    let head = "POST /v1/upgrade-service HTTP/1.1\r\nhost: gateway\r\n\
                content-type: application/json\r\ncontent-length: 100\r\nconnection: close\r\n\r\n";
    socket.write_all(head.as_bytes()).await.unwrap();
    socket.write_all(b"{\"open_kfid\":").await.unwrap();
    let mut answer = String::new();
    let read = tokio::time::timeout(Duration::from_secs(5), socket.read_to_string(&mut answer));
    read.await
        .expect("answered within the read timeout")
        .unwrap();

    assert!(answer.starts_with("HTTP/1.1 504"), "{answer}");
    let json = &answer[answer.find('{').unwrap_or(0)..];
    let body: Value = serde_json::from_str(json).unwrap();
    assert_eq!(http_summary(&body).1, "REQUEST_READ_TIMEOUT", "{body}");
    assert!(
        !body.to_string().contains("may_have_taken_effect"),
        "{body}"
    );
    assert!(app.sandbox.requests().is_empty());
}
