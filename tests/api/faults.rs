//! The network between the gateway and WeCom breaking, through the fault proxy:
//! each fault ends the call with the documented status and ErrorInfo, and the
//! gateway serves the next call as if nothing had happened.

use std::time::Duration;

use tonic::Code;
use wecom_kf_upgrade::{config::Settings, grpc::pb, sandbox::Fault, wecom::Endpoint};

use crate::{
    fault_proxy::{FaultProxy, ProxyFault},
    helpers::*,
};

/// The gateway against a fresh sandbox, reached through a fault proxy that passes
/// everything through until a test says otherwise. The token is fetched first, so
/// the faults hit the business call.
async fn spawn_app_behind_proxy(adjust: impl FnOnce(&mut Settings)) -> (TestApp, FaultProxy) {
    let mut proxy = None;
    let mut app = spawn_app_with(|settings| {
        let app = settings.apps.get_mut("default").unwrap();
        let sandbox = app.api_base.socket_addrs(|| None).unwrap()[0];
        let started = FaultProxy::start(sandbox);
        app.api_base = started.base_url().parse().unwrap();
        proxy = Some(started);
        adjust(settings);
    })
    .await;
    app.get_config()
        .await
        .expect("a warm-up call through the proxy");
    (app, proxy.unwrap())
}

/// With the fault off, a call succeeds: the gateway was not left broken, and its
/// server task (where a panic would surface) still runs.
async fn assert_still_serving(app: &mut TestApp, proxy: &FaultProxy) {
    proxy.set(ProxyFault::PassThrough);
    app.get_config().await.expect("the next call succeeds");
    assert!(!app.server.is_finished(), "the server task ended");
}

fn upgrade_of(customer: &str) -> pb::UpgradeServiceRequest {
    let mut request = member_upgrade("zhangsan", "");
    request.external_userid = customer.into();
    request
}

#[tokio::test]
async fn a_reset_after_wecom_answered_is_retried_and_the_upgrade_succeeds() {
    let (mut app, proxy) = spawn_app_behind_proxy(|_| {}).await;
    proxy.set_times(ProxyFault::ResetAfterForwarding, 1);

    app.client
        .upgrade_service(upgrade_of("wmresetonce"))
        .await
        .expect("the retry gets WeCom's answer");

    assert_eq!(proxy.applied(), 1);
    assert_eq!(
        app.calls_to(Endpoint::UpgradeService),
        2,
        "WeCom processed the lost attempt and the retry"
    );
    assert!(
        app.sandbox
            .recommendation(OPEN_KFID, "wmresetonce")
            .is_some()
    );
    assert_still_serving(&mut app, &proxy).await;
}

#[tokio::test]
async fn resets_after_every_answer_are_unavailable_connection_failed_after_retries() {
    let (mut app, proxy) = spawn_app_behind_proxy(|_| {}).await;
    proxy.set(ProxyFault::ResetAfterForwarding);

    let status = app.client.cancel_upgrade(cancel()).await.unwrap_err();

    let metadata = assert_status(&status, Code::Unavailable, "UPSTREAM_CONNECTION_FAILED");
    assert_eq!(metadata["endpoint"], Endpoint::CancelUpgrade.path());
    assert_eq!(
        proxy.applied(),
        4,
        "one attempt and three retries, each reset"
    );
    assert_eq!(app.calls_to(Endpoint::CancelUpgrade), 4);
    assert_still_serving(&mut app, &proxy).await;
}

#[tokio::test]
async fn an_upgrade_whose_answer_was_lost_says_it_may_have_taken_effect() {
    let (mut app, proxy) = spawn_app_behind_proxy(|_| {}).await;
    proxy.set(ProxyFault::ResetAfterForwarding);

    let status = app
        .client
        .upgrade_service(upgrade_of("wmanswerlost"))
        .await
        .unwrap_err();

    let metadata = assert_status(&status, Code::Unavailable, "UPSTREAM_CONNECTION_FAILED");
    assert!(
        app.sandbox
            .recommendation(OPEN_KFID, "wmanswerlost")
            .is_some(),
        "WeCom applied the upgrade"
    );
    assert_eq!(
        metadata.get("may_have_taken_effect").map(String::as_str),
        Some("true"),
        "{metadata:?}"
    );
    assert_still_serving(&mut app, &proxy).await;
}

#[tokio::test]
async fn a_reset_before_forwarding_is_unavailable_and_never_reaches_wecom() {
    let (mut app, proxy) = spawn_app_behind_proxy(|_| {}).await;
    proxy.set(ProxyFault::ResetBeforeForwarding);

    let status = app
        .client
        .upgrade_service(upgrade_of("wmresetfirst"))
        .await
        .unwrap_err();

    assert_status(&status, Code::Unavailable, "UPSTREAM_CONNECTION_FAILED");
    assert_eq!(
        proxy.applied(),
        4,
        "one attempt and three retries, each reset"
    );
    assert_eq!(app.calls_to(Endpoint::UpgradeService), 0);
    assert!(
        app.sandbox
            .recommendation(OPEN_KFID, "wmresetfirst")
            .is_none()
    );
    assert_still_serving(&mut app, &proxy).await;
}

#[tokio::test]
async fn a_connection_reset_at_accept_is_absorbed_by_a_retry() {
    let (mut app, proxy) = spawn_app_behind_proxy(|_| {}).await;
    proxy.set_times(ProxyFault::ResetBeforeForwarding, 1);

    app.client
        .upgrade_service(upgrade_of("wmresetfirstonce"))
        .await
        .expect("the retry reaches WeCom");

    assert_eq!(proxy.applied(), 1);
    assert_eq!(app.calls_to(Endpoint::UpgradeService), 1);
    assert!(
        app.sandbox
            .recommendation(OPEN_KFID, "wmresetfirstonce")
            .is_some()
    );
}

#[tokio::test]
async fn a_stalled_connection_is_unavailable_upstream_timeout() {
    let (mut app, proxy) =
        spawn_app_behind_proxy(|s| s.upstream.request_timeout = Duration::from_millis(500)).await;
    proxy.set(ProxyFault::Stall);

    let status = app.get_config().await.unwrap_err();

    let metadata = assert_status(&status, Code::Unavailable, "UPSTREAM_TIMEOUT");
    assert_eq!(metadata["endpoint"], Endpoint::GetUpgradeConfig.path());
    assert_eq!(
        proxy.applied(),
        4,
        "one attempt and three retries, each stalled"
    );
    assert_eq!(
        app.calls_to(Endpoint::GetUpgradeConfig),
        1,
        "only the warm-up reached WeCom"
    );
    assert_still_serving(&mut app, &proxy).await;
}

#[tokio::test]
async fn a_stalled_connection_under_a_shorter_caller_deadline_is_deadline_exceeded() {
    // The gateway's own limits are far off: the caller's deadline ends the call.
    let (mut app, proxy) = spawn_app_behind_proxy(|s| {
        s.upstream.request_timeout = Duration::from_secs(10);
        s.upstream.call_timeout = Duration::from_secs(20);
    })
    .await;
    proxy.set(ProxyFault::Stall);
    let mut request = tonic::Request::new(cancel());
    request.set_timeout(Duration::from_secs(2));

    let started = std::time::Instant::now();
    let status = app.client.cancel_upgrade(request).await.unwrap_err();

    assert_status(&status, Code::DeadlineExceeded, "DEADLINE_EXCEEDED");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(proxy.applied(), 1);
    assert_still_serving(&mut app, &proxy).await;
}

#[tokio::test]
async fn a_slow_body_within_the_request_timeout_is_answered() {
    let (mut app, proxy) = spawn_app_behind_proxy(|s| {
        s.upstream.request_timeout = Duration::from_secs(10);
        s.upstream.call_timeout = Duration::from_secs(20);
    })
    .await;
    proxy.set(ProxyFault::SlowBody(Duration::from_millis(1)));

    let config = app
        .get_config()
        .await
        .expect("a slow answer is still an answer");

    assert!(proxy.applied() >= 1, "the answer was dribbled");
    let members = config.member_range.unwrap().userid_list;
    assert_eq!(members, ["zhangsan", "lisi"], "read whole, byte by byte");
}

#[tokio::test]
async fn a_body_slower_than_the_request_timeout_is_unavailable_upstream_timeout() {
    let (mut app, proxy) =
        spawn_app_behind_proxy(|s| s.upstream.request_timeout = Duration::from_millis(500)).await;
    // About 400 bytes at 50 ms each: no attempt can finish in 500 ms.
    proxy.set(ProxyFault::SlowBody(Duration::from_millis(50)));

    let status = app.get_config().await.unwrap_err();

    assert_status(&status, Code::Unavailable, "UPSTREAM_TIMEOUT");
    assert_eq!(
        app.calls_to(Endpoint::GetUpgradeConfig),
        5,
        "the warm-up, then one attempt and three retries, each answered too slowly"
    );
    assert_still_serving(&mut app, &proxy).await;
}

#[tokio::test]
async fn a_slow_body_under_a_shorter_caller_deadline_is_deadline_exceeded() {
    let (mut app, proxy) = spawn_app_behind_proxy(|s| {
        s.upstream.request_timeout = Duration::from_secs(10);
        s.upstream.call_timeout = Duration::from_secs(20);
    })
    .await;
    proxy.set(ProxyFault::SlowBody(Duration::from_millis(50)));
    let mut request = tonic::Request::new(pb::GetUpgradeConfigRequest {});
    request.set_timeout(Duration::from_secs(2));

    let status = app.client.get_upgrade_config(request).await.unwrap_err();

    assert_status(&status, Code::DeadlineExceeded, "DEADLINE_EXCEEDED");
    assert_still_serving(&mut app, &proxy).await;
}

#[tokio::test]
async fn the_sandbox_counts_a_request_it_is_still_answering() {
    // What a soak waits on before it reads WeCom's record as final.
    let mut app = spawn_app().await;
    app.get_config().await.unwrap();
    app.fault(
        Endpoint::CancelUpgrade,
        Fault {
            delay_ms: 1_000,
            ..Fault::default()
        },
    );
    assert_eq!(app.sandbox.requests_in_flight(), 0);

    let mut client = app.client.clone();
    let call = tokio::spawn(async move { client.cancel_upgrade(cancel()).await });
    let mut seen = 0;
    while seen == 0 && !call.is_finished() {
        seen = app.sandbox.requests_in_flight();
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    assert_eq!(seen, 1, "counted while the delay held it");
    call.await.unwrap().expect("answered after the delay");
    assert_eq!(app.sandbox.requests_in_flight(), 0);
}
