//! The error model, one test per row: each upstream failure, through the real
//! server, becomes the documented status, reason and metadata.

use std::time::Duration;

use tonic::Code;
use tonic_types::StatusExt;
use wecom_kf_upgrade::{
    grpc::status::{
        CONCURRENCY_LIMIT_RETRY_DELAY, GATEWAY_DOMAIN, RATE_LIMIT_RETRY_DELAY, WECOM_DOMAIN,
    },
    sandbox::Fault,
    wecom::Endpoint,
};

use crate::helpers::*;

/// Scripts `errcode` on every upgrade_service answer, makes one call, and checks
/// code, reason, domain and the errcode in the metadata.
async fn upgrade_answering(errcode: i64, code: Code, reason: &str) -> (TestApp, tonic::Status) {
    let mut app = spawn_app().await;
    app.fault(
        Endpoint::UpgradeService,
        Fault {
            errcode: Some(errcode),
            errmsg: Some(format!("scripted {errcode}")),
            times: 10,
            ..Fault::default()
        },
    );
    let status = app
        .client
        .upgrade_service(member_upgrade("zhangsan", ""))
        .await
        .unwrap_err();
    let metadata = assert_status(&status, code, reason);
    assert_eq!(metadata["errcode"], errcode.to_string());
    assert_eq!(metadata["errmsg"], format!("scripted {errcode}"));
    assert_eq!(
        status.get_details_error_info().unwrap().domain,
        WECOM_DOMAIN
    );
    assert!(
        status.message().contains(&errcode.to_string()),
        "{}",
        status.message()
    );
    (app, status)
}

macro_rules! errcode_rows {
    ($($name:ident: $errcode:expr => $code:ident, $reason:literal;)*) => {$(
        #[tokio::test]
        async fn $name() {
            let (app, _) = upgrade_answering($errcode, Code::$code, $reason).await;
            assert_eq!(app.calls_to(Endpoint::UpgradeService), 1, "not retried");
        }
    )*};
}

errcode_rows! {
    errcode_95000_invalid_open_kfid_is_invalid_argument: 95000 => InvalidArgument, "INVALID_OPEN_KFID";
    errcode_95004_unknown_open_kfid_is_not_found: 95004 => NotFound, "OPEN_KFID_NOT_FOUND";
    errcode_95021_target_not_configured_is_failed_precondition: 95021 => FailedPrecondition, "UPGRADE_TARGET_NOT_CONFIGURED";
    other_kf_errcodes_are_failed_precondition: 95013 => FailedPrecondition, "KF_STATE_REJECTED";
    errcode_40096_bad_external_userid_is_invalid_argument: 40096 => InvalidArgument, "INVALID_EXTERNAL_USERID";
    errcode_40003_bad_userid_is_invalid_argument: 40003 => InvalidArgument, "INVALID_USERID";
    errcode_40058_bad_parameter_is_invalid_argument: 40058 => InvalidArgument, "INVALID_PARAMETER";
    errcode_48002_api_not_permitted_is_permission_denied: 48002 => PermissionDenied, "API_NOT_PERMITTED";
    errcode_60011_out_of_visible_range_is_permission_denied: 60011 => PermissionDenied, "OUT_OF_VISIBLE_RANGE";
    errcode_60020_untrusted_ip_is_permission_denied: 60020 => PermissionDenied, "UNTRUSTED_IP";
    errcode_301002_app_not_permitted_is_permission_denied: 301002 => PermissionDenied, "APP_NOT_PERMITTED";
    errcode_41001_missing_token_is_internal: 41001 => Internal, "ACCESS_TOKEN_MISSING";
    errcode_47001_unreadable_json_is_internal: 47001 => Internal, "REQUEST_NOT_UNDERSTOOD";
    an_unknown_errcode_is_unknown_with_the_number_kept: 123456 => Unknown, "WECOM_ERROR";
}

#[tokio::test]
async fn errcode_45009_rate_limit_is_resource_exhausted_with_retry_info() {
    let (app, status) = upgrade_answering(45009, Code::ResourceExhausted, "RATE_LIMITED").await;
    assert_eq!(app.calls_to(Endpoint::UpgradeService), 1, "not retried");
    assert_eq!(
        status.get_details_retry_info().unwrap().retry_delay,
        Some(RATE_LIMIT_RETRY_DELAY)
    );
}

#[tokio::test]
async fn errcode_45033_concurrency_limit_is_resource_exhausted_with_retry_info() {
    let (_, status) =
        upgrade_answering(45033, Code::ResourceExhausted, "CONCURRENCY_LIMITED").await;
    assert_eq!(
        status.get_details_retry_info().unwrap().retry_delay,
        Some(CONCURRENCY_LIMIT_RETRY_DELAY)
    );
}

#[tokio::test]
async fn the_sandboxs_own_95021_for_an_unconfigured_member_is_failed_precondition() {
    let mut app = spawn_app().await;
    let status = app
        .client
        .upgrade_service(member_upgrade("wangwu", ""))
        .await
        .unwrap_err();
    let metadata = assert_status(
        &status,
        Code::FailedPrecondition,
        "UPGRADE_TARGET_NOT_CONFIGURED",
    );
    assert_eq!(metadata["errcode"], "95021");
    assert_eq!(metadata["endpoint"], Endpoint::UpgradeService.path());
}

#[tokio::test]
async fn errcode_40013_bad_corp_id_on_gettoken_is_failed_precondition() {
    let mut app =
        spawn_app_with(|s| s.apps.get_mut("default").unwrap().corp_id = "wwnotthecorp".into())
            .await;
    let status = app.client.cancel_upgrade(cancel()).await.unwrap_err();
    let metadata = assert_status(&status, Code::FailedPrecondition, "CREDENTIALS_REJECTED");
    assert_eq!(metadata["errcode"], "40013");
    assert_eq!(metadata["endpoint"], Endpoint::GetToken.path());
    assert_eq!(app.calls_to(Endpoint::CancelUpgrade), 0);
}

#[tokio::test]
async fn system_busy_is_retried_three_times_then_unavailable() {
    let mut app = spawn_app().await;
    app.fault(
        Endpoint::CancelUpgrade,
        Fault {
            errcode: Some(-1),
            times: 10,
            ..Fault::default()
        },
    );
    let status = app.client.cancel_upgrade(cancel()).await.unwrap_err();
    let metadata = assert_status(&status, Code::Unavailable, "SYSTEM_BUSY");
    assert_eq!(metadata["errcode"], "-1");
    assert_eq!(
        app.calls_to(Endpoint::CancelUpgrade),
        4,
        "one call and three retries"
    );
}

#[tokio::test]
async fn a_single_system_busy_is_absorbed_by_a_retry() {
    let mut app = spawn_app().await;
    app.fault(
        Endpoint::CancelUpgrade,
        Fault {
            errcode: Some(-1),
            ..Fault::default()
        },
    );
    app.client.cancel_upgrade(cancel()).await.unwrap();
    assert_eq!(app.calls_to(Endpoint::CancelUpgrade), 2);
}

#[tokio::test]
async fn an_html_502_page_is_unavailable_after_retries() {
    let mut app = spawn_app().await;
    app.fault(
        Endpoint::GetUpgradeConfig,
        Fault {
            http_status: Some(502),
            body: Some("<html><h1>502 Bad Gateway</h1></html>".into()),
            times: 10,
            ..Fault::default()
        },
    );
    let status = app.get_config().await.unwrap_err();
    let metadata = assert_status(&status, Code::Unavailable, "UPSTREAM_HTTP_ERROR");
    assert_eq!(metadata["http_status"], "502");
    assert!(!metadata.contains_key("errcode"), "WeCom gave no errcode");
    assert_eq!(
        status.get_details_error_info().unwrap().domain,
        GATEWAY_DOMAIN
    );
    assert_eq!(app.calls_to(Endpoint::GetUpgradeConfig), 4);
}

#[tokio::test]
async fn a_503_that_recovers_is_absorbed_by_a_retry() {
    let mut app = spawn_app().await;
    app.fault(
        Endpoint::GetUpgradeConfig,
        Fault {
            http_status: Some(503),
            ..Fault::default()
        },
    );
    app.get_config().await.unwrap();
}

#[tokio::test]
async fn a_404_is_internal_and_not_retried() {
    let mut app = spawn_app().await;
    app.fault(
        Endpoint::GetUpgradeConfig,
        Fault {
            http_status: Some(404),
            times: 10,
            ..Fault::default()
        },
    );
    let status = app.get_config().await.unwrap_err();
    assert_status(&status, Code::Internal, "UPSTREAM_HTTP_ERROR");
    assert_eq!(app.calls_to(Endpoint::GetUpgradeConfig), 1);
}

/// Scripts `body` as the HTTP 200 answer to get_upgrade_service_config.
async fn config_answering(body: &str) -> tonic::Status {
    let mut app = spawn_app().await;
    app.fault(
        Endpoint::GetUpgradeConfig,
        Fault {
            body: Some(body.into()),
            ..Fault::default()
        },
    );
    app.get_config().await.unwrap_err()
}

#[tokio::test]
async fn an_html_page_with_status_200_is_internal_malformed_body() {
    let status = config_answering("<!DOCTYPE html><html>maintenance</html>").await;
    assert_status(&status, Code::Internal, "UPSTREAM_MALFORMED_BODY");
}

#[tokio::test]
async fn truncated_json_is_internal_malformed_body() {
    let status = config_answering(r#"{"errcode":0,"errmsg":"ok","member_range":{"userid_li"#).await;
    assert_status(&status, Code::Internal, "UPSTREAM_MALFORMED_BODY");
}

#[tokio::test]
async fn json_without_errcode_is_internal_malformed_body() {
    let status = config_answering(r#"{"errmsg":"ok"}"#).await;
    assert_status(&status, Code::Internal, "UPSTREAM_MALFORMED_BODY");
}

#[tokio::test]
async fn json_with_wrong_types_is_internal_malformed_body() {
    let status =
        config_answering(r#"{"errcode":0,"member_range":{"department_id_list":"2,3"}}"#).await;
    assert_status(&status, Code::Internal, "UPSTREAM_MALFORMED_BODY");
}

#[tokio::test]
async fn a_body_over_the_limit_is_refused_without_reading_it_all() {
    let mut app = spawn_app_with(|s| s.upstream.max_body_bytes = 4096).await;
    let huge = format!(r#"{{"errcode":0,"errmsg":"{}"}}"#, "x".repeat(100_000));
    app.fault(
        Endpoint::GetUpgradeConfig,
        Fault {
            body: Some(huge),
            ..Fault::default()
        },
    );
    let status = app.get_config().await.unwrap_err();
    let metadata = assert_status(&status, Code::Internal, "UPSTREAM_BODY_TOO_LARGE");
    assert_eq!(metadata["limit_bytes"], "4096");
}

#[tokio::test]
async fn the_callers_deadline_bounds_the_upstream_call() {
    let mut app = spawn_app().await;
    app.fault(
        Endpoint::CancelUpgrade,
        Fault {
            delay_ms: 10_000,
            times: 10,
            ..Fault::default()
        },
    );
    // The gateway answers 5% (here 200 ms) before the deadline; tonic's client gives
    // up on its own at the deadline, so the margin must survive a loaded machine.
    let mut request = tonic::Request::new(cancel());
    request.set_timeout(Duration::from_secs(4));

    let started = std::time::Instant::now();
    let status = app.client.cancel_upgrade(request).await.unwrap_err();

    assert_status(&status, Code::DeadlineExceeded, "DEADLINE_EXCEEDED");
    assert!(
        started.elapsed() < Duration::from_secs(6),
        "{:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn the_gateways_call_timeout_bounds_a_hanging_upstream() {
    let mut app = spawn_app_with(|s| {
        s.upstream.call_timeout = Duration::from_millis(300);
        s.upstream.request_timeout = Duration::from_millis(5_000);
    })
    .await;
    app.fault(
        Endpoint::CancelUpgrade,
        Fault {
            delay_ms: 3_000,
            ..Fault::default()
        },
    );
    let status = app.client.cancel_upgrade(cancel()).await.unwrap_err();
    assert_status(&status, Code::Unavailable, "UPSTREAM_TIMEOUT");
}

#[tokio::test]
async fn a_slow_request_times_out_and_is_retried() {
    // Roomy figures: the retry must fit in its own request timeout on a loaded machine.
    let mut app =
        spawn_app_with(|s| s.upstream.request_timeout = Duration::from_millis(1_000)).await;
    app.fault(
        Endpoint::CancelUpgrade,
        Fault {
            delay_ms: 3_000,
            ..Fault::default()
        },
    );
    app.client.cancel_upgrade(cancel()).await.unwrap();
    assert_eq!(app.calls_to(Endpoint::CancelUpgrade), 2);
}

#[tokio::test]
async fn an_unreachable_wecom_is_unavailable() {
    let (_reserved, closed) = refusing_addr();
    let mut app = spawn_app_with(|s| {
        s.apps.get_mut("default").unwrap().api_base = format!("http://{closed}").parse().unwrap();
    })
    .await;
    let status = app.client.cancel_upgrade(cancel()).await.unwrap_err();
    let metadata = assert_status(&status, Code::Unavailable, "UPSTREAM_UNREACHABLE");
    assert_eq!(metadata["endpoint"], Endpoint::GetToken.path());
    assert!(
        !status.message().contains("sandbox-secret"),
        "{}",
        status.message()
    );
}

#[tokio::test]
async fn a_connection_dropped_mid_answer_is_unavailable_and_leaks_no_token() {
    let broken = "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 500\r\n\r\n{\"errcode\":0,";
    let fake = FakeUpstream::start(vec![Scripted::Raw(broken); 4]).await;
    let (mut client, _stop) = spawn_app_against(&fake).await;

    let status = client.cancel_upgrade(cancel()).await.unwrap_err();

    let metadata = assert_status(&status, Code::Unavailable, "UPSTREAM_CONNECTION_FAILED");
    let everything = format!("{status:?}{metadata:?}");
    assert!(!everything.contains("FAKE-TOKEN-123"), "{everything}");
    assert!(!everything.contains("fake-secret"), "{everything}");
    assert_eq!(
        fake.requests_to("/cgi-bin/kf/customer/cancel_upgrade_service")
            .len(),
        4
    );
}

#[tokio::test]
async fn an_unknown_app_is_invalid_argument_naming_the_configured_apps() {
    let mut app = spawn_app().await;
    let status = app
        .client
        .cancel_upgrade(for_app(cancel(), "nope"))
        .await
        .unwrap_err();
    let metadata = assert_status(&status, Code::InvalidArgument, "UNKNOWN_APP");
    assert_eq!(metadata["configured_apps"], "default");
    assert!(status.message().contains("default"), "{}", status.message());
    assert!(app.sandbox.requests().is_empty(), "nothing reached WeCom");
}

#[tokio::test]
async fn an_http_429_is_resource_exhausted_with_retry_info_and_not_retried() {
    let mut app = spawn_app().await;
    app.fault(
        Endpoint::GetUpgradeConfig,
        Fault {
            http_status: Some(429),
            times: 10,
            ..Fault::default()
        },
    );
    let status = app.get_config().await.unwrap_err();
    let metadata = assert_status(&status, Code::ResourceExhausted, "UPSTREAM_RATE_LIMITED");
    assert_eq!(metadata["http_status"], "429");
    assert!(status.get_details_retry_info().is_some());
    assert_eq!(app.calls_to(Endpoint::GetUpgradeConfig), 1);
}

#[tokio::test]
async fn an_http_408_from_a_proxy_is_retried() {
    let mut app = spawn_app().await;
    app.fault(
        Endpoint::GetUpgradeConfig,
        Fault {
            http_status: Some(408),
            ..Fault::default()
        },
    );
    app.get_config().await.unwrap();
    assert_eq!(app.calls_to(Endpoint::GetUpgradeConfig), 2);
}
