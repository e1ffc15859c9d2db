//! The messages of the HTTP/JSON calls, and the `google.rpc.Status` of their
//! errors, in the proto3 JSON mapping.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use tonic::Status;
use tonic_types::ErrorDetails;

use crate::grpc::{
    error::{CallError, Failure},
    pb,
};

/// A status as `google.rpc.Status` in the proto3 JSON mapping, its fields in the
/// proto's order, as grpc-gateway writes them.
#[derive(Serialize)]
pub(super) struct StatusJson<'a> {
    code: i32,
    message: &'a str,
    details: Vec<DetailJson<'a>>,
}

/// One `google.protobuf.Any` of the details: `@type` first, then the message's fields.
#[derive(Serialize)]
#[serde(untagged)]
enum DetailJson<'a> {
    ErrorInfo {
        #[serde(rename = "@type")]
        type_url: &'static str,
        reason: &'a str,
        domain: &'a str,
        metadata: BTreeMap<&'a str, &'a str>,
    },
    RetryInfo {
        #[serde(rename = "@type")]
        type_url: &'static str,
        #[serde(rename = "retryDelay")]
        retry_delay: String,
    },
    BadRequest {
        #[serde(rename = "@type")]
        type_url: &'static str,
        #[serde(rename = "fieldViolations")]
        field_violations: Vec<ViolationJson<'a>>,
    },
}

#[derive(Serialize)]
struct ViolationJson<'a> {
    field: &'a str,
    description: &'a str,
}

impl<'a> StatusJson<'a> {
    pub(super) fn new(status: &'a Status, details: &'a ErrorDetails) -> Self {
        let mut any = Vec::new();
        if let Some(info) = details.error_info() {
            any.push(DetailJson::ErrorInfo {
                type_url: "type.googleapis.com/google.rpc.ErrorInfo",
                reason: &info.reason,
                domain: &info.domain,
                metadata: info
                    .metadata
                    .iter()
                    .map(|(k, v)| (k.as_str(), v.as_str()))
                    .collect(),
            });
        }
        if let Some(delay) = details.retry_info().and_then(|r| r.retry_delay) {
            any.push(DetailJson::RetryInfo {
                type_url: "type.googleapis.com/google.rpc.RetryInfo",
                // A Duration in JSON: seconds, with a fraction when there is one.
                retry_delay: format!("{}s", delay.as_secs_f64()),
            });
        }
        if let Some(bad) = details.bad_request() {
            let field_violations = bad
                .field_violations
                .iter()
                .map(|v| ViolationJson {
                    field: &v.field,
                    description: &v.description,
                })
                .collect();
            any.push(DetailJson::BadRequest {
                type_url: "type.googleapis.com/google.rpc.BadRequest",
                field_violations,
            });
        }
        StatusJson {
            code: status.code() as i32,
            message: status.message(),
            details: any,
        }
    }
}

/// `UpgradeServiceRequest`: exactly one of `member` and `groupchat`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct UpgradeJson {
    #[serde(default, rename = "openKfid", alias = "open_kfid")]
    open_kfid: String,
    #[serde(default, rename = "externalUserid", alias = "external_userid")]
    external_userid: String,
    #[serde(default)]
    member: Option<MemberJson>,
    #[serde(default)]
    groupchat: Option<GroupChatJson>,
}

/// `CancelUpgradeRequest`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct CustomerJson {
    #[serde(default, rename = "openKfid", alias = "open_kfid")]
    open_kfid: String,
    #[serde(default, rename = "externalUserid", alias = "external_userid")]
    external_userid: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct MemberJson {
    #[serde(default)]
    userid: String,
    #[serde(default)]
    wording: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct GroupChatJson {
    #[serde(default, rename = "chatId", alias = "chat_id")]
    chat_id: String,
    #[serde(default)]
    wording: String,
}

impl TryFrom<UpgradeJson> for pb::UpgradeServiceRequest {
    type Error = Failure;

    fn try_from(json: UpgradeJson) -> Result<Self, Failure> {
        use pb::upgrade_service_request::Target;

        let target = match (json.member, json.groupchat) {
            (Some(_), Some(_)) => {
                let problem = "member and groupchat are one oneof: set only one".to_owned();
                return Err(CallError::MalformedRequest(problem).into());
            }
            (Some(m), None) => Some(Target::Member(pb::MemberTarget {
                userid: m.userid,
                wording: m.wording,
            })),
            (None, Some(g)) => Some(Target::Groupchat(pb::GroupChatTarget {
                chat_id: g.chat_id,
                wording: g.wording,
            })),
            (None, None) => None,
        };
        Ok(pb::UpgradeServiceRequest {
            open_kfid: json.open_kfid,
            external_userid: json.external_userid,
            target,
        })
    }
}

impl From<CustomerJson> for pb::CancelUpgradeRequest {
    fn from(json: CustomerJson) -> Self {
        pb::CancelUpgradeRequest {
            open_kfid: json.open_kfid,
            external_userid: json.external_userid,
        }
    }
}

/// `GetUpgradeConfigResponse`, every list present.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct ConfigJson {
    member_range: MemberRangeJson,
    groupchat_range: GroupChatRangeJson,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct MemberRangeJson {
    userid_list: Vec<String>,
    department_id_list: Vec<u32>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct GroupChatRangeJson {
    chat_id_list: Vec<String>,
}

impl From<pb::GetUpgradeConfigResponse> for ConfigJson {
    fn from(response: pb::GetUpgradeConfigResponse) -> Self {
        let members = response.member_range.unwrap_or_default();
        let chats = response.groupchat_range.unwrap_or_default();
        ConfigJson {
            member_range: MemberRangeJson {
                userid_list: members.userid_list,
                department_id_list: members.department_id_list,
            },
            groupchat_range: GroupChatRangeJson {
                chat_id_list: chats.chat_id_list,
            },
        }
    }
}
