//! The callers file: who may call the gateway, how each proves it, and which apps
//! each may use.
//!
//! ```toml
//! [[callers]]
//! name = "billing"
//! apps = ["shop", "crm"]                    # or ["*"]: every configured app
//! token_sha256 = "9c1f…"                    # printed by `wecom-kf-upgrade caller add`
//! cert_sans = ["billing.internal.example"]  # under mTLS: client certificates naming one
//! ```
//!
//! The file holds no secret: only SHA-256 digests of the tokens. A plain digest
//! rather than a slow password hash, because every token is 256 random bits from
//! [`new_caller`]: guessing one from its digest is as hopeless as guessing it, and a
//! slow hash would only cost CPU on every call.

use std::{collections::BTreeSet, fmt, sync::Arc};

use ring::{
    digest::{SHA256, digest},
    rand::{SecureRandom, SystemRandom},
};
use secrecy::SecretString;
use serde::{Deserialize, Serialize};
use subtle::ConstantTimeEq;

use crate::reload::{Digest, Snapshot};

/// The app name that grants every configured app.
pub const EVERY_APP: &str = "*";

/// Tokens start with this, so that secret scanners and people recognise a leaked one.
const TOKEN_PREFIX: &str = "wku_";

/// The file as written.
#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
struct CallersFile {
    #[serde(default)]
    callers: Vec<FileCaller>,
}

/// One `[[callers]]` entry as written.
#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
struct FileCaller {
    name: String,
    apps: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    token_sha256: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    cert_sans: Vec<String>,
}

/// The callers of one version of the file.
#[derive(Clone)]
pub struct Callers {
    entries: Vec<Arc<Entry>>,
    /// The digest of the bytes they were read from, so a reload can tell a change.
    pub(crate) source: Digest,
}

/// One caller: a name for the logs, the apps it may use, and its credentials.
pub(crate) struct Entry {
    pub(crate) name: String,
    pub(crate) apps: Grant,
    token_sha256: Option<[u8; 32]>,
    cert_sans: Vec<String>,
}

/// The apps a caller may use.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Grant {
    /// Every configured app (`"*"`).
    Every,
    /// These apps only.
    Only(BTreeSet<String>),
}

/// A problem with the callers file, at a key such as `callers[2].apps`.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{key}: {problem}")]
pub struct CallersError {
    /// Where in the file.
    pub key: String,
    /// What is wrong, and how to fix it.
    pub problem: String,
}

impl CallersError {
    fn new(key: impl Into<String>, problem: impl Into<String>) -> Self {
        Self {
            key: key.into(),
            problem: problem.into(),
        }
    }
}

// === impl Callers ===

impl Callers {
    /// Reads the file's bytes; every app named must be one that `configured` accepts.
    pub fn parse(bytes: &[u8], configured: &dyn Fn(&str) -> bool) -> Result<Self, CallersError> {
        let source = Snapshot::of(vec![bytes.to_vec()]).digest;
        let text = std::str::from_utf8(bytes)
            .map_err(|_| CallersError::new("callers", "the file is not UTF-8 text"))?;
        let file: CallersFile = toml::from_str(text).map_err(|e| {
            // The file holds no secret, but keep errors in the configuration's style:
            // where and what, not the text.
            CallersError::new("callers", crate::config::toml_problem(text, &e))
        })?;
        let mut entries: Vec<Arc<Entry>> = Vec::new();
        for (i, caller) in file.callers.into_iter().enumerate() {
            let entry = Entry::parse(caller, i, configured)?;
            let same_token = entry.token_sha256.is_some()
                && entries.iter().any(|e| e.token_sha256 == entry.token_sha256);
            if same_token {
                return Err(CallersError::new(
                    format!("callers[{i}].token_sha256"),
                    "is the token of an earlier entry; every token must name one caller",
                ));
            }
            if let Some(san) = entry
                .cert_sans
                .iter()
                .find(|san| entries.iter().any(|e| e.cert_sans.contains(san)))
            {
                return Err(CallersError::new(
                    format!("callers[{i}].cert_sans"),
                    format!("`{san}` already names an earlier caller"),
                ));
            }
            entries.push(Arc::new(entry));
        }
        Ok(Self { entries, source })
    }

    /// The caller whose token this is. Every entry's digest is compared, each in
    /// constant time, so the time taken says nothing about how close a guess came.
    pub(crate) fn by_token(&self, token: &str) -> Option<&Arc<Entry>> {
        let presented = digest(&SHA256, token.as_bytes());
        let mut found = None;
        for entry in &self.entries {
            if let Some(known) = &entry.token_sha256
                && bool::from(known.as_slice().ct_eq(presented.as_ref()))
            {
                found = Some(entry);
            }
        }
        found
    }

    /// The caller a verified client certificate names, by one of its SANs.
    pub(crate) fn by_certificate_names(&self, names: &[&str]) -> Option<&Arc<Entry>> {
        self.entries.iter().find(|entry| {
            entry
                .cert_sans
                .iter()
                .any(|san| names.contains(&san.as_str()))
        })
    }

    /// Whether any caller is named by client certificates.
    pub(crate) fn named_by_certificates(&self) -> bool {
        self.entries.iter().any(|entry| !entry.cert_sans.is_empty())
    }

    /// Each caller with what it may use and how it proves who it is, one line each,
    /// for `check-config`: no token digest (not a secret, but nobody needs to read it).
    pub fn describe(&self) -> Vec<String> {
        self.entries
            .iter()
            .map(|entry| {
                let apps = match &entry.apps {
                    Grant::Every => "every app".to_owned(),
                    Grant::Only(apps) => apps.iter().cloned().collect::<Vec<_>>().join(", "),
                };
                let mut proofs = Vec::new();
                if entry.token_sha256.is_some() {
                    proofs.push("a bearer token".to_owned());
                }
                if !entry.cert_sans.is_empty() {
                    proofs.push(format!(
                        "a client certificate naming {}",
                        entry.cert_sans.join(" or ")
                    ));
                }
                format!("{}: {apps} (with {})", entry.name, proofs.join(" or "))
            })
            .collect()
    }

    /// How many entries there are.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether there are none: then nobody can call.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

impl fmt::Debug for Callers {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(self.describe()).finish()
    }
}

// === impl Entry ===

impl fmt::Debug for Entry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Entry")
            .field("name", &self.name)
            .field("apps", &self.apps)
            .finish_non_exhaustive()
    }
}

impl Entry {
    /// A caller the gateway does not check, when caller authentication is off:
    /// every app, no credentials.
    pub(crate) fn unchecked(name: String) -> Self {
        Self {
            name,
            apps: Grant::Every,
            token_sha256: None,
            cert_sans: Vec::new(),
        }
    }

    fn parse(
        caller: FileCaller,
        i: usize,
        configured: &dyn Fn(&str) -> bool,
    ) -> Result<Self, CallersError> {
        let key = |field: &str| format!("callers[{i}].{field}");
        crate::config::check_name("caller", &caller.name)
            .map_err(|problem| CallersError::new(key("name"), problem))?;
        let apps =
            grant(&caller.apps, configured).map_err(|p| CallersError::new(key("apps"), p))?;
        let token_sha256 = caller
            .token_sha256
            .map(|hex| {
                parse_digest(&hex).ok_or_else(|| {
                    CallersError::new(
                        key("token_sha256"),
                        "is not a SHA-256 digest (64 hex digits); copy it from \
                         `wecom-kf-upgrade caller add`",
                    )
                })
            })
            .transpose()?;
        if token_sha256.is_none() && caller.cert_sans.is_empty() {
            return Err(CallersError::new(
                key("token_sha256"),
                "is required unless cert_sans names the caller's client certificates",
            ));
        }
        let unprintable = |san: &String| san.trim().is_empty() || san.chars().any(char::is_control);
        if caller.cert_sans.iter().any(unprintable) {
            return Err(CallersError::new(
                key("cert_sans"),
                "holds an empty name or one with control characters",
            ));
        }
        Ok(Self {
            name: caller.name,
            apps,
            token_sha256,
            cert_sans: caller.cert_sans,
        })
    }
}

/// The apps a list grants: `["*"]` every app, otherwise each must be configured.
fn grant(apps: &[String], configured: &dyn Fn(&str) -> bool) -> Result<Grant, String> {
    if apps.iter().any(|app| app == EVERY_APP) {
        return if apps.len() == 1 {
            Ok(Grant::Every)
        } else {
            Err(format!("`{EVERY_APP}` grants every app: list it alone"))
        };
    }
    if apps.is_empty() {
        return Err(format!(
            "lists no app; name the apps the caller may use, or `{EVERY_APP}` for every app"
        ));
    }
    if let Some(unknown) = apps.iter().find(|app| !configured(app)) {
        return Err(format!("`{unknown}` is not a configured app"));
    }
    Ok(Grant::Only(apps.iter().cloned().collect()))
}

impl Grant {
    /// Whether the app is granted.
    pub(crate) fn allows(&self, app: &str) -> bool {
        match self {
            Grant::Every => true,
            Grant::Only(apps) => apps.contains(app),
        }
    }
}

fn parse_digest(hex: &str) -> Option<[u8; 32]> {
    let hex = hex.trim().as_bytes();
    if hex.len() != 64 {
        return None;
    }
    let mut digest = [0; 32];
    for (byte, pair) in digest.iter_mut().zip(hex.chunks(2)) {
        let pair = std::str::from_utf8(pair).ok()?;
        *byte = u8::from_str_radix(pair, 16).ok()?;
    }
    Some(digest)
}

/// Lower-case hex; hand-written, as it is all the encoding the tokens need.
fn to_hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

// === new callers ===

/// A new caller's credential: the token, to hand to the caller once, and the
/// entry for the callers file, which holds only the token's digest.
#[derive(Debug)]
pub struct NewCaller {
    /// `wku_` and 64 hex digits: 256 bits from the operating system's CSPRNG.
    pub token: SecretString,
    /// The `[[callers]]` entry to append to the callers file.
    pub entry: String,
}

/// Makes a credential for a caller named `name` that may use `apps` (`*`: every app).
pub fn new_caller(name: &str, apps: &[String]) -> Result<NewCaller, String> {
    crate::config::check_name("caller", name)?;
    for app in apps {
        if app != EVERY_APP {
            crate::config::check_name("app", app)?;
        }
    }
    // Apps are checked against the configuration when the file is loaded.
    grant(apps, &|_| true)?;
    let mut random = [0u8; 32];
    SystemRandom::new()
        .fill(&mut random)
        .map_err(|_| "the operating system's random number generator failed".to_owned())?;
    let token = format!("{TOKEN_PREFIX}{}", to_hex(&random));
    let entry = CallersFile {
        callers: vec![FileCaller {
            name: name.to_owned(),
            apps: apps.to_vec(),
            token_sha256: Some(to_hex(digest(&SHA256, token.as_bytes()).as_ref())),
            cert_sans: Vec::new(),
        }],
    };
    let entry = toml::to_string(&entry).map_err(|e| e.to_string())?;
    Ok(NewCaller {
        token: SecretString::from(token),
        entry,
    })
}

#[cfg(test)]
mod tests {
    use secrecy::ExposeSecret;

    use super::*;

    fn any_app(_: &str) -> bool {
        true
    }

    #[test]
    fn a_new_callers_entry_loads_and_knows_its_token_only() {
        let new = new_caller("billing", &["shop".into(), "crm".into()]).unwrap();
        let token = new.token.expose_secret();
        assert!(token.starts_with("wku_") && token.len() == 68, "{token}");
        assert!(!new.entry.contains(token), "{}", new.entry);
        let callers = Callers::parse(new.entry.as_bytes(), &any_app).unwrap();
        let entry = callers.by_token(token).expect("the token names the caller");
        assert_eq!(entry.name, "billing");
        assert!(entry.apps.allows("crm") && !entry.apps.allows("other"));
        assert!(callers.by_token("wku_0").is_none());
        let other = new_caller("billing", &["shop".into()]).unwrap();
        assert_ne!(other.token.expose_secret(), token, "tokens are random");
    }

    #[test]
    fn apps_must_be_configured_and_star_stands_alone() {
        let file = |apps: &str| {
            format!(
                "[[callers]]\nname = \"a\"\napps = {apps}\ntoken_sha256 = \"{}\"\n",
                "0".repeat(64)
            )
        };
        let only_shop = |app: &str| app == "shop";
        assert!(Callers::parse(file("[\"shop\"]").as_bytes(), &only_shop).is_ok());
        let err = Callers::parse(file("[\"crm\"]").as_bytes(), &only_shop).unwrap_err();
        assert_eq!(err.key, "callers[0].apps");
        assert!(err.problem.contains("crm"), "{err}");
        let every = Callers::parse(file("[\"*\"]").as_bytes(), &only_shop).unwrap();
        assert!(every.entries[0].apps.allows("anything"));
        for bad in ["[\"*\", \"shop\"]", "[]"] {
            let err = Callers::parse(file(bad).as_bytes(), &only_shop).unwrap_err();
            assert_eq!(err.key, "callers[0].apps", "{bad}");
        }
    }

    #[test]
    fn entries_need_a_credential_and_distinct_ones() {
        let err =
            Callers::parse(b"[[callers]]\nname = \"a\"\napps = [\"*\"]\n", &any_app).unwrap_err();
        assert_eq!(err.key, "callers[0].token_sha256");
        let bad_hex = "[[callers]]\nname = \"a\"\napps = [\"*\"]\ntoken_sha256 = \"xyz\"\n";
        let err = Callers::parse(bad_hex.as_bytes(), &any_app).unwrap_err();
        assert_eq!(err.key, "callers[0].token_sha256");
        let hash = "ab".repeat(32);
        let twice = format!(
            "[[callers]]\nname = \"a\"\napps = [\"*\"]\ntoken_sha256 = \"{hash}\"\n\
             [[callers]]\nname = \"b\"\napps = [\"*\"]\ntoken_sha256 = \"{hash}\"\n"
        );
        let err = Callers::parse(twice.as_bytes(), &any_app).unwrap_err();
        assert_eq!(err.key, "callers[1].token_sha256");
        let sans = "[[callers]]\nname = \"a\"\napps = [\"*\"]\ncert_sans = [\"x.example\"]\n\
                    [[callers]]\nname = \"b\"\napps = [\"*\"]\ncert_sans = [\"x.example\"]\n";
        let err = Callers::parse(sans.as_bytes(), &any_app).unwrap_err();
        assert_eq!(err.key, "callers[1].cert_sans");
    }

    #[test]
    fn a_certificate_names_a_caller_by_one_of_its_sans() {
        let text = "[[callers]]\nname = \"crm\"\napps = [\"*\"]\n\
                    cert_sans = [\"crm.internal\", \"spiffe://example.org/crm\"]\n";
        let callers = Callers::parse(text.as_bytes(), &any_app).unwrap();
        let found = callers.by_certificate_names(&["other", "spiffe://example.org/crm"]);
        assert_eq!(found.map(|e| e.name.as_str()), Some("crm"));
        assert!(
            callers
                .by_certificate_names(&["crm.internal.evil"])
                .is_none()
        );
    }

    #[test]
    fn the_description_shows_apps_and_proofs_but_no_digest() {
        let new = new_caller("billing", &["shop".into()]).unwrap();
        let callers = Callers::parse(new.entry.as_bytes(), &any_app).unwrap();
        let text = callers.describe().join("\n") + &format!("{callers:?}");
        assert!(
            text.contains("billing: shop (with a bearer token)"),
            "{text}"
        );
        let digest_start = new.entry.split('"').nth(5).unwrap_or_default();
        assert_eq!(digest_start.len(), 64, "{}", new.entry);
        assert!(!text.contains(digest_start), "{text}");
    }

    #[test]
    fn a_bad_name_is_refused() {
        assert!(new_caller("has space", &["*".into()]).is_err());
        assert!(new_caller("ok", &["bad app".into()]).is_err());
        assert!(new_caller("ok", &[]).is_err());
    }
}
