//! The token cache, seen from outside: how many `gettoken` calls WeCom receives.

use tonic::Code;
use wecom_kf_upgrade::{grpc::pb, sandbox::Fault, wecom::Endpoint};

use crate::helpers::*;

/// Runs `n` GetUpgradeConfig calls at once (clones of one client, multiplexed on
/// its connection) and returns their results.
async fn concurrent_config_calls(app: &TestApp, n: usize) -> Vec<Result<(), tonic::Status>> {
    let calls: Vec<_> = (0..n)
        .map(|_| {
            let mut client = app.client.clone();
            tokio::spawn(async move {
                client
                    .get_upgrade_config(pb::GetUpgradeConfigRequest {})
                    .await
                    .map(|_| ())
            })
        })
        .collect();
    let mut results = Vec::with_capacity(n);
    for call in calls {
        results.push(call.await.unwrap());
    }
    results
}

/// Spreads the answers to the next `n` requests to `endpoint` over time, so that
/// some failures reach the gateway only after it has refreshed its token.
fn stagger_answers(app: &TestApp, endpoint: Endpoint, n: u64) {
    for i in 0..n {
        app.fault(
            endpoint,
            Fault {
                delay_ms: (i % 20) * 10,
                ..Fault::default()
            },
        );
    }
}

#[tokio::test]
async fn two_hundred_concurrent_calls_on_a_cold_cache_cause_exactly_one_gettoken() {
    let app = spawn_app().await;
    // Slow gettoken down so that every call arrives while the first fetch is in flight.
    app.fault(
        Endpoint::GetToken,
        Fault {
            delay_ms: 300,
            ..Fault::default()
        },
    );

    let results = concurrent_config_calls(&app, 200).await;

    assert!(results.iter().all(Result::is_ok), "{results:?}");
    assert_eq!(app.sandbox.gettoken_calls(), 1);
    assert_eq!(app.calls_to(Endpoint::GetUpgradeConfig), 200);
}

#[tokio::test]
async fn an_expired_token_is_refreshed_once_and_the_calls_succeed() {
    let app = spawn_app().await;
    concurrent_config_calls(&app, 1).await;
    // WeCom expires the token while the gateway still holds it: calls get 42001.
    app.sandbox.expire_tokens();
    stagger_answers(&app, Endpoint::GetUpgradeConfig, 100);

    let results = concurrent_config_calls(&app, 100).await;

    assert!(results.iter().all(Result::is_ok), "{results:?}");
    assert_eq!(
        app.sandbox.gettoken_calls(),
        2,
        "one refresh for a hundred failures"
    );
}

#[tokio::test]
async fn a_scripted_40014_succeeds_after_exactly_one_refresh_and_one_retry() {
    let mut app = spawn_app().await;
    app.fault(
        Endpoint::UpgradeService,
        Fault {
            errcode: Some(40014),
            errmsg: Some("invalid access_token".into()),
            ..Fault::default()
        },
    );

    app.client
        .upgrade_service(member_upgrade("zhangsan", ""))
        .await
        .unwrap();

    assert_eq!(
        app.sandbox.gettoken_calls(),
        2,
        "the first token, then one refresh"
    );
    assert_eq!(
        app.calls_to(Endpoint::UpgradeService),
        2,
        "the call, then one retry"
    );
}

#[tokio::test]
async fn concurrent_40014_failures_cause_a_single_refresh() {
    let app = spawn_app().await;
    concurrent_config_calls(&app, 1).await;
    // WeCom forgets the token (a secret reset, say): every call in flight gets 40014.
    app.sandbox.revoke_tokens();
    stagger_answers(&app, Endpoint::GetUpgradeConfig, 100);

    let results = concurrent_config_calls(&app, 100).await;

    assert!(results.iter().all(Result::is_ok), "{results:?}");
    assert_eq!(app.sandbox.gettoken_calls(), 2);
    assert!(
        app.calls_to(Endpoint::GetUpgradeConfig) <= 1 + 100 * 2,
        "at most one retry each"
    );
}

#[tokio::test]
async fn a_token_refused_twice_is_not_retried_again() {
    let mut app = spawn_app().await;
    app.fault(
        Endpoint::CancelUpgrade,
        Fault {
            errcode: Some(42001),
            times: 5,
            ..Fault::default()
        },
    );

    let status = app.client.cancel_upgrade(cancel()).await.unwrap_err();

    assert_status(&status, Code::Unavailable, "ACCESS_TOKEN_REJECTED");
    assert_eq!(
        app.calls_to(Endpoint::CancelUpgrade),
        2,
        "the call and exactly one retry"
    );
}

#[tokio::test]
async fn rejected_credentials_are_held_instead_of_calling_gettoken_again() {
    let app = spawn_app_with(|settings| {
        settings.apps.get_mut("default").unwrap().secret = "not-the-secret".to_owned().into();
    })
    .await;

    let results = concurrent_config_calls(&app, 50).await;
    let more = concurrent_config_calls(&app, 50).await;

    for result in results.iter().chain(&more) {
        let status = result.as_ref().unwrap_err();
        let metadata = assert_status(status, Code::FailedPrecondition, "CREDENTIALS_REJECTED");
        assert_eq!(metadata["errcode"], "40001");
    }
    assert_eq!(
        app.sandbox.gettoken_calls(),
        1,
        "a hundred callers, one gettoken"
    );
}

#[tokio::test]
async fn apps_have_separate_token_caches() {
    let mut app = spawn_app_with(|settings| {
        let default = settings.apps["default"].clone();
        settings.apps.insert("second".to_owned(), default);
    })
    .await;

    app.client
        .cancel_upgrade(for_app(cancel(), "default"))
        .await
        .unwrap();
    app.client
        .cancel_upgrade(for_app(cancel(), "second"))
        .await
        .unwrap();
    app.client
        .cancel_upgrade(for_app(cancel(), "second"))
        .await
        .unwrap();

    // Same corp and secret, but each app fetches its own token, once.
    assert_eq!(app.sandbox.gettoken_calls(), 2);
}

#[tokio::test]
async fn a_busy_gettoken_is_retried_once_inside_the_single_flight() {
    let app = spawn_app().await;
    app.fault(
        Endpoint::GetToken,
        Fault {
            errcode: Some(-1),
            ..Fault::default()
        },
    );

    let results = concurrent_config_calls(&app, 20).await;

    assert!(results.iter().all(Result::is_ok), "{results:?}");
    assert_eq!(
        app.sandbox.gettoken_calls(),
        2,
        "the busy answer and one retry"
    );
}

#[tokio::test]
async fn callers_whose_deadlines_pass_during_gettoken_cause_no_extra_gettoken() {
    let app = spawn_app().await;
    app.fault(
        Endpoint::GetToken,
        Fault {
            delay_ms: 400,
            ..Fault::default()
        },
    );

    let impatient: Vec<_> = (0..50)
        .map(|_| {
            let mut client = app.client.clone();
            tokio::spawn(async move {
                let mut request = tonic::Request::new(pb::GetUpgradeConfigRequest {});
                request.set_timeout(std::time::Duration::from_millis(100));
                client.get_upgrade_config(request).await
            })
        })
        .collect();
    for call in impatient {
        let status = call.await.unwrap().unwrap_err();
        // The gateway's DEADLINE_EXCEEDED, or, on a loaded machine, tonic's client
        // giving up by itself at the deadline (CANCELLED "Timeout expired").
        assert!(
            matches!(status.code(), Code::DeadlineExceeded | Code::Cancelled),
            "{status:?}"
        );
        // Waiting for a token sends nothing: the gateway says so.
        if let Some(info) = tonic_types::StatusExt::get_details_error_info(&status) {
            assert!(
                !info.metadata.contains_key("may_have_taken_effect"),
                "{info:?}"
            );
        }
    }
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    let later = concurrent_config_calls(&app, 10).await;

    assert!(later.iter().all(Result::is_ok), "{later:?}");
    assert_eq!(
        app.sandbox.gettoken_calls(),
        1,
        "the one fetch finished and served everyone"
    );
}
