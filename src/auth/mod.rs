//! Who is calling: callers prove who they are with a bearer token or, under mTLS,
//! with their client certificate; each may use the apps its entry names.
//!
//! - `callers`: the callers file, its entries and token digests, new credentials;
//! - this file: [`Access`], which identifies the caller of every call against the
//!   current callers, and swaps in the file's new version when it changes.

mod callers;

use std::{path::PathBuf, sync::Arc, time::Duration};

use arc_swap::ArcSwap;
use tonic::{metadata::MetadataMap, transport::CertificateDer};

use callers::Entry;
pub use callers::{Callers, CallersError, EVERY_APP, NewCaller, new_caller};

use crate::reload;

/// The metadata (HTTP header) that carries a bearer token.
pub const AUTHORIZATION: &str = "authorization";

/// How callers are let in: by anyone, or by the callers file.
#[derive(Debug, Clone)]
pub struct Access {
    /// `None`: caller authentication is off and every caller may use every app.
    callers: Option<Arc<ArcSwap<Callers>>>,
    /// Who callers are when nothing names them, made once rather than per call.
    anonymous: Arc<Entry>,
}

/// Who made a call, as far as the gateway can tell.
#[derive(Debug, Clone)]
pub struct Caller {
    entry: Arc<Entry>,
    proof: Proof,
}

/// How the caller proved who it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Proof {
    /// A bearer token from the callers file.
    Token,
    /// A client certificate the client CA signed.
    Certificate,
    /// Nothing: caller authentication is off.
    None,
}

/// Why a caller was not recognised. It says what to send, never what was sent.
#[derive(Debug, Clone, thiserror::Error)]
pub enum AuthError {
    /// Neither a token nor a client certificate that names a caller.
    #[error("no credentials: send `authorization: Bearer TOKEN` metadata")]
    Missing,
    /// `authorization` is there but is not one `Bearer TOKEN`.
    #[error("authorization metadata {0}")]
    Malformed(&'static str),
    /// The token is no caller's.
    #[error("the bearer token is not one of a known caller")]
    UnknownToken,
    /// The client certificate is valid but names no caller.
    #[error("the client certificate ({names}) names no caller, and no bearer token was sent")]
    UnknownCertificate {
        /// The certificate's SANs, bounded.
        names: String,
    },
}

impl AuthError {
    /// The ErrorInfo reason.
    pub fn reason(&self) -> &'static str {
        match self {
            AuthError::Missing => "MISSING_CREDENTIALS",
            AuthError::Malformed(_) => "MALFORMED_AUTHORIZATION",
            AuthError::UnknownToken => "UNKNOWN_TOKEN",
            AuthError::UnknownCertificate { .. } => "UNKNOWN_CLIENT_CERTIFICATE",
        }
    }
}

// === impl Access ===

impl Access {
    /// Every caller may use every app.
    pub fn open() -> Self {
        Self {
            callers: None,
            anonymous: Arc::new(Entry::unchecked("anonymous".to_owned())),
        }
    }

    /// Callers from `callers`, re-read from `path` every `reload_interval`; a
    /// version that does not load (or names an app for which `is_app` is false: apps
    /// may come and go while the gateway runs) is logged and
    /// the previous one stays.
    pub fn from_file(
        callers: Callers,
        path: PathBuf,
        reload_interval: Duration,
        is_app: impl Fn(&str) -> bool + Send + Sync + 'static,
    ) -> Self {
        let seen = callers.source;
        let current = Arc::new(ArcSwap::from_pointee(callers));
        reload::watch(
            "callers",
            vec![path],
            reload_interval,
            seen,
            Arc::downgrade(&current),
            move |current: &ArcSwap<Callers>, mut contents| {
                let bytes = contents.pop().unwrap_or_default();
                let callers = Callers::parse(&bytes, &is_app).map_err(|e| e.to_string())?;
                tracing::info!(callers = callers.len(), "callers file reloaded");
                current.store(Arc::new(callers));
                Ok(())
            },
        );
        Self {
            callers: Some(current),
            ..Self::open()
        }
    }

    /// Whether callers must prove who they are.
    pub fn enforced(&self) -> bool {
        self.callers.is_some()
    }

    /// The caller of a call with this metadata, on a connection with this client
    /// certificate (verified by the TLS handshake). A bearer token, when sent, is
    /// what counts; otherwise the certificate's SANs may name the caller.
    pub fn identify(
        &self,
        metadata: &MetadataMap,
        certificate: Option<&CertificateDer<'_>>,
    ) -> Result<Caller, AuthError> {
        let Some(callers) = &self.callers else {
            return Ok(self.unchecked(certificate));
        };
        let callers = callers.load();
        if let Some(token) = bearer_token(metadata)? {
            return callers
                .by_token(token)
                .map(|entry| Caller::known(entry, Proof::Token))
                .ok_or(AuthError::UnknownToken);
        }
        // A certificate counts only where some caller is named by one.
        let Some(certificate) = certificate.filter(|_| callers.named_by_certificates()) else {
            return Err(AuthError::Missing);
        };
        let names = certificate_names(certificate);
        let names: Vec<&str> = names.iter().map(String::as_str).collect();
        callers
            .by_certificate_names(&names)
            .map(|entry| Caller::known(entry, Proof::Certificate))
            .ok_or_else(|| AuthError::UnknownCertificate {
                names: bounded_list(&names),
            })
    }

    /// A caller without caller authentication: under mTLS named by the first name
    /// of its client certificate, which the handshake verified; else `anonymous`.
    fn unchecked(&self, certificate: Option<&CertificateDer<'_>>) -> Caller {
        let name = certificate.and_then(|c| certificate_names(c).into_iter().next());
        match name {
            Some(name) => Caller {
                entry: Arc::new(Entry::unchecked(name.chars().take(100).collect())),
                proof: Proof::Certificate,
            },
            None => Caller::known(&self.anonymous, Proof::None),
        }
    }
}

/// The token of `authorization: Bearer TOKEN`, if the metadata is there.
fn bearer_token(metadata: &MetadataMap) -> Result<Option<&str>, AuthError> {
    let mut values = metadata.get_all(AUTHORIZATION).iter();
    let Some(value) = values.next() else {
        return Ok(None);
    };
    if values.next().is_some() {
        return Err(AuthError::Malformed(
            "was sent more than once; send it once",
        ));
    }
    let value = value
        .to_str()
        .map_err(|_| AuthError::Malformed("must be printable ASCII"))?;
    let malformed = AuthError::Malformed("must be `Bearer TOKEN`");
    let (scheme, token) = value.trim().split_once(' ').ok_or(malformed.clone())?;
    let token = token.trim();
    if !scheme.eq_ignore_ascii_case("bearer") || token.is_empty() {
        return Err(malformed);
    }
    Ok(Some(token))
}

/// The DNS and URI names (SANs) of a certificate; none if it cannot be parsed
/// (it passed the handshake's verification, so it can).
fn certificate_names(certificate: &CertificateDer<'_>) -> Vec<String> {
    let Ok(parsed) = webpki::EndEntityCert::try_from(certificate) else {
        return Vec::new();
    };
    parsed
        .valid_dns_names()
        .chain(parsed.valid_uri_names())
        .map(str::to_owned)
        .collect()
}

/// At most a few names, each bounded, for messages.
fn bounded_list(names: &[&str]) -> String {
    if names.is_empty() {
        return "no DNS or URI SAN".to_owned();
    }
    let shown: Vec<String> = names
        .iter()
        .take(4)
        .map(|name| name.chars().take(100).collect())
        .collect();
    shown.join(", ")
}

// === impl Caller ===

impl Caller {
    fn known(entry: &Arc<Entry>, proof: Proof) -> Self {
        Self {
            entry: Arc::clone(entry),
            proof,
        }
    }

    /// The caller's name, for logs and errors.
    pub fn name(&self) -> &str {
        &self.entry.name
    }

    /// How it proved who it is.
    pub fn proof(&self) -> Proof {
        self.proof
    }

    /// Whether it may use `app`.
    pub fn may_use(&self, app: &str) -> bool {
        self.entry.apps.allows(app)
    }
}

impl Proof {
    /// How the audit and logs name it.
    pub fn as_str(self) -> &'static str {
        match self {
            Proof::Token => "token",
            Proof::Certificate => "certificate",
            Proof::None => "none",
        }
    }
}

#[cfg(test)]
mod tests {
    use secrecy::ExposeSecret;

    use super::*;

    fn metadata(authorization: &[&str]) -> MetadataMap {
        let mut metadata = MetadataMap::new();
        for value in authorization {
            metadata.append(AUTHORIZATION, value.parse().unwrap());
        }
        metadata
    }

    fn access(entry: &str) -> Access {
        let callers = Callers::parse(entry.as_bytes(), &|_| true).unwrap();
        Access {
            callers: Some(Arc::new(ArcSwap::from_pointee(callers))),
            ..Access::open()
        }
    }

    #[test]
    fn a_bearer_token_names_its_caller_whatever_the_schemes_case() {
        let new = new_caller("billing", &["shop".into()]).unwrap();
        let access = access(&new.entry);
        let token = new.token.expose_secret();
        for header in [format!("Bearer {token}"), format!("bearer  {token} ")] {
            let caller = access.identify(&metadata(&[&header]), None).unwrap();
            assert_eq!((caller.name(), caller.proof()), ("billing", Proof::Token));
            assert!(caller.may_use("shop") && !caller.may_use("crm"));
        }
    }

    #[test]
    fn missing_malformed_and_unknown_tokens_are_told_apart() {
        let new = new_caller("billing", &["shop".into()]).unwrap();
        let access = access(&new.entry);
        let reason = |values: &[&str]| {
            access
                .identify(&metadata(values), None)
                .unwrap_err()
                .reason()
        };
        assert_eq!(reason(&[]), "MISSING_CREDENTIALS");
        assert_eq!(reason(&["Basic dXNlcjpwYXNz"]), "MALFORMED_AUTHORIZATION");
        assert_eq!(reason(&["Bearer"]), "MALFORMED_AUTHORIZATION");
        assert_eq!(reason(&["Bearer a", "Bearer b"]), "MALFORMED_AUTHORIZATION");
        assert_eq!(reason(&["Bearer wku_guess"]), "UNKNOWN_TOKEN");
    }

    #[test]
    fn errors_never_repeat_what_was_sent() {
        let access = access(&new_caller("a", &["*".into()]).unwrap().entry);
        for sent in ["Bearer SENT-TOKEN", "Token SENT-TOKEN"] {
            let error = access.identify(&metadata(&[sent]), None).unwrap_err();
            assert!(!error.to_string().contains("SENT-TOKEN"), "{error}");
        }
    }

    #[test]
    fn without_a_callers_file_a_client_certificate_still_names_the_caller() {
        let issued = rcgen::generate_simple_self_signed(vec!["crm.internal".to_owned()]).unwrap();
        let caller = Access::open()
            .identify(&metadata(&[]), Some(issued.cert.der()))
            .unwrap();
        assert_eq!(
            (caller.name(), caller.proof()),
            ("crm.internal", Proof::Certificate)
        );
        assert!(caller.may_use("any-app"));
    }

    #[test]
    fn without_a_callers_file_everyone_is_let_in() {
        let caller = Access::open()
            .identify(&metadata(&["Bearer whatever"]), None)
            .unwrap();
        assert_eq!((caller.name(), caller.proof()), ("anonymous", Proof::None));
        assert!(caller.may_use("any-app"));
    }
}
