//! WeCom's JSON, both ways, and the one decoder every answer goes through.

use serde::{Deserialize, Serialize, de::DeserializeOwned};
use serde_json::Value;

use super::{Endpoint, Error, transport::Reply};
use crate::domain::{Customer, Upgrade, UpgradeConfig, UpgradeTarget};

/// Reads a WeCom reply: HTTP 200 (anything else is [`Error::HttpStatus`]), then
/// WeCom's envelope (see [`decode_body`]).
pub(super) fn decode<T: DeserializeOwned>(endpoint: Endpoint, reply: Reply) -> Result<T, Error> {
    if reply.status != 200 {
        return Err(Error::HttpStatus {
            endpoint,
            status: reply.status,
        });
    }
    decode_body(endpoint, &reply.body)
}

/// Decodes WeCom's envelope: `errcode` must be present and an integer; a non-zero
/// errcode becomes [`Error::Api`]; with errcode 0 the body must match `T`.
///
/// Never panics, whatever the bytes: a property test feeds it arbitrary input.
fn decode_body<T: DeserializeOwned>(endpoint: Endpoint, body: &[u8]) -> Result<T, Error> {
    let malformed = |problem: String| Error::MalformedBody { endpoint, problem };
    let value: Value = serde_json::from_slice(body).map_err(|e| {
        // The start of an HTML error page tells an operator what answered; a
        // `gettoken` body might hold a token, so it is never quoted.
        if endpoint.fetches_token() {
            return malformed(format!("not JSON ({e})"));
        }
        let start = String::from_utf8_lossy(&body[..body.len().min(16)]).into_owned();
        malformed(format!("not JSON ({e}); it starts with {start:?}"))
    })?;
    let errcode = match value.get("errcode") {
        None if endpoint.errcode_only_on_failure() => 0,
        None => return Err(malformed("no errcode field".to_owned())),
        Some(code) => code
            .as_i64()
            .ok_or_else(|| malformed(format!("errcode is not an integer: {code}")))?,
    };
    if errcode != 0 {
        let errmsg = value.get("errmsg").and_then(Value::as_str);
        let errmsg = bounded_errmsg(errmsg.unwrap_or_default());
        return Err(Error::Api {
            endpoint,
            errcode,
            errmsg,
        });
    }
    T::deserialize(value).map_err(|e| malformed(e.to_string()))
}

/// The longest errmsg kept, in bytes. WeCom's own run to about 200 (a hint, the
/// caller's IP and a link to its errcode tool); an unbounded one would travel into
/// the status message, the ErrorInfo trailer (grpc clients refuse trailers past a
/// few KiB, and the errcode with them) and every log line.
pub(crate) const MAX_ERRMSG_BYTES: usize = 512;

/// `errmsg` cut to [`MAX_ERRMSG_BYTES`] on a character boundary, marked `…` when cut.
fn bounded_errmsg(errmsg: &str) -> String {
    if errmsg.len() <= MAX_ERRMSG_BYTES {
        return errmsg.to_owned();
    }
    let mut end = MAX_ERRMSG_BYTES;
    while !errmsg.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &errmsg[..end])
}

/// Serializes a request body. These borrowed-string structs cannot fail to
/// serialize: serde_json fails only on maps with non-string keys and on custom
/// `Serialize` impls that fail, and they have neither.
pub(crate) fn encode(body: &impl Serialize) -> Vec<u8> {
    serde_json::to_vec(body).expect("request bodies have only string keys and derived Serialize")
}

/// `gettoken`'s answer. No `Debug`: it holds the token in the clear.
#[derive(Deserialize)]
pub(crate) struct TokenAnswer {
    pub(crate) access_token: String,
    pub(crate) expires_in: u64,
}

/// An answer with nothing but errcode and errmsg.
#[derive(Debug, Deserialize)]
pub(crate) struct EmptyAnswer {}

/// `get_upgrade_service_config`'s answer. Every part is optional: a corp that
/// configured no group chats may get no `groupchat_range` at all.
#[derive(Debug, Default, Deserialize)]
pub(crate) struct UpgradeConfigAnswer {
    #[serde(default)]
    member_range: Option<MemberRange>,
    #[serde(default)]
    groupchat_range: Option<GroupChatRange>,
}

#[derive(Debug, Default, Deserialize)]
struct MemberRange {
    #[serde(default)]
    userid_list: Option<Vec<String>>,
    /// The name in WeCom's sample.
    #[serde(default)]
    department_id_list: Option<Vec<u32>>,
    /// The name in WeCom's field table.
    #[serde(default)]
    department_list: Option<Vec<u32>>,
}

#[derive(Debug, Default, Deserialize)]
struct GroupChatRange {
    #[serde(default)]
    chat_id_list: Option<Vec<String>>,
}

impl From<UpgradeConfigAnswer> for UpgradeConfig {
    fn from(answer: UpgradeConfigAnswer) -> Self {
        let members = answer.member_range.unwrap_or_default();
        let mut departments = members.department_id_list.unwrap_or_default();
        // Both names at once would be odd, but losing either list would be worse.
        if let Some(more) = members.department_list {
            let mut seen: std::collections::HashSet<u32> = departments.iter().copied().collect();
            departments.extend(more.into_iter().filter(|id| seen.insert(*id)));
        }
        UpgradeConfig {
            member_userids: members.userid_list.unwrap_or_default(),
            member_department_ids: departments,
            group_chat_ids: answer
                .groupchat_range
                .unwrap_or_default()
                .chat_id_list
                .unwrap_or_default(),
        }
    }
}

/// The body of `upgrade_service`: `type` follows from which target is present.
#[derive(Debug, Serialize)]
pub(crate) struct UpgradeBody<'a> {
    open_kfid: &'a str,
    external_userid: &'a str,
    #[serde(rename = "type")]
    kind: u8,
    #[serde(skip_serializing_if = "Option::is_none")]
    member: Option<MemberBody<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    groupchat: Option<GroupChatBody<'a>>,
}

#[derive(Debug, Serialize)]
struct MemberBody<'a> {
    userid: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    wording: Option<&'a str>,
}

#[derive(Debug, Serialize)]
struct GroupChatBody<'a> {
    chat_id: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    wording: Option<&'a str>,
}

/// WeCom's `type` for 专员服务.
const TYPE_MEMBER: u8 = 1;
/// WeCom's `type` for 客户群服务.
const TYPE_GROUP_CHAT: u8 = 2;

impl<'a> From<&'a Upgrade> for UpgradeBody<'a> {
    fn from(upgrade: &'a Upgrade) -> Self {
        let (kind, member, groupchat) = match &upgrade.target {
            UpgradeTarget::Member { userid, wording } => (
                TYPE_MEMBER,
                Some(MemberBody {
                    userid: userid.as_str(),
                    wording: wording.as_ref().map(|w| w.as_str()),
                }),
                None,
            ),
            UpgradeTarget::GroupChat { chat_id, wording } => (
                TYPE_GROUP_CHAT,
                None,
                Some(GroupChatBody {
                    chat_id: chat_id.as_str(),
                    wording: wording.as_ref().map(|w| w.as_str()),
                }),
            ),
        };
        UpgradeBody {
            open_kfid: upgrade.customer.open_kfid.as_str(),
            external_userid: upgrade.customer.external_userid.as_str(),
            kind,
            member,
            groupchat,
        }
    }
}

/// The body of `cancel_upgrade_service`.
#[derive(Debug, Serialize)]
pub(crate) struct CancelBody<'a> {
    open_kfid: &'a str,
    external_userid: &'a str,
}

impl<'a> From<&'a Customer> for CancelBody<'a> {
    fn from(customer: &'a Customer) -> Self {
        CancelBody {
            open_kfid: customer.open_kfid.as_str(),
            external_userid: customer.external_userid.as_str(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{ChatId, ExternalUserId, OpenKfId, UserId, Wording};
    use proptest::prelude::*;
    use serde_json::json;

    const E: Endpoint = Endpoint::GetUpgradeConfig;

    fn config(body: &str) -> Result<UpgradeConfig, Error> {
        decode_body::<UpgradeConfigAnswer>(E, body.as_bytes()).map(UpgradeConfig::from)
    }

    fn problem(result: Result<UpgradeConfig, Error>) -> String {
        match result {
            Err(Error::MalformedBody { problem, .. }) => problem,
            other => panic!("expected MalformedBody, got {other:?}"),
        }
    }

    #[test]
    fn a_huge_errmsg_is_cut_and_the_errcode_kept() {
        let errmsg = "系".repeat(400_000);
        let body = json!({"errcode": 95021, "errmsg": errmsg}).to_string();
        match decode_body::<EmptyAnswer>(Endpoint::UpgradeService, body.as_bytes()) {
            Err(Error::Api {
                errcode, errmsg, ..
            }) => {
                assert_eq!(errcode, 95021);
                assert!(
                    errmsg.len() <= MAX_ERRMSG_BYTES + "…".len(),
                    "{}",
                    errmsg.len()
                );
                assert!(errmsg.ends_with('…') && errmsg.starts_with("系系"));
            }
            other => panic!("expected Api, got {other:?}"),
        }
        assert_eq!(bounded_errmsg("short"), "short");
    }

    #[test]
    fn the_seed_sample_decodes() {
        let body = r#"{"errcode":0,"errmsg":"ok","member_range":{"userid_list":["zhangsan","lisi"],
            "department_id_list":[2,3]},"groupchat_range":{"chat_id_list":["wraaaaaaaaaaaaaaaa","wrbbbbbbbbbbbbbbb"]}}"#;
        let cfg = config(body).unwrap();
        assert_eq!(cfg.member_userids, ["zhangsan", "lisi"]);
        assert_eq!(cfg.member_department_ids, [2, 3]);
        assert_eq!(
            cfg.group_chat_ids,
            ["wraaaaaaaaaaaaaaaa", "wrbbbbbbbbbbbbbbb"]
        );
    }

    #[test]
    fn the_field_tables_department_list_is_read_too() {
        let cfg = config(r#"{"errcode":0,"member_range":{"department_list":[7]}}"#).unwrap();
        assert_eq!(cfg.member_department_ids, [7]);
        let both =
            r#"{"errcode":0,"member_range":{"department_id_list":[1,2],"department_list":[2,3]}}"#;
        assert_eq!(config(both).unwrap().member_department_ids, [1, 2, 3]);
    }

    #[test]
    fn missing_and_null_ranges_are_empty() {
        assert_eq!(
            config(r#"{"errcode":0}"#).unwrap(),
            UpgradeConfig::default()
        );
        let nulls = r#"{"errcode":0,"member_range":null,"groupchat_range":{"chat_id_list":null}}"#;
        assert_eq!(config(nulls).unwrap(), UpgradeConfig::default());
    }

    #[test]
    fn a_nonzero_errcode_keeps_code_and_message() {
        match config(r#"{"errcode":95021,"errmsg":"not configured"}"#) {
            Err(Error::Api {
                errcode, errmsg, ..
            }) => {
                assert_eq!(errcode, 95021);
                assert_eq!(errmsg, "not configured");
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn bad_bodies_say_what_is_wrong() {
        assert!(problem(config("<html>502 Bad Gateway</html>")).contains("not JSON"));
        assert!(problem(config(r#"{"errcode":0,"member_ra"#)).contains("not JSON"));
        assert!(problem(config(r#"{"errmsg":"ok"}"#)).contains("no errcode"));
        assert!(problem(config(r#"{"errcode":"0"}"#)).contains("not an integer"));
        let wrong_type = r#"{"errcode":0,"member_range":{"department_id_list":["2"]}}"#;
        assert!(problem(config(wrong_type)).contains("invalid type"));
        let negative = r#"{"errcode":0,"member_range":{"department_id_list":[-1]}}"#;
        problem(config(negative));
    }

    fn customer() -> Customer {
        Customer {
            open_kfid: OpenKfId::parse("open_kfid", "kf1".into()).unwrap(),
            external_userid: ExternalUserId::parse("external_userid", "wm1".into()).unwrap(),
        }
    }

    #[test]
    fn member_upgrade_body_is_type_1_with_member() {
        let upgrade = Upgrade {
            customer: customer(),
            target: UpgradeTarget::Member {
                userid: UserId::parse("userid", "zhangsan".into()).unwrap(),
                wording: Wording::parse("wording", "你好".into()).unwrap(),
            },
        };
        assert_eq!(
            serde_json::to_value(UpgradeBody::from(&upgrade)).unwrap(),
            json!({"open_kfid":"kf1","external_userid":"wm1","type":1,
                   "member":{"userid":"zhangsan","wording":"你好"}})
        );
    }

    #[test]
    fn group_chat_upgrade_body_is_type_2_and_omits_an_empty_wording() {
        let upgrade = Upgrade {
            customer: customer(),
            target: UpgradeTarget::GroupChat {
                chat_id: ChatId::parse("chat_id", "wr1".into()).unwrap(),
                wording: None,
            },
        };
        assert_eq!(
            serde_json::to_value(UpgradeBody::from(&upgrade)).unwrap(),
            json!({"open_kfid":"kf1","external_userid":"wm1","type":2,"groupchat":{"chat_id":"wr1"}})
        );
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic_the_decoder(body in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = config(&String::from_utf8_lossy(&body));
            let _ = decode_body::<UpgradeConfigAnswer>(E, &body);
            let _ = decode_body::<TokenAnswer>(Endpoint::GetToken, &body);
        }

        #[test]
        fn arbitrary_json_never_panics_the_decoder(value in arb_json()) {
            let body = serde_json::to_vec(&value).unwrap();
            let _ = decode_body::<UpgradeConfigAnswer>(E, &body).map(UpgradeConfig::from);
            let _ = decode_body::<TokenAnswer>(Endpoint::GetToken, &body);
            let _ = decode_body::<EmptyAnswer>(Endpoint::CancelUpgrade, &body);
        }
    }

    /// JSON shaped like WeCom's answers, with every field free to take any type.
    fn arb_json() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::from),
            any::<i64>().prop_map(Value::from),
            any::<f64>()
                .prop_map(|f| serde_json::Number::from_f64(f).map_or(Value::Null, Value::Number)),
            "[a-z0-9]{0,8}".prop_map(Value::from),
        ];
        let tree = leaf.prop_recursive(4, 32, 4, |inner| {
            prop_oneof![
                proptest::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
                proptest::collection::btree_map(
                    prop_oneof![
                        Just("errcode".to_owned()),
                        Just("errmsg".to_owned()),
                        Just("member_range".to_owned()),
                        Just("userid_list".to_owned()),
                        Just("department_id_list".to_owned()),
                        Just("department_list".to_owned()),
                        Just("groupchat_range".to_owned()),
                        Just("chat_id_list".to_owned()),
                        Just("access_token".to_owned()),
                        Just("expires_in".to_owned()),
                    ],
                    inner,
                    0..6,
                )
                .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        });
        (
            prop_oneof![Just(Value::from(0)), any::<i64>().prop_map(Value::from)],
            tree,
        )
            .prop_map(|(code, tree)| match tree {
                Value::Object(mut m) => {
                    m.entry("errcode").or_insert(code);
                    Value::Object(m)
                }
                other => other,
            })
    }
}
