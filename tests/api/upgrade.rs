//! The three RPCs, and exactly what WeCom receives for each.

use serde_json::json;
use tonic::Code;
use wecom_kf_upgrade::{
    config::{AppSettings, SecretOrigin},
    grpc::pb,
    sandbox::DEMO_CORP_ID,
    wecom::Endpoint,
};

use crate::helpers::*;

#[tokio::test]
async fn get_upgrade_config_returns_what_wecom_has_configured() {
    let mut app = spawn_app().await;

    let config = app.get_config().await.unwrap();

    let members = config.member_range.unwrap();
    assert_eq!(members.userid_list, ["zhangsan", "lisi"]);
    assert_eq!(members.department_id_list, [2, 3]);
    assert_eq!(
        config.groupchat_range.unwrap().chat_id_list,
        ["wraaaaaaaaaaaaaaaa", "wrbbbbbbbbbbbbbbb"]
    );
    let sent = app.sandbox.requests_to(Endpoint::GetUpgradeConfig.path());
    assert_eq!(sent.len(), 1);
    assert_eq!(sent[0].method, "GET");
    assert!(sent[0].had_access_token);
}

#[tokio::test]
async fn a_member_upgrade_sends_type_1_with_the_member_and_sets_the_recommendation() {
    let mut app = spawn_app().await;

    app.client
        .upgrade_service(member_upgrade(
            "zhangsan",
            "你好，我是你的专属服务专员zhangsan",
        ))
        .await
        .unwrap();

    let expected = json!({
        "open_kfid": OPEN_KFID,
        "external_userid": EXTERNAL_USERID,
        "type": 1,
        "member": { "userid": "zhangsan", "wording": "你好，我是你的专属服务专员zhangsan" }
    });
    let sent = app.sandbox.requests_to(Endpoint::UpgradeService.path());
    assert_eq!(sent.len(), 1);
    assert_eq!(sent[0].method, "POST");
    assert_eq!(sent[0].body, expected);
    assert_eq!(
        app.sandbox.recommendation(OPEN_KFID, EXTERNAL_USERID),
        Some(expected)
    );
}

#[tokio::test]
async fn a_groupchat_upgrade_sends_type_2_and_omits_an_empty_wording() {
    let mut app = spawn_app().await;

    app.client
        .upgrade_service(groupchat_upgrade("wraaaaaaaaaaaaaaaa", ""))
        .await
        .unwrap();

    let sent = app.sandbox.requests_to(Endpoint::UpgradeService.path());
    assert_eq!(
        sent[0].body,
        json!({
            "open_kfid": OPEN_KFID,
            "external_userid": EXTERNAL_USERID,
            "type": 2,
            "groupchat": { "chat_id": "wraaaaaaaaaaaaaaaa" }
        })
    );
}

#[tokio::test]
async fn cancel_sends_the_customer_and_clears_the_recommendation() {
    let mut app = spawn_app().await;
    app.client
        .upgrade_service(member_upgrade("lisi", ""))
        .await
        .unwrap();
    assert!(
        app.sandbox
            .recommendation(OPEN_KFID, EXTERNAL_USERID)
            .is_some()
    );

    app.client.cancel_upgrade(cancel()).await.unwrap();

    let sent = app.sandbox.requests_to(Endpoint::CancelUpgrade.path());
    assert_eq!(
        sent[0].body,
        json!({ "open_kfid": OPEN_KFID, "external_userid": EXTERNAL_USERID })
    );
    assert_eq!(app.sandbox.recommendation(OPEN_KFID, EXTERNAL_USERID), None);
}

#[tokio::test]
async fn the_exact_bytes_wecom_receives_match_its_document() {
    // Arrange: a raw TCP fake, so nothing between the gateway and the bytes can hide a difference.
    let fake = FakeUpstream::start(vec![]).await;
    let (mut client, _stop) = spawn_app_against(&fake).await;

    // Act
    client
        .upgrade_service(member_upgrade("zhangsan", "hi"))
        .await
        .unwrap();
    client
        .upgrade_service(groupchat_upgrade("wrbbbbbbbbbbbbbbb", ""))
        .await
        .unwrap();
    client.cancel_upgrade(cancel()).await.unwrap();
    client
        .get_upgrade_config(pb::GetUpgradeConfigRequest {})
        .await
        .unwrap();

    // Assert
    let gettoken = fake.requests_to("/cgi-bin/gettoken");
    assert_eq!(gettoken.len(), 1, "one token for all four calls");
    assert_eq!(
        gettoken[0].request_line,
        "GET /cgi-bin/gettoken?corpid=wwfake&corpsecret=fake-secret HTTP/1.1"
    );
    let upgrades = fake.requests_to("/cgi-bin/kf/customer/upgrade_service");
    assert_eq!(
        upgrades[0].request_line,
        "POST /cgi-bin/kf/customer/upgrade_service?access_token=FAKE-TOKEN-123 HTTP/1.1"
    );
    assert_eq!(
        String::from_utf8_lossy(&upgrades[0].body),
        r#"{"open_kfid":"kfxxxxxxxxxxxxxx","external_userid":"wmxxxxxxxxxxxxxxxxxx","type":1,"member":{"userid":"zhangsan","wording":"hi"}}"#
    );
    assert_eq!(
        String::from_utf8_lossy(&upgrades[1].body),
        r#"{"open_kfid":"kfxxxxxxxxxxxxxx","external_userid":"wmxxxxxxxxxxxxxxxxxx","type":2,"groupchat":{"chat_id":"wrbbbbbbbbbbbbbbb"}}"#
    );
    let cancels = fake.requests_to("/cgi-bin/kf/customer/cancel_upgrade_service");
    assert_eq!(
        String::from_utf8_lossy(&cancels[0].body),
        r#"{"open_kfid":"kfxxxxxxxxxxxxxx","external_userid":"wmxxxxxxxxxxxxxxxxxx"}"#
    );
    let configs = fake.requests_to("/cgi-bin/kf/customer/get_upgrade_service_config");
    assert_eq!(
        configs[0].request_line,
        "GET /cgi-bin/kf/customer/get_upgrade_service_config?access_token=FAKE-TOKEN-123 HTTP/1.1"
    );
    assert!(configs[0].body.is_empty());
}

#[tokio::test]
async fn the_field_tables_department_list_reaches_the_caller() {
    let fake = FakeUpstream::start(vec![Scripted::Json(
        r#"{"errcode":0,"errmsg":"ok","member_range":{"userid_list":["u"],"department_list":[9]}}"#,
    )])
    .await;
    let (mut client, _stop) = spawn_app_against(&fake).await;

    let config = client
        .get_upgrade_config(pb::GetUpgradeConfigRequest {})
        .await
        .unwrap()
        .into_inner();

    assert_eq!(config.member_range.unwrap().department_id_list, [9]);
    assert_eq!(
        config.groupchat_range.unwrap().chat_id_list,
        Vec::<String>::new()
    );
}

#[tokio::test]
async fn x_wecom_app_picks_the_configured_app() {
    // Arrange: a second app whose secret WeCom refuses, beside the working default.
    let mut app = spawn_app_with(|settings| {
        let base = settings.apps["default"].api_base.clone();
        settings.apps.insert(
            "other".to_owned(),
            AppSettings {
                corp_id: DEMO_CORP_ID.to_owned(),
                secret: "wrong-secret".to_owned().into(),
                secret_origin: SecretOrigin::Inline,
                api_base: base,
            },
        );
    })
    .await;

    // Act
    let default = app
        .client
        .cancel_upgrade(for_app(cancel(), "default"))
        .await;
    let other = app.client.cancel_upgrade(for_app(cancel(), "other")).await;
    let unnamed = app.client.cancel_upgrade(cancel()).await;

    // Assert
    assert!(default.is_ok());
    assert!(unnamed.is_ok(), "no metadata: the default app");
    let metadata = assert_status(
        &other.unwrap_err(),
        Code::FailedPrecondition,
        "CREDENTIALS_REJECTED",
    );
    assert_eq!(metadata["errcode"], "40001");
}
