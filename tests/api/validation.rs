//! Bad requests are refused at the edge with every bad field named, and never reach WeCom.

use proptest::prelude::*;
use tonic::Code;
use tonic_types::StatusExt;
use wecom_kf_upgrade::grpc::pb::{self, upgrade_service_request::Target};

use crate::helpers::*;

/// The fields named by the BadRequest details of `status`.
fn violated_fields(status: &tonic::Status) -> Vec<String> {
    assert_status(status, Code::InvalidArgument, "INVALID_REQUEST");
    let bad = status
        .get_details_bad_request()
        .expect("BadRequest details");
    bad.field_violations.into_iter().map(|v| v.field).collect()
}

#[tokio::test]
async fn an_empty_upgrade_names_all_three_missing_fields() {
    let mut app = spawn_app().await;
    let status = app
        .client
        .upgrade_service(pb::UpgradeServiceRequest::default())
        .await
        .unwrap_err();
    assert_eq!(
        violated_fields(&status),
        ["open_kfid", "external_userid", "target"]
    );
    assert!(
        app.sandbox.requests().is_empty(),
        "nothing reached WeCom, not even gettoken"
    );
}

#[tokio::test]
async fn each_member_field_is_checked() {
    let mut app = spawn_app().await;
    let cases = [
        (member_upgrade("", ""), "member.userid"),
        (member_upgrade(&"u".repeat(65), ""), "member.userid"),
        (member_upgrade("zhang san", ""), "member.userid"),
        (
            member_upgrade("zhangsan", &"字".repeat(1025)),
            "member.wording",
        ),
        (member_upgrade("zhangsan", "beep\u{7}"), "member.wording"),
    ];
    for (request, field) in cases {
        let status = app.client.upgrade_service(request).await.unwrap_err();
        assert_eq!(violated_fields(&status), [field]);
    }
    assert!(app.sandbox.requests().is_empty());
}

#[tokio::test]
async fn each_groupchat_field_is_checked() {
    let mut app = spawn_app().await;
    let cases = [
        (groupchat_upgrade("", ""), "groupchat.chat_id"),
        (groupchat_upgrade(&"w".repeat(129), ""), "groupchat.chat_id"),
        (groupchat_upgrade("wr\naa", ""), "groupchat.chat_id"),
        (groupchat_upgrade("wraaaa", "\u{0}"), "groupchat.wording"),
    ];
    for (request, field) in cases {
        let status = app.client.upgrade_service(request).await.unwrap_err();
        assert_eq!(violated_fields(&status), [field]);
    }
    assert!(app.sandbox.requests().is_empty());
}

#[tokio::test]
async fn customer_fields_are_checked_on_cancel_too() {
    let mut app = spawn_app().await;
    let request = pb::CancelUpgradeRequest {
        open_kfid: "k".repeat(129),
        external_userid: "wm\t1".into(),
    };
    let status = app.client.cancel_upgrade(request).await.unwrap_err();
    assert_eq!(violated_fields(&status), ["open_kfid", "external_userid"]);
    assert!(app.sandbox.requests().is_empty());
}

#[tokio::test]
async fn the_longest_valid_values_are_accepted() {
    let mut app = spawn_app_with(|_| {}).await;
    // 95021 from the sandbox proves the request passed validation and reached WeCom.
    let status = app
        .client
        .upgrade_service(member_upgrade(&"u".repeat(64), &"字".repeat(1024)))
        .await
        .unwrap_err();
    assert_status(
        &status,
        Code::FailedPrecondition,
        "UPGRADE_TARGET_NOT_CONFIGURED",
    );
}

#[tokio::test]
async fn an_oversized_message_is_refused_before_decoding() {
    let mut app = spawn_app().await;
    let status = app
        .client
        .upgrade_service(member_upgrade("zhangsan", &"x".repeat(100 * 1024)))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::OutOfRange, "{status:?}");
    assert!(app.sandbox.requests().is_empty());
}

#[tokio::test]
async fn non_ascii_app_metadata_is_invalid_argument() {
    let mut app = spawn_app().await;
    let mut request = tonic::Request::new(cancel());
    request.metadata_mut().insert(
        "x-wecom-app",
        tonic::metadata::MetadataValue::try_from("caf\u{e9}".as_bytes()).unwrap(),
    );
    let status = app.client.cancel_upgrade(request).await.unwrap_err();
    assert_status(&status, Code::InvalidArgument, "INVALID_METADATA");
}

#[tokio::test]
async fn an_app_named_twice_is_invalid_metadata_and_reaches_no_wecom() {
    let mut app = spawn_app().await;
    let mut request = for_app(cancel(), "default");
    request
        .metadata_mut()
        .append("x-wecom-app", "other".parse().unwrap());
    let status = app.client.cancel_upgrade(request).await.unwrap_err();
    let metadata = assert_status(&status, Code::InvalidArgument, "INVALID_METADATA");
    assert_eq!(metadata["key"], "x-wecom-app");
    assert!(status.message().contains("more than once"), "{status:?}");
    assert!(app.sandbox.requests().is_empty());
}

fn arb_target() -> impl Strategy<Value = Option<Target>> {
    let text = || prop_oneof![".{0,80}", "[a-z]{1,10}", Just(String::new())];
    prop_oneof![
        Just(None),
        (text(), text()).prop_map(|(userid, wording)| Some(Target::Member(pb::MemberTarget {
            userid,
            wording
        }))),
        (text(), text()).prop_map(|(chat_id, wording)| Some(Target::Groupchat(
            pb::GroupChatTarget { chat_id, wording }
        ))),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    /// Arbitrary requests through the real server: the server answers every one
    /// (it never panics or hangs), and an invalid one never reaches WeCom.
    #[test]
    fn arbitrary_requests_never_panic_and_invalid_ones_never_reach_wecom(
        open_kfid in prop_oneof![".{0,140}", Just(OPEN_KFID.to_owned())],
        external_userid in prop_oneof![".{0,20}", Just(EXTERNAL_USERID.to_owned())],
        target in arb_target(),
    ) {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        runtime.block_on(async {
            let mut app = spawn_app().await;
            let request = pb::UpgradeServiceRequest { open_kfid, external_userid, target };
            let result = app.client.upgrade_service(request).await;
            let reached_wecom = !app.sandbox.requests().is_empty();
            match result {
                Err(status) if status.code() == Code::InvalidArgument => {
                    prop_assert!(!reached_wecom, "an invalid request reached WeCom");
                    prop_assert!(status.get_details_bad_request().is_some());
                }
                // Valid requests reach the sandbox, which accepts or refuses them.
                Ok(_) => prop_assert!(reached_wecom),
                Err(status) => {
                    prop_assert!(reached_wecom);
                    prop_assert_eq!(status.code(), Code::FailedPrecondition, "{:?}", status);
                }
            }
            Ok(())
        })?;
    }
}
