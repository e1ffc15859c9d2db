//! The XML of a suite's callbacks: the envelope WeCom posts, and the events
//! inside it (`suite_ticket`, `create_auth`, `change_auth`, `cancel_auth`,
//! `reset_permanent_code`).

use std::collections::BTreeMap;

use quick_xml::{Reader, events::Event as Xml};

/// The XML is not the flat `<xml>…</xml>` WeCom sends.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("malformed callback XML: {0}")]
pub struct XmlError(String);

/// Most fields read from one document; WeCom's have fewer than ten.
const MAX_FIELDS: usize = 64;

/// The text of each child element of the root, by name: `<xml><A>1</A><B><![CDATA[2]]></B></xml>`
/// gives `{A: "1", B: "2"}`, trimmed. Deeper elements are skipped; entities are
/// resolved.
pub fn fields(xml: &str) -> Result<BTreeMap<String, String>, XmlError> {
    let mut reader = Reader::from_str(xml);
    let mut fields = BTreeMap::new();
    let mut depth = 0usize;
    let mut open: Option<(String, String)> = None;
    let bad = |e: &dyn std::fmt::Display| XmlError(e.to_string());
    loop {
        match reader.read_event().map_err(|e| bad(&e))? {
            Xml::Start(start) => {
                depth += 1;
                if depth == 2 {
                    let name = start.local_name().as_ref().to_owned();
                    open = Some((name, String::new()));
                }
            }
            Xml::Empty(start) if depth == 1 => {
                let name = start.local_name().as_ref().to_owned();
                insert(&mut fields, name, String::new())?;
            }
            Xml::End(_) => {
                if depth == 2
                    && let Some((name, text)) = open.take()
                {
                    insert(&mut fields, name, text.trim().to_owned())?;
                }
                depth = depth
                    .checked_sub(1)
                    .ok_or_else(|| XmlError("an end tag without its start".to_owned()))?;
            }
            Xml::Text(text) if depth == 2 => {
                if let Some((_, value)) = open.as_mut() {
                    value.push_str(&text.xml10_content());
                }
            }
            Xml::CData(data) if depth == 2 => {
                if let Some((_, value)) = open.as_mut() {
                    value.push_str(&data.xml10_content());
                }
            }
            Xml::GeneralRef(reference) if depth == 2 => {
                let resolved = quick_xml::escape::unescape(&format!("&{};", &*reference))
                    .map_err(|e| bad(&e))?
                    .into_owned();
                if let Some((_, value)) = open.as_mut() {
                    value.push_str(&resolved);
                }
            }
            Xml::Eof => break,
            _ => {}
        }
    }
    if depth != 0 {
        return Err(XmlError("the document ends inside an element".to_owned()));
    }
    if fields.is_empty() {
        return Err(XmlError("no fields".to_owned()));
    }
    Ok(fields)
}

/// Adds a field, within [`MAX_FIELDS`] fields: `<A/>` and `<A></A>` alike.
fn insert(
    fields: &mut BTreeMap<String, String>,
    name: String,
    value: String,
) -> Result<(), XmlError> {
    if fields.len() >= MAX_FIELDS && !fields.contains_key(&name) {
        return Err(XmlError(format!("more than {MAX_FIELDS} fields")));
    }
    fields.insert(name, value);
    Ok(())
}

/// What a suite's callback said, decrypted.
#[derive(Clone, PartialEq, Eq)]
pub enum SuiteEvent {
    /// A new `suite_ticket` (every ten minutes).
    Ticket {
        /// The ticket itself: a credential, never logged.
        ticket: String,
        /// When WeCom issued it (Unix seconds).
        issued_at: i64,
    },
    /// A corp authorised, changed or cancelled the suite, or its permanent code
    /// was reset: `info_type` says which.
    Authorisation {
        /// `create_auth`, `change_auth`, `cancel_auth`, `reset_permanent_code`.
        info_type: String,
        /// The corp concerned (`AuthCorpId`), when the event names one.
        corp_id: Option<String>,
    },
    /// Any other InfoType: acknowledged and logged.
    Other {
        /// Its InfoType.
        info_type: String,
    },
}

impl std::fmt::Debug for SuiteEvent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            // The ticket is a credential: never shown.
            SuiteEvent::Ticket { issued_at, .. } => f
                .debug_struct("Ticket")
                .field("ticket", &"****")
                .field("issued_at", issued_at)
                .finish(),
            SuiteEvent::Authorisation { info_type, corp_id } => f
                .debug_struct("Authorisation")
                .field("info_type", info_type)
                .field("corp_id", corp_id)
                .finish(),
            SuiteEvent::Other { info_type } => f
                .debug_struct("Other")
                .field("info_type", info_type)
                .finish(),
        }
    }
}

/// Longest suite ticket WeCom documents.
const MAX_TICKET_BYTES: usize = 512;

impl SuiteEvent {
    /// Reads a decrypted event of suite `suite_id`.
    pub fn parse(xml: &str, suite_id: &str) -> Result<Self, XmlError> {
        let fields = fields(xml)?;
        let field = |name: &str| fields.get(name).filter(|v| !v.is_empty());
        if let Some(id) = field("SuiteId")
            && id != suite_id
        {
            return Err(XmlError("SuiteId is another suite's".to_owned()));
        }
        let info_type = field("InfoType")
            .ok_or_else(|| XmlError("no InfoType".to_owned()))?
            .clone();
        Ok(match info_type.as_str() {
            "suite_ticket" => {
                let ticket = field("SuiteTicket")
                    .filter(|t| t.len() <= MAX_TICKET_BYTES)
                    .ok_or_else(|| XmlError("no SuiteTicket of at most 512 bytes".to_owned()))?
                    .clone();
                let issued_at = field("TimeStamp")
                    .and_then(|t| t.parse().ok())
                    .ok_or_else(|| XmlError("no TimeStamp".to_owned()))?;
                SuiteEvent::Ticket { ticket, issued_at }
            }
            "create_auth" | "change_auth" | "cancel_auth" | "reset_permanent_code" => {
                SuiteEvent::Authorisation {
                    corp_id: field("AuthCorpId").cloned(),
                    info_type,
                }
            }
            _ => SuiteEvent::Other { info_type },
        })
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    #[test]
    fn wecoms_suite_ticket_example_is_read() {
        // WeCom's documented example, whitespace and all.
        let xml = "<xml><SuiteId><![CDATA[ww4asffe99e54c0fxxxx]]></SuiteId>\
            <InfoType> <![CDATA[suite_ticket]]></InfoType>\
            <TimeStamp>1403610513</TimeStamp>\
            <SuiteTicket><![CDATA[asdfasfdasdfasdf]]></SuiteTicket></xml>";
        assert_eq!(
            SuiteEvent::parse(xml, "ww4asffe99e54c0fxxxx").unwrap(),
            SuiteEvent::Ticket {
                ticket: "asdfasfdasdfasdf".to_owned(),
                issued_at: 1403610513
            }
        );
        assert!(SuiteEvent::parse(xml, "another-suite").is_err());
    }

    #[test]
    fn authorisation_events_name_their_corp() {
        let xml = "<xml><SuiteId><![CDATA[s]]></SuiteId><AuthCode><![CDATA[code]]></AuthCode>\
            <InfoType><![CDATA[create_auth]]></InfoType><TimeStamp>1403610513</TimeStamp></xml>";
        assert_eq!(
            SuiteEvent::parse(xml, "s").unwrap(),
            SuiteEvent::Authorisation {
                info_type: "create_auth".to_owned(),
                corp_id: None
            }
        );
        let xml = "<xml><SuiteId>s</SuiteId><InfoType>cancel_auth</InfoType>\
            <AuthCorpId>wxf8b4f85f3a794e77</AuthCorpId></xml>";
        assert_eq!(
            SuiteEvent::parse(xml, "s").unwrap(),
            SuiteEvent::Authorisation {
                info_type: "cancel_auth".to_owned(),
                corp_id: Some("wxf8b4f85f3a794e77".to_owned())
            }
        );
    }

    #[test]
    fn the_envelope_gives_its_encrypt_field_and_entities_are_resolved() {
        let xml = "<xml><ToUserName><![CDATA[toUser]]></ToUserName>\
            <Encrypt><![CDATA[abc+/=]]></Encrypt><AgentID><![CDATA[1]]></AgentID>\
            <Note>a &amp; b<Deep>skipped</Deep></Note></xml>";
        let fields = fields(xml).unwrap();
        assert_eq!(fields["Encrypt"], "abc+/=");
        assert_eq!(fields["Note"], "a & b");
        assert!(!fields.contains_key("Deep"));
    }

    #[test]
    fn malformed_documents_are_refused() {
        for xml in [
            "",
            "not xml",
            "<xml><a>1</b></xml>",
            "<xml><a>1</a>",
            "<xml><SuiteId>s</SuiteId></xml>",
            "<xml><InfoType>suite_ticket</InfoType><TimeStamp>1</TimeStamp></xml>",
        ] {
            assert!(SuiteEvent::parse(xml, "s").is_err(), "{xml:?}");
        }
        let long = format!(
            "<xml><InfoType>suite_ticket</InfoType><TimeStamp>1</TimeStamp>\
             <SuiteTicket>{}</SuiteTicket></xml>",
            "t".repeat(513)
        );
        assert!(SuiteEvent::parse(&long, "s").is_err());
    }

    #[test]
    fn self_closing_fields_count_towards_the_cap() {
        let empties: String = (0..MAX_FIELDS).map(|i| format!("<F{i}/>")).collect();
        let many = format!("<xml>{empties}<InfoType>suite_ticket</InfoType></xml>");
        assert!(fields(&many).is_err(), "{} fields", MAX_FIELDS + 1);
        let only_empties = format!("<xml>{empties}<Extra/></xml>");
        assert!(fields(&only_empties).is_err());
        let at_the_cap: String = (0..MAX_FIELDS).map(|i| format!("<F{i}/>")).collect();
        assert_eq!(
            fields(&format!("<xml>{at_the_cap}</xml>")).unwrap().len(),
            MAX_FIELDS
        );
    }

    #[test]
    fn debug_output_shows_no_ticket() {
        let event = SuiteEvent::Ticket {
            ticket: "THE-TICKET".to_owned(),
            issued_at: 1403610513,
        };
        let shown = format!("{event:?}");
        assert!(!shown.contains("THE-TICKET"), "{shown}");
        assert!(shown.contains("1403610513"), "{shown}");
    }

    proptest! {
        #[test]
        fn any_text_is_read_or_refused_without_panicking(text in ".{0,300}") {
            let _ = SuiteEvent::parse(&text, "s");
        }
    }
}
