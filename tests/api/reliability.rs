//! Limits, load shedding, hardened connections and shutdown, each failure mode
//! reproduced: WeCom's rate kept, excess calls refused at once, silent or
//! cancelling callers handled, file descriptors run out, SIGTERM mid-call.

use std::{
    net::SocketAddr,
    sync::Arc,
    time::{Duration, Instant},
};

use tokio::{io::AsyncReadExt, net::TcpStream};
use tonic::{
    Code, Status,
    codec::{BufferSettings, Codec, DecodeBuf, Decoder, EncodeBuf, Encoder},
    codegen::http,
    transport::Channel,
};
use tonic_types::StatusExt;
use wecom_kf_upgrade::{
    grpc::pb,
    sandbox::{Fault, Sandbox, SandboxConfig, SandboxHandle},
    wecom::Endpoint,
};

use crate::{helpers::*, process::*};

fn with_deadline<T>(message: T, deadline: Duration) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request.set_timeout(deadline);
    request
}

fn reason(status: &Status) -> String {
    status
        .get_details_error_info()
        .map(|info| info.reason)
        .unwrap_or_else(|| panic!("no ErrorInfo in {status:?}"))
}

#[tokio::test]
async fn a_burst_reaches_wecom_no_faster_than_the_configured_rate() {
    // 120 a minute: a burst of 12, then one slot every 60 s / 108 = 556 ms.
    let app = spawn_app_with(|s| {
        s.limits.corp_api_per_minute = 120;
        s.limits.max_wait = Duration::from_millis(1_500);
    })
    .await;
    // The token first, so that the burst's calls are admitted as they arrive.
    app.client.clone().cancel_upgrade(cancel()).await.unwrap();
    let started = Instant::now();
    let calls = (0..40).map(|i| {
        let mut client = app.client.clone();
        let request = member_upgrade("zhangsan", &format!("burst {i}"));
        tokio::spawn(async move {
            let answer = client
                .upgrade_service(with_deadline(request, Duration::from_secs(10)))
                .await;
            (answer, started.elapsed())
        })
    });
    let mut admitted = Vec::new();
    let mut refused = 0;
    for call in futures_join(calls).await {
        match call {
            (Ok(_), after) => admitted.push(after),
            (Err(status), after) => {
                assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
                assert_eq!(reason(&status), "GATEWAY_RATE_LIMITED");
                let retry = status.get_details_retry_info().expect("RetryInfo");
                // Having waited in vain, the call suggests waiting as long again.
                let delay = retry.retry_delay.expect("a retry delay");
                assert_eq!(delay, Duration::from_millis(1_500));
                // max_wait bounds the whole wait, not each turn of it.
                assert!(
                    after < Duration::from_millis(3_500),
                    "refused after {after:?}"
                );
                refused += 1;
            }
        }
    }
    // Every admitted call reached WeCom, no refused one did.
    assert_eq!(app.calls_to(Endpoint::UpgradeService), admitted.len());
    assert!(refused > 0, "the burst is larger than the budget");
    // Some waited for a slot instead of being refused...
    assert!(admitted.len() > 12, "{} admitted", admitted.len());
    // ...but none faster than the rate: the n-th call after the burst of 12
    // cannot have completed before n slot intervals from the start.
    admitted.sort();
    let interval = Duration::from_secs(60) / 108;
    for (n, after) in admitted.iter().enumerate().skip(12) {
        let slots = u32::try_from(n - 11).unwrap();
        assert!(
            *after >= interval * slots,
            "call {n} completed {after:?} after the start: faster than the rate"
        );
    }
}

/// Awaits every task, in order.
async fn futures_join<T>(tasks: impl Iterator<Item = tokio::task::JoinHandle<T>>) -> Vec<T> {
    let mut results = Vec::new();
    for task in tasks.collect::<Vec<_>>() {
        results.push(task.await.expect("the task does not panic"));
    }
    results
}

/// `n` upgrades that the sandbox holds for `delay_ms`, once it has received them all.
async fn slow_upgrades(
    app: &TestApp,
    n: u32,
    delay_ms: u64,
) -> Vec<tokio::task::JoinHandle<Result<tonic::Response<pb::UpgradeServiceResponse>, Status>>> {
    app.fault(
        Endpoint::UpgradeService,
        Fault {
            delay_ms,
            times: n,
            ..Default::default()
        },
    );
    let slow: Vec<_> = (0..n)
        .map(|i| {
            let mut client = app.client.clone();
            let request = member_upgrade("zhangsan", &format!("slow {i}"));
            tokio::spawn(async move { client.upgrade_service(request).await })
        })
        .collect();
    while app.calls_to(Endpoint::UpgradeService) < n as usize {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    slow
}

#[tokio::test]
async fn past_the_in_flight_limit_calls_are_refused_at_once() {
    let app = spawn_app_with(|s| s.server.max_calls_in_flight = 3).await;
    let slow = slow_upgrades(&app, 3, 3_000).await;

    let started = Instant::now();
    let status = app
        .client
        .clone()
        .cancel_upgrade(cancel())
        .await
        .expect_err("a fourth call is shed");
    let waited = started.elapsed();

    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert_eq!(reason(&status), "OVERLOADED");
    assert!(status.get_details_retry_info().is_some());
    // Refused at once, not after the slow calls' 3 s.
    assert!(waited < Duration::from_millis(1_000), "{waited:?}");
    assert_eq!(app.calls_to(Endpoint::CancelUpgrade), 0);
    for call in slow {
        call.await.unwrap().expect("the admitted calls complete");
    }
    // Their slots are free again.
    app.client.clone().cancel_upgrade(cancel()).await.unwrap();
}

#[tokio::test]
async fn a_connection_that_never_sends_its_preface_is_closed_after_the_timeout() {
    let app = spawn_app_with(|s| s.server.handshake_timeout = Duration::from_millis(200)).await;
    let mut silent = TcpStream::connect(app.grpc_addr).await.unwrap();
    let mut byte = [0u8; 1];
    let read = tokio::time::timeout(Duration::from_secs(5), silent.read(&mut byte))
        .await
        .expect("the gateway closes the connection");
    assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");
    // Callers that speak in time are served.
    app.client.clone().cancel_upgrade(cancel()).await.unwrap();
}

/// A raw HTTP/2 connection that opens `streams` calls and cancels each at once
/// (its headers, then RST_STREAM(CANCEL), many in one write, before the server has
/// accepted the stream), as gRPC clients do when deadlines pass in bulk; then, on
/// the same connection, an empty GetUpgradeConfig: its grpc-status, or why none came.
async fn cancel_then_call(addr: SocketAddr, streams: usize) -> Result<String, h2::Error> {
    let tcp = TcpStream::connect(addr).await.unwrap();
    let (client, connection) = h2::client::handshake(tcp).await?;
    tokio::spawn(connection);
    let rpc = || {
        let uri = format!("http://{addr}/wecom.kf.v1.CustomerUpgradeService/GetUpgradeConfig");
        http::Request::post(uri)
            .header("content-type", "application/grpc")
            .header("te", "trailers")
            .body(())
            .unwrap()
    };
    let mut client = client.ready().await?;
    for _ in 0..streams {
        client = client.ready().await?;
        let (_, mut stream) = client.send_request(rpc(), false)?;
        stream.send_reset(h2::Reason::CANCEL);
    }
    // Once the server has caught up with the resets (until then it would refuse
    // the stream as one over max_concurrent_streams).
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut client = client.ready().await?;
    let (response, mut stream) = client.send_request(rpc(), false)?;
    stream.send_data(bytes::Bytes::from_static(&[0; 5]), true)?;
    let mut body = response.await?.into_body();
    while let Some(data) = body.data().await {
        data?;
    }
    let trailers = body.trailers().await?.unwrap_or_default();
    Ok(format!("{:?}", trailers.get("grpc-status")))
}

#[tokio::test]
async fn calls_cancelled_on_their_deadline_leave_the_connection_serving() {
    let app = spawn_app().await;
    let status = cancel_then_call(app.grpc_addr, 1_000).await;
    assert_eq!(status.expect("the connection still serves"), "Some(\"0\")");
}

#[tokio::test]
async fn a_rapid_reset_flood_is_cut_off() {
    let app = spawn_app().await;
    let error = cancel_then_call(app.grpc_addr, 50_000)
        .await
        .expect_err("the flooding connection is closed");
    assert_eq!(
        error.reason(),
        Some(h2::Reason::ENHANCE_YOUR_CALM),
        "{error:?}"
    );
    // Other connections are served.
    app.client.clone().cancel_upgrade(cancel()).await.unwrap();
}

/// Sends raw bytes as the request message.
#[derive(Default)]
struct RawBytes;

impl Codec for RawBytes {
    type Encode = Vec<u8>;
    type Decode = pb::UpgradeServiceResponse;
    type Encoder = RawBytes;
    type Decoder = ResponseDecoder;

    fn encoder(&mut self) -> RawBytes {
        RawBytes
    }

    fn decoder(&mut self) -> ResponseDecoder {
        ResponseDecoder
    }
}

impl Encoder for RawBytes {
    type Item = Vec<u8>;
    type Error = Status;

    fn encode(&mut self, item: Vec<u8>, buf: &mut EncodeBuf<'_>) -> Result<(), Status> {
        bytes::BufMut::put_slice(buf, &item);
        Ok(())
    }
}

struct ResponseDecoder;

impl Decoder for ResponseDecoder {
    type Item = pb::UpgradeServiceResponse;
    type Error = Status;

    fn decode(&mut self, buf: &mut DecodeBuf<'_>) -> Result<Option<Self::Item>, Status> {
        prost::Message::decode(buf)
            .map(Some)
            .map_err(|e| Status::internal(e.to_string()))
    }

    fn buffer_settings(&self) -> BufferSettings {
        BufferSettings::default()
    }
}

#[tokio::test]
async fn undecodable_requests_are_invalid_argument_with_error_info() {
    let app = spawn_app().await;
    let channel = Channel::from_shared(format!("http://{}", app.grpc_addr))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut grpc = tonic::client::Grpc::new(channel);
    let garbage: [(&str, Vec<u8>); 3] = [
        ("random bytes", vec![0xff, 0xfe, 0x07, 0x80, 0x80, 0x80]),
        // open_kfid (field 1, length-delimited) holding invalid UTF-8.
        ("invalid UTF-8", vec![0x0a, 0x02, 0xc3, 0x28]),
        // field 1 sent as a varint instead of a string.
        ("a wrong wire type", vec![0x08, 0x96, 0x01]),
    ];
    for (what, bytes) in garbage {
        grpc.ready().await.unwrap();
        let path = http::uri::PathAndQuery::from_static(
            "/wecom.kf.v1.CustomerUpgradeService/UpgradeService",
        );
        let status = grpc
            .unary(tonic::Request::new(bytes), path, RawBytes)
            .await
            .expect_err(what);
        assert_eq!(status.code(), Code::InvalidArgument, "{what}: {status:?}");
        assert_eq!(reason(&status), "MALFORMED_REQUEST", "{what}");
    }
    assert_eq!(app.calls_to(Endpoint::UpgradeService), 0);
}

#[tokio::test]
async fn a_one_megabyte_errmsg_still_delivers_the_errcode() {
    let app = spawn_app().await;
    app.fault(
        Endpoint::UpgradeService,
        Fault {
            errcode: Some(95021),
            errmsg: Some("x".repeat(1_000_000)),
            ..Default::default()
        },
    );
    let status = app
        .client
        .clone()
        .upgrade_service(member_upgrade("zhangsan", ""))
        .await
        .expect_err("WeCom refused it");
    assert_eq!(status.code(), Code::FailedPrecondition);
    let info = status.get_details_error_info().expect("ErrorInfo");
    assert_eq!(info.metadata["errcode"], "95021");
    assert!(info.metadata["errmsg"].len() < 1_000, "errmsg is bounded");
    assert!(status.message().len() < 1_000, "the message is bounded");
}

// === the real binary, as a platform runs it ===

async fn sandbox() -> (Arc<Sandbox>, SandboxHandle) {
    let sandbox = Sandbox::new(SandboxConfig::default());
    let handle = sandbox.spawn("127.0.0.1:0".parse().unwrap()).await.unwrap();
    (sandbox, handle)
}

#[tokio::test(flavor = "multi_thread")]
async fn out_of_file_descriptors_the_gateway_refuses_cleanly_and_does_not_spin() {
    let (_sandbox, handle) = sandbox().await;
    // No idle connections to WeCom: every request needs a new descriptor. Silent
    // connections are held for the whole test.
    let config = "[upstream]\nmax_idle_connections = 0\nmax_retries = 0\n\
                  [server]\nhandshake_timeout_ms = 60000\n";
    let gateway = Gateway::start(&handle, config, Some(48));
    let mut client = gateway.client().await;
    client
        .get_upgrade_config(pb::GetUpgradeConfigRequest {})
        .await
        .expect("served while descriptors last");

    let mut silent = Vec::new();
    for _ in 0..100 {
        silent.push(TcpStream::connect(gateway.grpc_addr).await.unwrap());
    }
    while gateway.lines_with("out of file descriptors").is_empty() {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let before = gateway.cpu_time();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let spent = gateway.cpu_time() - before;
    assert!(
        spent < Duration::from_millis(400),
        "{spent:?} of CPU in 2 s"
    );
    assert_eq!(gateway.lines_with("out of file descriptors").len(), 1);

    let status = client
        .upgrade_service(member_upgrade("zhangsan", ""))
        .await
        .expect_err("no descriptor for a connection to WeCom");
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert_eq!(reason(&status), "GATEWAY_OUT_OF_RESOURCES");

    // Descriptors free again: the gateway recovers by itself.
    drop(silent);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match client.upgrade_service(member_upgrade("zhangsan", "")).await {
            Ok(_) => break,
            Err(status) if Instant::now() < deadline => {
                assert_eq!(reason(&status), "GATEWAY_OUT_OF_RESOURCES");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(status) => panic!("did not recover: {status:?}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_mid_call_every_call_ends_with_a_status_and_an_audit_event() {
    let (sandbox, handle) = sandbox().await;
    // The grace (1.5 s) is shorter than the slow upgrades (20 s) and than the call
    // timeout (the default 10 s); the cancels finish within it.
    let config = "[server]\ndrain_delay_ms = 300\nshutdown_grace_ms = 1500\n";
    let mut gateway = Gateway::start(&handle, config, None);
    let client = gateway.client().await;
    let slow = |path: Endpoint, delay_ms, times| Fault {
        path: path.path().to_owned(),
        delay_ms,
        times,
        ..Default::default()
    };
    sandbox.push_fault(slow(Endpoint::UpgradeService, 20_000, 4));
    sandbox.push_fault(slow(Endpoint::CancelUpgrade, 700, 3));
    let upgrades: Vec<_> = (0..4)
        .map(|i| {
            let mut client = client.clone();
            let request = member_upgrade("zhangsan", &format!("shutdown {i}"));
            tokio::spawn(async move { client.upgrade_service(request).await.map(drop) })
        })
        .collect();
    let cancels: Vec<_> = (0..3)
        .map(|_| {
            let mut client = client.clone();
            tokio::spawn(async move { client.cancel_upgrade(cancel()).await.map(drop) })
        })
        .collect();
    let in_flight = |sandbox: &Sandbox| {
        sandbox.requests_to(Endpoint::UpgradeService.path()).len()
            + sandbox.requests_to(Endpoint::CancelUpgrade.path()).len()
    };
    while in_flight(&sandbox) < 7 {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    gateway.terminate();

    for call in cancels {
        call.await
            .unwrap()
            .expect("a call within the grace completes");
    }
    for call in upgrades {
        let status = call
            .await
            .unwrap()
            .expect_err("cut off at the end of the grace");
        assert_eq!(status.code(), Code::Unavailable, "{status:?}");
        let info = status.get_details_error_info().expect("ErrorInfo");
        assert_eq!(info.reason, "SHUTTING_DOWN");
        assert_eq!(info.metadata["may_have_taken_effect"], "true");
    }
    let exit = tokio::task::spawn_blocking(move || {
        let status = gateway.child.wait();
        (gateway, status)
    });
    let (gateway, status) = tokio::time::timeout(Duration::from_secs(10), exit)
        .await
        .expect("the gateway exits")
        .unwrap();
    assert!(status.unwrap().success());
    let audit = gateway.lines_with("\"target\":\"audit\"");
    assert_eq!(audit.len(), 7, "{audit:#?}");
    let outcome = |o: &str| {
        let needle = format!("\"outcome\":\"{o}\"");
        audit.iter().filter(|l| l.contains(&needle)).count()
    };
    assert_eq!(
        (outcome("Ok"), outcome("Unavailable")),
        (3, 4),
        "{audit:#?}"
    );
}

#[tokio::test]
async fn an_upgrade_whose_first_attempt_was_lost_says_it_may_have_taken_effect() {
    let app = spawn_app().await;
    let fault = |endpoint: Endpoint, http_status, errcode| Fault {
        path: endpoint.path().to_owned(),
        http_status,
        errcode,
        ..Default::default()
    };
    // A proxy's 502 (WeCom may have applied the upgrade behind it), then, on the
    // retry, WeCom's frequency limit: the caller must not read "not applied".
    for endpoint in [Endpoint::UpgradeService, Endpoint::GetUpgradeConfig] {
        app.sandbox.push_fault(fault(endpoint, Some(502), None));
        app.sandbox.push_fault(fault(endpoint, None, Some(45009)));
    }
    let status = app
        .client
        .clone()
        .upgrade_service(member_upgrade("zhangsan", ""))
        .await
        .expect_err("rate limited on the retry");
    assert_eq!(status.code(), Code::ResourceExhausted);
    let info = status.get_details_error_info().unwrap();
    assert_eq!(info.metadata["errcode"], "45009");
    assert_eq!(info.metadata["may_have_taken_effect"], "true");

    // A read changes nothing; a refusal WeCom answered on the first attempt is
    // definite.
    let read = app
        .client
        .clone()
        .get_upgrade_config(pb::GetUpgradeConfigRequest {})
        .await;
    let info = read.unwrap_err().get_details_error_info().unwrap();
    assert!(
        !info.metadata.contains_key("may_have_taken_effect"),
        "{info:?}"
    );
    app.sandbox
        .push_fault(fault(Endpoint::UpgradeService, None, Some(45009)));
    let definite = app
        .client
        .clone()
        .upgrade_service(member_upgrade("zhangsan", ""))
        .await;
    let info = definite.unwrap_err().get_details_error_info().unwrap();
    assert!(
        !info.metadata.contains_key("may_have_taken_effect"),
        "{info:?}"
    );
}

#[tokio::test]
async fn a_call_that_gets_no_turn_to_reach_a_slow_wecom_says_nothing_was_sent() {
    let app = spawn_app_with(|s| s.upstream.max_requests_per_app = 2).await;
    let slow = slow_upgrades(&app, 2, 2_000).await;
    let request = with_deadline(
        member_upgrade("zhangsan", "third"),
        Duration::from_millis(500),
    );
    let status = app
        .client
        .clone()
        .upgrade_service(request)
        .await
        .expect_err("no turn before the deadline");
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    let info = status.get_details_error_info().unwrap();
    assert_eq!(info.reason, "UPSTREAM_BUSY");
    assert!(!info.metadata.contains_key("may_have_taken_effect"));
    assert_eq!(app.calls_to(Endpoint::UpgradeService), 2);
    for call in slow {
        call.await.unwrap().expect("the slow calls complete");
    }
}
