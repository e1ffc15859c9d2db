//! proto → domain (validation) and domain → proto.

use super::pb;
use crate::domain::{
    ChatId, Customer, ExternalUserId, FieldViolation, OpenKfId, Upgrade, UpgradeConfig,
    UpgradeTarget, UserId, Wording,
};

/// Collects every violation of a request, not just the first, so a caller fixes
/// them all in one round.
#[derive(Default)]
struct Violations(Vec<FieldViolation>);

impl Violations {
    fn check<T>(&mut self, parsed: Result<T, FieldViolation>) -> Option<T> {
        parsed.map_err(|v| self.0.push(v)).ok()
    }

    fn finish<T>(self, value: Option<T>) -> Result<T, Vec<FieldViolation>> {
        match value {
            Some(value) if self.0.is_empty() => Ok(value),
            _ => Err(self.0),
        }
    }
}

fn customer(v: &mut Violations, open_kfid: String, external_userid: String) -> Option<Customer> {
    let open_kfid = v.check(OpenKfId::parse("open_kfid", open_kfid));
    let external_userid = v.check(ExternalUserId::parse("external_userid", external_userid));
    Some(Customer {
        open_kfid: open_kfid?,
        external_userid: external_userid?,
    })
}

impl TryFrom<pb::UpgradeServiceRequest> for Upgrade {
    type Error = Vec<FieldViolation>;

    fn try_from(request: pb::UpgradeServiceRequest) -> Result<Self, Self::Error> {
        use pb::upgrade_service_request::Target;

        let mut v = Violations::default();
        let customer = customer(&mut v, request.open_kfid, request.external_userid);
        let target = match request.target {
            None => {
                v.0.push(FieldViolation {
                    field: "target".to_owned(),
                    description: "is required: set either member or groupchat".to_owned(),
                });
                None
            }
            Some(Target::Member(member)) => {
                let userid = v.check(UserId::parse("member.userid", member.userid));
                let wording = v.check(Wording::parse("member.wording", member.wording));
                userid
                    .zip(wording)
                    .map(|(userid, wording)| UpgradeTarget::Member { userid, wording })
            }
            Some(Target::Groupchat(chat)) => {
                let chat_id = v.check(ChatId::parse("groupchat.chat_id", chat.chat_id));
                let wording = v.check(Wording::parse("groupchat.wording", chat.wording));
                chat_id
                    .zip(wording)
                    .map(|(chat_id, wording)| UpgradeTarget::GroupChat { chat_id, wording })
            }
        };
        let upgrade = customer
            .zip(target)
            .map(|(customer, target)| Upgrade { customer, target });
        v.finish(upgrade)
    }
}

impl TryFrom<pb::CancelUpgradeRequest> for Customer {
    type Error = Vec<FieldViolation>;

    fn try_from(request: pb::CancelUpgradeRequest) -> Result<Self, Self::Error> {
        let mut v = Violations::default();
        let customer = customer(&mut v, request.open_kfid, request.external_userid);
        v.finish(customer)
    }
}

impl From<UpgradeConfig> for pb::GetUpgradeConfigResponse {
    fn from(config: UpgradeConfig) -> Self {
        pb::GetUpgradeConfigResponse {
            member_range: Some(pb::MemberRange {
                userid_list: config.member_userids,
                department_id_list: config.member_department_ids,
            }),
            groupchat_range: Some(pb::GroupChatRange {
                chat_id_list: config.group_chat_ids,
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use pb::upgrade_service_request::Target;
    use proptest::prelude::*;

    fn member(userid: &str, wording: &str) -> Option<Target> {
        Some(Target::Member(pb::MemberTarget {
            userid: userid.into(),
            wording: wording.into(),
        }))
    }

    fn request(
        open_kfid: &str,
        external_userid: &str,
        target: Option<Target>,
    ) -> pb::UpgradeServiceRequest {
        pb::UpgradeServiceRequest {
            open_kfid: open_kfid.into(),
            external_userid: external_userid.into(),
            target,
        }
    }

    fn fields(result: Result<Upgrade, Vec<FieldViolation>>) -> Vec<String> {
        result.unwrap_err().into_iter().map(|v| v.field).collect()
    }

    #[test]
    fn a_valid_member_request_converts() {
        let upgrade = Upgrade::try_from(request("kf1", "wm1", member("zhangsan", ""))).unwrap();
        assert_eq!(upgrade.customer.open_kfid.as_str(), "kf1");
        assert!(matches!(
            upgrade.target,
            UpgradeTarget::Member { wording: None, .. }
        ));
    }

    #[test]
    fn every_bad_field_is_reported_at_once() {
        let result = Upgrade::try_from(request("", "wm 1", member("", "\u{1b}[31m")));
        assert_eq!(
            fields(result),
            [
                "open_kfid",
                "external_userid",
                "member.userid",
                "member.wording"
            ]
        );
    }

    #[test]
    fn a_missing_target_is_reported() {
        assert_eq!(
            fields(Upgrade::try_from(request("kf1", "wm1", None))),
            ["target"]
        );
    }

    #[test]
    fn group_chat_fields_are_named_by_their_path() {
        let target = Some(Target::Groupchat(pb::GroupChatTarget {
            chat_id: "x".repeat(200),
            wording: String::new(),
        }));
        assert_eq!(
            fields(Upgrade::try_from(request("kf1", "wm1", target))),
            ["groupchat.chat_id"]
        );
    }

    #[test]
    fn cancel_requires_both_ids() {
        let result = Customer::try_from(pb::CancelUpgradeRequest::default());
        let fields: Vec<_> = result.unwrap_err().into_iter().map(|v| v.field).collect();
        assert_eq!(fields, ["open_kfid", "external_userid"]);
    }

    fn arb_target() -> impl Strategy<Value = Option<Target>> {
        prop_oneof![
            Just(None),
            (any::<String>(), any::<String>()).prop_map(|(userid, wording)| Some(Target::Member(
                pb::MemberTarget { userid, wording }
            ))),
            (any::<String>(), any::<String>()).prop_map(|(chat_id, wording)| Some(
                Target::Groupchat(pb::GroupChatTarget { chat_id, wording })
            )),
        ]
    }

    proptest! {
        #[test]
        fn conversion_accepts_exactly_the_requests_whose_fields_all_parse(
            open_kfid in ".{0,140}", external_userid in "[a-z \\n]{0,10}", target in arb_target()
        ) {
            let ok_fields = OpenKfId::parse("", open_kfid.clone()).is_ok()
                && ExternalUserId::parse("", external_userid.clone()).is_ok()
                && match &target {
                    None => false,
                    Some(Target::Member(m)) => UserId::parse("", m.userid.clone()).is_ok()
                        && Wording::parse("", m.wording.clone()).is_ok(),
                    Some(Target::Groupchat(g)) => ChatId::parse("", g.chat_id.clone()).is_ok()
                        && Wording::parse("", g.wording.clone()).is_ok(),
                };
            let result = Upgrade::try_from(pb::UpgradeServiceRequest { open_kfid, external_userid, target });
            prop_assert_eq!(result.is_ok(), ok_fields);
            if let Err(violations) = result {
                prop_assert!(!violations.is_empty());
            }
        }
    }
}
