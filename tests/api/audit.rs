//! Every upgrade and cancel leaves an audit event, whatever its outcome.

use secrecy::ExposeSecret;
use wecom_kf_upgrade::{auth::new_caller, grpc::pb};

use crate::{
    auth::{request, spawn_guarded},
    helpers::*,
};

// A current-thread runtime runs the server's tasks on this thread, so the
// thread's default subscriber sees the gateway's events.
#[tokio::test(flavor = "current_thread")]
async fn upgrades_and_cancels_are_audited_with_their_outcome() {
    let captured = Captured::default();
    let _guard = captured.install("audit=info");
    let mut app = spawn_app().await;

    app.client
        .upgrade_service(member_upgrade("zhangsan", ""))
        .await
        .unwrap();
    app.client
        .upgrade_service(member_upgrade("wangwu", ""))
        .await
        .unwrap_err();
    app.client.cancel_upgrade(cancel()).await.unwrap();

    let events = captured.audit_events();
    let summary: Vec<_> = events
        .iter()
        .map(|e| {
            (
                e["action"].as_str().unwrap_or(""),
                e["outcome"].as_str().unwrap_or(""),
            )
        })
        .collect();
    assert_eq!(
        summary,
        [
            ("upgrade", "Ok"),
            ("upgrade", "FailedPrecondition"),
            ("cancel", "Ok")
        ]
    );
    let first = &events[0];
    assert_eq!(first["app"], "default");
    assert_eq!(first["open_kfid"], OPEN_KFID);
    assert_eq!(first["external_userid"], EXTERNAL_USERID);
    assert_eq!(first["recommended"], "member zhangsan");
    assert!(
        first["peer"]
            .as_str()
            .unwrap_or("")
            .starts_with("127.0.0.1:"),
        "{first}"
    );
    assert!(
        events[2].get("recommended").is_none(),
        "a cancel recommends nobody"
    );
}

// A failure is logged once, at the level its fault calls for, with its cause chain;
// a caller's mistake is not the operator's concern. For a cancel, that one line is
// its audit line, carrying the access line's fields.
#[tokio::test(flavor = "current_thread")]
async fn a_failed_call_is_logged_once_with_its_cause_chain_and_fault() {
    let captured = Captured::default();
    let _guard = captured.install("wecom_kf_upgrade=info,audit=info");
    let (_closed, closed) = refusing_addr();
    let mut app = spawn_app_with(|s| {
        s.apps.get_mut("default").unwrap().api_base = format!("http://{closed}").parse().unwrap();
        s.upstream.max_retries = 0;
    })
    .await;
    app.client.cancel_upgrade(cancel()).await.unwrap_err();
    let mut request = for_app(cancel(), "default");
    request
        .metadata_mut()
        .append("x-wecom-app", "x".parse().unwrap());
    app.client.cancel_upgrade(request).await.unwrap_err();

    let failures: Vec<_> = captured
        .events()
        .into_iter()
        .filter(|e| e.get("code").is_some())
        .collect();
    assert_eq!(failures.len(), 2, "one line per call: {failures:#?}");
    let (unreachable, refused) = (&failures[0], &failures[1]);
    assert_eq!(unreachable["target"], "audit");
    assert_eq!(unreachable["level"], "WARN");
    assert_eq!(unreachable["code"], "UNAVAILABLE");
    assert_eq!(unreachable["reason"], "UPSTREAM_UNREACHABLE");
    assert_eq!(unreachable["fault"], "wecom");
    let chain = unreachable["error"].as_str().unwrap_or_default();
    assert!(
        chain.starts_with("could not reach WeCom /cgi-bin/gettoken: ") && chain.len() > 60,
        "the transport cause is kept: {chain}"
    );
    assert!(
        !chain.contains("corpsecret") && !chain.contains("http://"),
        "{chain}"
    );
    assert_eq!(refused["level"], "INFO");
    assert_eq!(refused["reason"], "INVALID_METADATA");
    assert_eq!(refused["fault"], "caller");
    assert_eq!(refused["method"], "CancelUpgrade");
}

// HTTP/JSON goes through the same handlers: the same audit event, peer included.
#[tokio::test(flavor = "current_thread")]
async fn an_upgrade_over_http_is_audited_like_one_over_grpc() {
    let captured = Captured::default();
    let _guard = captured.install("audit=info");
    let app = spawn_app().await;

    let body = serde_json::json!({"openKfid": OPEN_KFID, "externalUserid": EXTERNAL_USERID,
                                  "groupchat": {"chatId": "wraaaaaaaaaaaaaaaa"}});
    let response = reqwest::Client::new()
        .post(format!("http://{}/v1/upgrade-service", app.grpc_addr))
        .header("content-type", "application/json")
        .header("x-wecom-app", "default")
        .body(body.to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);

    let events = captured.audit_events();
    assert_eq!(events.len(), 1, "{events:#?}");
    let event = &events[0];
    assert_eq!(
        (&event["action"], &event["outcome"], &event["app"]),
        (&"upgrade".into(), &"Ok".into(), &"default".into())
    );
    assert_eq!(event["recommended"], "groupchat wraaaaaaaaaaaaaaaa");
    let peer = event["peer"].as_str().unwrap_or("");
    assert!(peer.starts_with("127.0.0.1:"), "{event}");
}

// An upgrade refused before WeCom, for its app, is audited too: whoever reads the
// audit log sees every attempt to move a customer.
#[tokio::test(flavor = "current_thread")]
async fn an_upgrade_for_an_unknown_app_is_audited_with_the_app_it_named() {
    let captured = Captured::default();
    let _guard = captured.install("audit=info");
    let mut app = spawn_app().await;

    let status = app
        .client
        .upgrade_service(for_app(member_upgrade("zhangsan", ""), "nope"))
        .await
        .unwrap_err();
    assert_status(&status, tonic::Code::InvalidArgument, "UNKNOWN_APP");

    let events = captured.audit_events();
    assert_eq!(events.len(), 1, "{events:#?}");
    assert_eq!(
        (&events[0]["app"], &events[0]["outcome"]),
        (&"nope".into(), &"InvalidArgument".into())
    );
    assert!(app.sandbox.requests().is_empty());
}

// With caller authentication, the audit says who asked, how it proved it, and why
// a call failed; a forbidden app is audited too.
#[tokio::test(flavor = "current_thread")]
async fn the_audit_names_the_caller_and_the_outcomes_reason_and_errcode() {
    let captured = Captured::default();
    let _guard = captured.install("audit=info");
    let mut guarded = spawn_guarded("", |_| {}).await;
    let shop = Some(guarded.shop.as_str());
    let client = &mut guarded.app.client;

    client
        .upgrade_service(request(member_upgrade("zhangsan", ""), shop, None))
        .await
        .unwrap();
    client
        .upgrade_service(request(member_upgrade("wangwu", ""), shop, None))
        .await
        .unwrap_err();
    client
        .cancel_upgrade(request(cancel(), shop, Some("crm")))
        .await
        .unwrap_err();
    // Unauthenticated calls are refused before anything happens: no audit event.
    client.cancel_upgrade(cancel()).await.unwrap_err();

    let events = captured.audit_events();
    let summary: Vec<_> = events
        .iter()
        .map(|e| {
            let field = |key: &str| e[key].as_str().unwrap_or("-").to_owned();
            let errcode = e["errcode"]
                .as_i64()
                .map_or("-".to_owned(), |c| c.to_string());
            [
                field("action"),
                field("caller"),
                field("auth"),
                field("app"),
                field("outcome"),
                field("reason"),
                errcode,
            ]
        })
        .collect();
    assert_eq!(
        summary,
        [
            ["upgrade", "shop", "token", "default", "Ok", "-", "-"],
            [
                "upgrade",
                "shop",
                "token",
                "default",
                "FailedPrecondition",
                "UPGRADE_TARGET_NOT_CONFIGURED",
                "95021"
            ],
            [
                "cancel",
                "shop",
                "token",
                "crm",
                "PermissionDenied",
                "APP_NOT_ALLOWED",
                "-"
            ],
        ]
    );
    for event in &events {
        assert_eq!(event["open_kfid"], OPEN_KFID, "{event}");
        assert_eq!(event["external_userid"], EXTERNAL_USERID, "{event}");
    }
    assert_eq!(events[1]["recommended"], "member wangwu");
}

// Caller tokens, the corp secret and WeCom's access token stay out of every log
// line (trace included), every status a caller gets, and `check-config`.
#[tokio::test(flavor = "current_thread")]
async fn no_output_holds_a_caller_token_the_corp_secret_or_an_access_token() {
    let captured = Captured::default();
    let _guard = captured.install("trace");
    let fake = FakeUpstream::start(vec![Scripted::Json(
        r#"{"errcode":95021,"errmsg":"not configured"}"#,
    )])
    .await;
    let caller = new_caller("shop", &["*".into()]).unwrap();
    let token = caller.token.expose_secret().to_owned();
    let dir = TempDir::new("leaks");
    let callers_file = dir.write("callers.toml", &caller.entry);
    let corp_secret = "CORP-SECRET-must-not-leak";
    let config = format!(
        "[[apps]]\nname = \"shop\"\ncorp_id = \"wwfake\"\nsecret = \"{corp_secret}\"\n\
         [auth]\ncallers_file = \"{}\"\n",
        callers_file.display()
    );
    let settings = settings_from(&config, &[("WECOM_API_BASE", &fake.base_url())]);
    let printed = settings.to_toml();
    let (mut client, _, _, _stop, _) = start(settings).await;

    let mut statuses = Vec::new();
    let bearer = Some(token.as_str());
    let results = [
        client
            .upgrade_service(request(member_upgrade("zhangsan", ""), bearer, None))
            .await
            .map(drop),
        client
            .get_upgrade_config(request(
                pb::GetUpgradeConfigRequest {},
                bearer,
                Some("nope"),
            ))
            .await
            .map(drop),
        client
            .cancel_upgrade(request(cancel(), bearer, None))
            .await
            .map(drop),
        // A near miss: the token with one character changed.
        client
            .cancel_upgrade(request(cancel(), Some(&token.replace('a', "b")), None))
            .await
            .map(drop),
    ];
    for result in results {
        if let Err(status) = result {
            statuses.push(format!("{status:?}"));
        }
    }
    assert_eq!(statuses.len(), 3, "{statuses:#?}");

    let logs = captured.text();
    assert!(logs.contains("upgrade"), "the capture works: {logs}");
    let token_digest = caller
        .entry
        .split('"')
        .nth(5)
        .unwrap_or_default()
        .to_owned();
    assert_eq!(token_digest.len(), 64);
    for (output, text) in [
        ("logs", &logs),
        ("statuses", &statuses.join("\n")),
        ("check-config", &printed),
    ] {
        for secret in [token.as_str(), corp_secret, "FAKE-TOKEN-123", &token_digest] {
            assert!(!text.contains(secret), "{output} hold {secret}: {text}");
        }
    }
    assert!(
        printed.contains("#   shop: every app (with a bearer token)"),
        "{printed}"
    );
}
