//! Caller authentication: who may call, and which apps each caller may use, for
//! every RPC, over gRPC and HTTP/JSON; health and reflection stay open unless
//! closed; the callers file is reloaded when it changes.

use std::{path::Path, time::Duration};

use secrecy::ExposeSecret;
use tonic::{Code, Request, Status, transport::Channel};
use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};
use tonic_reflection::pb::v1::{
    ServerReflectionRequest, server_reflection_client::ServerReflectionClient,
    server_reflection_request::MessageRequest, server_reflection_response::MessageResponse,
};
use wecom_kf_upgrade::{
    auth::new_caller,
    config::Settings,
    grpc::pb,
    sandbox::{DEMO_CORP_ID, DEMO_SECRET},
    wecom::Endpoint,
};

use crate::helpers::*;

/// A configuration with two apps on the sandbox, `default` and `crm`, the callers
/// file, and `extra` lines for `[auth]`.
pub fn two_apps(callers_file: &Path, extra_auth: &str) -> String {
    let app = |name: &str| {
        format!(
            "[[apps]]\nname = \"{name}\"\ncorp_id = \"{DEMO_CORP_ID}\"\nsecret = \"{DEMO_SECRET}\"\n"
        )
    };
    format!(
        "{}{}[auth]\ncallers_file = \"{}\"\n{extra_auth}",
        app("default"),
        app("crm"),
        callers_file.display()
    )
}

/// A gateway whose callers are `shop` (app `default`) and `crm` (app `crm`).
pub struct Guarded {
    pub app: TestApp,
    pub shop: String,
    pub crm: String,
    pub dir: TempDir,
}

pub async fn spawn_guarded(extra_auth: &str, adjust: impl FnOnce(&mut Settings)) -> Guarded {
    let shop = new_caller("shop", &["default".into()]).unwrap();
    let crm = new_caller("crm", &["crm".into()]).unwrap();
    let dir = TempDir::new("callers");
    let file = dir.write("callers.toml", format!("{}{}", shop.entry, crm.entry));
    let config = two_apps(&file, extra_auth);
    let app = spawn_app_configured(
        |base| settings_from(&config, &[("WECOM_API_BASE", base)]),
        adjust,
    )
    .await;
    Guarded {
        app,
        shop: shop.token.expose_secret().to_owned(),
        crm: crm.token.expose_secret().to_owned(),
        dir,
    }
}

/// `message` with `authorization: Bearer token` and `x-wecom-app: app`, each if given.
pub fn request<T>(message: T, token: Option<&str>, app: Option<&str>) -> Request<T> {
    let mut request = Request::new(message);
    if let Some(token) = token {
        let value = format!("Bearer {token}").parse().unwrap();
        request.metadata_mut().insert("authorization", value);
    }
    if let Some(app) = app {
        request
            .metadata_mut()
            .insert("x-wecom-app", app.parse().unwrap());
    }
    request
}

/// Calls the RPC named `rpc` (a valid request) with these credentials and app.
async fn call(
    client: &mut Client,
    rpc: &str,
    token: Option<&str>,
    app: Option<&str>,
) -> Result<(), Status> {
    match rpc {
        "GetUpgradeConfig" => client
            .get_upgrade_config(request(pb::GetUpgradeConfigRequest {}, token, app))
            .await
            .map(drop),
        "UpgradeService" => client
            .upgrade_service(request(member_upgrade("zhangsan", ""), token, app))
            .await
            .map(drop),
        "CancelUpgrade" => client
            .cancel_upgrade(request(cancel(), token, app))
            .await
            .map(drop),
        other => panic!("no RPC {other}"),
    }
}

#[tokio::test]
async fn every_rpc_lets_known_callers_use_their_apps_only() {
    let mut guarded = spawn_guarded("", |_| {}).await;
    let (shop, crm) = (guarded.shop.clone(), guarded.crm.clone());
    let wrong = format!("wku_{}", "0".repeat(64));
    let (denied, unauthenticated) = (Code::PermissionDenied, Code::Unauthenticated);
    // (case, token, x-wecom-app, code, ErrorInfo reason)
    let matrix = [
        (
            "no token",
            None,
            None,
            unauthenticated,
            "MISSING_CREDENTIALS",
        ),
        (
            "a wrong token",
            Some(wrong.as_str()),
            Some("default"),
            unauthenticated,
            "UNKNOWN_TOKEN",
        ),
        (
            "an allowed app",
            Some(shop.as_str()),
            Some("default"),
            Code::Ok,
            "",
        ),
        (
            "a disallowed app",
            Some(shop.as_str()),
            Some("crm"),
            denied,
            "APP_NOT_ALLOWED",
        ),
        (
            "the default app, allowed",
            Some(shop.as_str()),
            None,
            Code::Ok,
            "",
        ),
        (
            "the default app, not allowed",
            Some(crm.as_str()),
            None,
            denied,
            "APP_NOT_ALLOWED",
        ),
        (
            "the other caller's app",
            Some(crm.as_str()),
            Some("crm"),
            Code::Ok,
            "",
        ),
    ];
    let mut succeeded = 0;
    for rpc in ["GetUpgradeConfig", "UpgradeService", "CancelUpgrade"] {
        for (case, token, app, code, reason) in matrix {
            match call(&mut guarded.app.client, rpc, token, app).await {
                Ok(()) => {
                    assert_eq!(code, Code::Ok, "{rpc} with {case} succeeded");
                    succeeded += 1;
                }
                Err(status) => {
                    assert_status(&status, code, reason);
                    let shown = format!("{status:?}");
                    assert!(
                        !shown.contains(&shop) && !shown.contains(&wrong),
                        "{rpc} with {case}: no token in {shown}"
                    );
                }
            }
        }
    }
    assert_eq!(succeeded, 3 * 3);
    // Refused calls never reached WeCom.
    let business = [
        Endpoint::GetUpgradeConfig,
        Endpoint::UpgradeService,
        Endpoint::CancelUpgrade,
    ];
    let reached: usize = business.iter().map(|e| guarded.app.calls_to(*e)).sum();
    assert_eq!(reached, succeeded);
}

// In a gateway shared by tenants, an app a caller may not use is no business of it.
#[tokio::test]
async fn refusals_name_only_the_apps_the_caller_may_use() {
    let mut guarded = spawn_guarded("", |_| {}).await;
    let shop = Some(guarded.shop.as_str());

    let unknown = call(
        &mut guarded.app.client,
        "GetUpgradeConfig",
        shop,
        Some("nope"),
    )
    .await
    .unwrap_err();
    // A name nobody configured and another tenant's app get the same answer: a
    // caller cannot probe which apps exist.
    let info = assert_status(&unknown, Code::PermissionDenied, "APP_NOT_ALLOWED");
    assert_eq!(info["allowed_apps"], "default");
    assert!(!unknown.message().contains("crm"), "{unknown:?}");

    let denied = call(&mut guarded.app.client, "UpgradeService", shop, Some("crm"))
        .await
        .unwrap_err();
    let info = assert_status(&denied, Code::PermissionDenied, "APP_NOT_ALLOWED");
    assert_eq!(
        (info["caller"].as_str(), info["allowed_apps"].as_str()),
        ("shop", "default")
    );
}

#[tokio::test]
async fn health_and_reflection_answer_without_a_token() {
    let guarded = spawn_guarded("", |_| {}).await;
    let channel = Channel::from_shared(format!("http://{}", guarded.app.grpc_addr))
        .unwrap()
        .connect()
        .await
        .unwrap();

    let health = HealthClient::new(channel.clone())
        .check(HealthCheckRequest::default())
        .await;
    assert!(health.is_ok(), "{health:?}");
    let services = list_services(channel, None).await.unwrap();
    assert!(
        services.contains(&"wecom.kf.v1.CustomerUpgradeService".to_owned()),
        "{services:?}"
    );
}

#[tokio::test]
async fn health_and_reflection_can_require_a_token() {
    let closed = "open_health = false\nopen_reflection = false\n";
    let guarded = spawn_guarded(closed, |_| {}).await;
    let channel = Channel::from_shared(format!("http://{}", guarded.app.grpc_addr))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut health = HealthClient::new(channel.clone());

    let refused = health
        .check(HealthCheckRequest::default())
        .await
        .unwrap_err();
    assert_status(&refused, Code::Unauthenticated, "MISSING_CREDENTIALS");
    let refused = list_services(channel.clone(), None).await.unwrap_err();
    assert_status(&refused, Code::Unauthenticated, "MISSING_CREDENTIALS");

    let with_token = request(HealthCheckRequest::default(), Some(&guarded.crm), None);
    assert!(health.check(with_token).await.is_ok());
    assert!(list_services(channel, Some(&guarded.crm)).await.is_ok());
}

/// The services server reflection (v1) lists.
async fn list_services(channel: Channel, token: Option<&str>) -> Result<Vec<String>, Status> {
    let ask = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let stream = tokio_stream::iter([ask]);
    let mut responses = ServerReflectionClient::new(channel)
        .server_reflection_info(request(stream, token, None))
        .await?
        .into_inner();
    let response = responses.message().await?.expect("one response");
    match response.message_response {
        Some(MessageResponse::ListServicesResponse(list)) => {
            Ok(list.service.into_iter().map(|s| s.name).collect())
        }
        other => panic!("unexpected reflection response {other:?}"),
    }
}

#[tokio::test]
async fn http_json_callers_are_checked_like_grpc_callers() {
    let guarded = spawn_guarded("", |_| {}).await;
    let http = reqwest::Client::new();
    let url = format!("http://{}/v1/cancel-upgrade-service", guarded.app.grpc_addr);
    let body = serde_json::json!({"openKfid": OPEN_KFID, "externalUserid": EXTERNAL_USERID});
    let post = |token: Option<&str>, app: &str| {
        let mut post = http
            .post(&url)
            .header("content-type", "application/json")
            .header("x-wecom-app", app)
            .body(body.to_string());
        if let Some(token) = token {
            post = post.header("authorization", format!("Bearer {token}"));
        }
        post.send()
    };

    let anonymous = post(None, "default").await.unwrap();
    assert_eq!(anonymous.status(), 401);
    assert_eq!(anonymous.headers()["www-authenticate"], "Bearer");
    let status: serde_json::Value =
        serde_json::from_slice(&anonymous.bytes().await.unwrap()).unwrap();
    assert_eq!(status["code"], Code::Unauthenticated as i32);
    assert_eq!(status["details"][0]["reason"], "MISSING_CREDENTIALS");

    let forbidden = post(Some(&guarded.shop), "crm").await.unwrap();
    assert_eq!(forbidden.status(), 403);
    let allowed = post(Some(&guarded.shop), "default").await.unwrap();
    assert_eq!(allowed.status(), 200);
    assert_eq!(guarded.app.calls_to(Endpoint::CancelUpgrade), 1);
}

// Tokens are added and revoked by editing the file; a broken edit changes nothing.
#[tokio::test]
async fn a_changed_callers_file_takes_effect_without_a_restart() {
    let mut guarded = spawn_guarded("", |s| {
        s.auth.as_mut().unwrap().reload_interval = Duration::from_millis(50);
    })
    .await;
    let newcomer = new_caller("newcomer", &["*".into()]).unwrap();
    let token = newcomer.token.expose_secret().to_owned();
    let client = &mut guarded.app.client;
    assert!(
        call(client, "GetUpgradeConfig", Some(&token), None)
            .await
            .is_err()
    );

    // The shop caller is revoked, the newcomer added.
    guarded.dir.write("callers.toml", &newcomer.entry);
    let mut accepted = false;
    for _ in 0..100 {
        if call(client, "GetUpgradeConfig", Some(&token), Some("crm"))
            .await
            .is_ok()
        {
            accepted = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(accepted, "the new token works within 2 s");
    let revoked = call(client, "GetUpgradeConfig", Some(&guarded.shop), None)
        .await
        .unwrap_err();
    assert_status(&revoked, Code::Unauthenticated, "UNKNOWN_TOKEN");

    // A file that does not parse, then one naming an app that is not configured:
    // the last good callers stay.
    guarded.dir.write("callers.toml", "[[callers]\nname = ");
    tokio::time::sleep(Duration::from_millis(200)).await;
    let unknown_app = newcomer.entry.replace("\"*\"", "\"unknown-app\"");
    guarded.dir.write("callers.toml", unknown_app);
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(
        call(client, "GetUpgradeConfig", Some(&token), None)
            .await
            .is_ok()
    );
}
