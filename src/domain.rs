//! Validated requests: what the gateway will send WeCom, once the edge has checked it.
//!
//! Each identifier is a newtype that can only be built by `parse`, so the adapter never
//! sees an empty, over-long or control-character-laden value. WeCom publishes no limits
//! for these fields; the limits here are generous bounds on what WeCom issues (ids are
//! ASCII of a few dozen bytes, a userid is at most 64 bytes) that still stop abuse.

use std::fmt;

/// Longest `open_kfid`, `external_userid` or `chat_id` accepted, in bytes.
pub const MAX_ID_BYTES: usize = 128;
/// Longest `userid` accepted, in bytes (WeCom's 通讯录 allows 1-64).
pub const MAX_USERID_BYTES: usize = 64;
/// Longest `wording` accepted, in characters.
pub const MAX_WORDING_CHARS: usize = 1024;

/// Why a field was refused: the field's path in the request and what is wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldViolation {
    /// Path of the field in the request, e.g. `member.userid`.
    pub field: String,
    /// What is wrong with it, in words a caller can act on.
    pub description: String,
}

/// Parses an identifier: non-empty, at most `max` bytes, no whitespace or control characters.
fn parse_id(field: &str, value: String, max: usize) -> Result<String, FieldViolation> {
    let violation = |description: String| FieldViolation {
        field: field.to_owned(),
        description,
    };
    if value.is_empty() {
        return Err(violation("is required".to_owned()));
    }
    if value.len() > max {
        return Err(violation(format!(
            "is {} bytes long; at most {max} are allowed",
            value.len()
        )));
    }
    if let Some(c) = value.chars().find(|c| c.is_whitespace() || c.is_control()) {
        return Err(violation(format!(
            "contains {c:?}; identifiers have no whitespace or control characters"
        )));
    }
    Ok(value)
}

macro_rules! identifier {
    ($(#[$doc:meta])* $name:ident, $max:expr) => {
        $(#[$doc])*
        #[derive(Clone, PartialEq, Eq, Hash)]
        pub struct $name(String);

        impl $name {
            /// Validates `value` as the request field `field`.
            pub fn parse(field: &str, value: String) -> Result<Self, FieldViolation> {
                parse_id(field, value, $max).map(Self)
            }

            /// The identifier as WeCom knows it.
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                fmt::Debug::fmt(&self.0, f)
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }
    };
}

identifier!(
    /// 客服账号ID: a customer-service account.
    OpenKfId,
    MAX_ID_BYTES
);
identifier!(
    /// 微信客户的external_userid: a WeChat customer.
    ExternalUserId,
    MAX_ID_BYTES
);
identifier!(
    /// 服务专员的userid: a member of the corp.
    UserId,
    MAX_USERID_BYTES
);
identifier!(
    /// 客户群id: a customer group chat.
    ChatId,
    MAX_ID_BYTES
);

/// 推荐语: the recommendation shown to the customer. Never empty: an empty wording
/// from the caller means "none", which is not sent at all.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Wording(String);

impl Wording {
    /// `Ok(None)` for an empty wording; otherwise at most [`MAX_WORDING_CHARS`]
    /// characters, with no control characters other than line breaks and tabs.
    pub fn parse(field: &str, value: String) -> Result<Option<Self>, FieldViolation> {
        let violation = |description: String| FieldViolation {
            field: field.to_owned(),
            description,
        };
        if value.is_empty() {
            return Ok(None);
        }
        let chars = value.chars().count();
        if chars > MAX_WORDING_CHARS {
            return Err(violation(format!(
                "is {chars} characters long; at most {MAX_WORDING_CHARS} are allowed"
            )));
        }
        if let Some(c) = value
            .chars()
            .find(|c| c.is_control() && !matches!(c, '\n' | '\r' | '\t'))
        {
            return Err(violation(format!("contains the control character {c:?}")));
        }
        Ok(Some(Self(value)))
    }

    /// The text as sent to WeCom.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// Whom the customer is recommended to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UpgradeTarget {
    /// 专员服务 (WeCom `type: 1`).
    Member {
        /// The service member.
        userid: UserId,
        /// Optional recommendation.
        wording: Option<Wording>,
    },
    /// 客户群服务 (WeCom `type: 2`).
    GroupChat {
        /// The group chat.
        chat_id: ChatId,
        /// Optional recommendation.
        wording: Option<Wording>,
    },
}

impl fmt::Display for UpgradeTarget {
    /// `member USERID` or `groupchat CHAT_ID`, for logs; the wording is left out.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            UpgradeTarget::Member { userid, .. } => write!(f, "member {userid}"),
            UpgradeTarget::GroupChat { chat_id, .. } => write!(f, "groupchat {chat_id}"),
        }
    }
}

/// A customer, as seen by one customer-service account.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Customer {
    /// The customer-service account.
    pub open_kfid: OpenKfId,
    /// The customer.
    pub external_userid: ExternalUserId,
}

/// 为客户升级为专员或客户群服务.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Upgrade {
    /// Who is upgraded.
    pub customer: Customer,
    /// To whom.
    pub target: UpgradeTarget,
}

/// The 升级服务 configuration WeCom returned.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UpgradeConfig {
    /// 专员userid列表.
    pub member_userids: Vec<String>,
    /// 专员部门列表.
    pub member_department_ids: Vec<u32>,
    /// 客户群列表.
    pub group_chat_ids: Vec<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identifiers_must_be_present() {
        let err = OpenKfId::parse("open_kfid", String::new()).unwrap_err();
        assert_eq!(err.field, "open_kfid");
        assert_eq!(err.description, "is required");
    }

    #[test]
    fn identifiers_have_a_byte_limit() {
        assert!(UserId::parse("userid", "a".repeat(MAX_USERID_BYTES)).is_ok());
        let err = UserId::parse("userid", "a".repeat(MAX_USERID_BYTES + 1)).unwrap_err();
        assert!(
            err.description.contains("at most 64"),
            "{}",
            err.description
        );
        assert!(ChatId::parse("chat_id", "w".repeat(MAX_ID_BYTES)).is_ok());
        assert!(ChatId::parse("chat_id", "w".repeat(MAX_ID_BYTES + 1)).is_err());
    }

    #[test]
    fn identifiers_refuse_whitespace_and_control_characters() {
        for bad in ["wm 1", "wm\n1", "wm\u{0}1", "\u{3000}wm"] {
            assert!(
                ExternalUserId::parse("external_userid", bad.to_owned()).is_err(),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn an_empty_wording_means_none() {
        assert_eq!(Wording::parse("member.wording", String::new()), Ok(None));
    }

    #[test]
    fn wording_keeps_line_breaks_and_counts_characters_not_bytes() {
        let chinese = "你".repeat(MAX_WORDING_CHARS);
        assert!(Wording::parse("w", chinese).unwrap().is_some());
        assert!(Wording::parse("w", "你".repeat(MAX_WORDING_CHARS + 1)).is_err());
        assert!(Wording::parse("w", "line\nbreak\ttab".to_owned()).is_ok());
        assert!(Wording::parse("w", "bell\u{7}".to_owned()).is_err());
    }
}
