//! The environment: where it comes from, and what it says about the default app.

use std::collections::BTreeMap;

/// Where the environment comes from: the process, or a map in tests (so tests never
/// call `std::env::set_var`, which races with other threads).
pub trait Environment {
    /// The variable's value, if set and not empty.
    fn var(&self, name: &str) -> Option<String>;
}

/// The process environment.
#[derive(Debug, Clone, Copy)]
pub struct ProcessEnv;

impl Environment for ProcessEnv {
    fn var(&self, name: &str) -> Option<String> {
        std::env::var(name).ok().filter(|v| !v.is_empty())
    }
}

impl Environment for BTreeMap<String, String> {
    fn var(&self, name: &str) -> Option<String> {
        self.get(name).filter(|v| !v.is_empty()).cloned()
    }
}

/// 企业ID of the default app.
pub(super) const CORP_ID: &str = "WECOM_CORP_ID";
/// The default app's secret, inline.
pub(super) const CORP_SECRET: &str = "WECOM_CORP_SECRET";
/// A file holding the default app's secret (a mounted Kubernetes Secret).
pub(super) const CORP_SECRET_FILE: &str = "WECOM_CORP_SECRET_FILE";
/// The API base every app without its own uses.
pub(super) const API_BASE: &str = "WECOM_API_BASE";
/// The gRPC port's PEM certificate chain: TLS when set, with the key.
pub(super) const TLS_CERT_FILE: &str = "WECOM_TLS_CERT_FILE";
/// Its PEM private key.
pub(super) const TLS_KEY_FILE: &str = "WECOM_TLS_KEY_FILE";
/// The CAs of client certificates: mTLS when set.
pub(super) const TLS_CLIENT_CA_FILE: &str = "WECOM_TLS_CLIENT_CA_FILE";
/// The callers file: caller authentication when set.
pub(super) const CALLERS_FILE: &str = "WECOM_CALLERS_FILE";
/// Where the callback endpoint WeCom pushes suite tickets to listens.
pub(super) const CALLBACK_LISTEN: &str = "WECOM_CALLBACK_LISTEN";
/// The apps file: more apps, re-read when it changes (代开发 apps).
pub(super) const APPS_FILE: &str = "WECOM_APPS_FILE";
