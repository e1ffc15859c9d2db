//! What a valid configuration is: app names, API bases, and the bounds of every knob.

use std::time::Duration;

use url::{Host, Url};

use super::{ConfigError, DEFAULT_API_BASE, Settings};

/// Checks an app name: callers send it as gRPC metadata.
pub(super) fn app_name(name: &str) -> Result<(), String> {
    check_name("app", name)
}

/// Checks the name of an app or a caller: names travel in metadata, logs and errors.
pub(crate) fn check_name(kind: &str, name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.');
    if ok {
        Ok(())
    } else {
        Err(format!(
            "`{name}` is not a valid {kind} name: use 1-64 of A-Z a-z 0-9 - _ . \
             (names travel as gRPC metadata and in logs)"
        ))
    }
}

/// What is wrong with where the gRPC port listens, if anything: reachable from
/// other machines with neither TLS nor caller authentication (anyone who reaches
/// it can move any customer of any app), or with caller tokens in clear text.
pub fn is_exposed(settings: &Settings) -> Option<String> {
    let listen = settings.listen;
    if listen.ip().is_loopback() {
        return None;
    }
    match (&settings.tls, &settings.auth) {
        (None, None) => Some(format!(
            "the gRPC port {listen} is reachable beyond this machine with neither TLS nor \
             caller authentication: anyone who reaches it can use every app; set \
             WECOM_TLS_CERT_FILE and WECOM_TLS_KEY_FILE, and WECOM_CALLERS_FILE"
        )),
        (None, Some(_)) => Some(format!(
            "the gRPC port {listen} is reachable beyond this machine without TLS: caller \
             tokens cross the network in clear text; set WECOM_TLS_CERT_FILE and \
             WECOM_TLS_KEY_FILE, or terminate TLS in front of the gateway"
        )),
        (Some(_), _) => None,
    }
}

/// Parses an API base: http or https, a host, no query or fragment.
pub(super) fn api_base(text: &str, key: &str) -> Result<Url, ConfigError> {
    let refuse = |why: &str| {
        // The text may hold a password: say what is wrong without quoting it.
        ConfigError::new(
            key,
            format!("is not an http(s) base URL like {DEFAULT_API_BASE}: {why}"),
        )
    };
    let url = Url::parse(text.trim()).map_err(|e| refuse(&e.to_string()))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(refuse("the scheme must be http or https"));
    }
    if url.host().is_none() {
        return Err(refuse("it names no host"));
    }
    if url.query().is_some() || url.fragment().is_some() {
        return Err(refuse("it must have no query or fragment"));
    }
    Ok(url)
}

/// Plain HTTP to a host other than this machine: the secret and the tokens, which
/// travel in query strings, would cross the network in clear text. Credentials in
/// the URL change nothing about where its host is.
pub fn is_cleartext_remote(url: &Url) -> bool {
    let local = match url.host() {
        Some(Host::Domain(name)) => name.eq_ignore_ascii_case("localhost"),
        Some(Host::Ipv4(ip)) => ip.is_loopback(),
        Some(Host::Ipv6(ip)) => ip.is_loopback(),
        None => true,
    };
    url.scheme() == "http" && !local
}

/// Longest duration any knob accepts: an hour in milliseconds, a day in seconds.
/// Longer values are mistakes, and would overflow clock arithmetic.
const MAX_MS: u64 = 3_600_000;
const MAX_SECS: u64 = 86_400;

/// Checks every numeric knob against its bounds, in the order of the file.
pub(super) fn bounds(s: &Settings) -> Result<(), ConfigError> {
    let (u, t, srv, lim) = (&s.upstream, &s.token, &s.server, &s.limits);
    let cb = &s.callback;
    let (tls, auth) = (s.tls.as_ref(), s.auth.as_ref());
    let ms = |d: Duration| u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
    let secs = |d: Duration| d.as_secs();
    let as_u64 = |n: usize| u64::try_from(n).unwrap_or(u64::MAX);
    // (key, value, least, most)
    let knobs = [
        (
            "upstream.connect_timeout_ms",
            ms(u.connect_timeout),
            1,
            MAX_MS,
        ),
        (
            "upstream.request_timeout_ms",
            ms(u.request_timeout),
            1,
            MAX_MS,
        ),
        ("upstream.call_timeout_ms", ms(u.call_timeout), 1, MAX_MS),
        ("upstream.retry_backoff_ms", ms(u.retry_backoff), 0, MAX_MS),
        // WeCom advises at most 3 retries after -1.
        ("upstream.max_retries", u.max_retries.into(), 0, 10),
        (
            "upstream.max_body_bytes",
            as_u64(u.max_body_bytes),
            1024,
            64 << 20,
        ),
        (
            "upstream.max_requests_per_app",
            as_u64(u.max_requests_per_app),
            1,
            10_000,
        ),
        (
            "upstream.max_idle_connections",
            as_u64(u.max_idle_connections),
            0,
            10_000,
        ),
        ("upstream.idle_timeout_ms", ms(u.idle_timeout), 1, MAX_MS),
        (
            "token.refresh_ahead_secs",
            secs(t.refresh_ahead),
            0,
            MAX_SECS,
        ),
        (
            "token.expiry_margin_secs",
            secs(t.expiry_margin),
            0,
            MAX_SECS,
        ),
        (
            "token.credential_cooldown_secs",
            secs(t.credential_cooldown),
            0,
            MAX_SECS,
        ),
        ("token.failure_backoff_ms", ms(t.failure_backoff), 1, MAX_MS),
        (
            "token.failure_backoff_max_ms",
            ms(t.failure_backoff_max),
            ms(t.failure_backoff),
            MAX_MS,
        ),
        (
            "server.max_decode_message_bytes",
            as_u64(srv.max_decode_message_bytes),
            1024,
            64 << 20,
        ),
        (
            "server.max_concurrent_streams",
            srv.max_concurrent_streams.into(),
            1,
            10_000,
        ),
        (
            "server.max_calls_in_flight",
            as_u64(srv.max_calls_in_flight),
            1,
            1_000_000,
        ),
        (
            "server.max_connections",
            as_u64(srv.max_connections),
            1,
            1_000_000,
        ),
        (
            "server.handshake_timeout_ms",
            ms(srv.handshake_timeout),
            1,
            MAX_MS,
        ),
        (
            "server.request_read_timeout_ms",
            ms(srv.request_read_timeout),
            1,
            MAX_MS,
        ),
        (
            "server.keepalive_interval_ms",
            ms(srv.keepalive_interval),
            1_000,
            MAX_MS,
        ),
        (
            "server.keepalive_timeout_ms",
            ms(srv.keepalive_timeout),
            1,
            MAX_MS,
        ),
        ("server.drain_delay_ms", ms(srv.drain_delay), 0, MAX_MS),
        (
            "server.shutdown_grace_ms",
            ms(srv.shutdown_grace),
            0,
            MAX_MS,
        ),
        (
            "limits.corp_api_per_minute",
            lim.corp_api_per_minute.into(),
            1,
            1_000_000,
        ),
        (
            "limits.corp_api_per_hour",
            lim.corp_api_per_hour.into(),
            1,
            100_000_000,
        ),
        (
            "limits.gateway_api_per_minute",
            lim.gateway_api_per_minute.map_or(1, u64::from),
            1,
            1_000_000,
        ),
        (
            "limits.gateway_api_per_hour",
            lim.gateway_api_per_hour.map_or(1, u64::from),
            1,
            100_000_000,
        ),
        ("limits.max_wait_ms", ms(lim.max_wait), 0, MAX_MS),
        (
            "callback.max_clock_skew_secs",
            secs(cb.max_clock_skew),
            1,
            MAX_SECS,
        ),
        (
            "callback.max_body_bytes",
            as_u64(cb.max_body_bytes),
            1024,
            16 << 20,
        ),
        (
            "callback.max_remembered",
            as_u64(cb.max_remembered),
            1,
            10_000_000,
        ),
        (
            "callback.max_connections",
            as_u64(cb.max_connections),
            1,
            1_000_000,
        ),
        (
            "callback.handshake_timeout_ms",
            ms(cb.handshake_timeout),
            1,
            MAX_MS,
        ),
        (
            "callback.request_read_timeout_ms",
            ms(cb.request_read_timeout),
            1,
            MAX_MS,
        ),
    ];
    // The knobs of TLS and caller authentication, when they are on.
    let tls_knobs = tls.into_iter().map(|tls| {
        (
            "tls.reload_interval_ms",
            ms(tls.reload_interval),
            100,
            MAX_MS,
        )
    });
    let auth_knobs = auth.into_iter().map(|auth| {
        (
            "auth.reload_interval_ms",
            ms(auth.reload_interval),
            100,
            MAX_MS,
        )
    });
    for (key, value, least, most) in knobs.into_iter().chain(tls_knobs).chain(auth_knobs) {
        if !(least..=most).contains(&value) {
            return Err(ConfigError::new(
                key,
                format!("is {value}; it must be between {least} and {most}"),
            ));
        }
    }
    provider_bounds(s)?;
    // The request timeout runs from the connection's checkout: a connect that
    // stalls must fail as a connect (nothing sent) before it does, or the call
    // would be reported as perhaps applied.
    if u.connect_timeout >= u.request_timeout {
        return Err(ConfigError::new(
            "upstream.connect_timeout_ms",
            format!(
                "is {}; it must be shorter than upstream.request_timeout_ms ({})",
                ms(u.connect_timeout),
                ms(u.request_timeout)
            ),
        ));
    }
    // A lock that expires while its owner still waits for gettoken lets the other
    // replicas fetch too: it must outlast one request.
    if let Some(redis) = &s.redis
        && redis.lock_ttl <= u.request_timeout
    {
        return Err(ConfigError::new(
            "redis.lock_ttl_ms",
            format!(
                "is {}; it must be longer than upstream.request_timeout_ms ({})",
                ms(redis.lock_ttl),
                ms(u.request_timeout)
            ),
        ));
    }
    Ok(())
}

/// The knobs of suites, the apps file and the callback endpoint.
fn provider_bounds(s: &Settings) -> Result<(), ConfigError> {
    let ms = |d: Duration| u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
    let as_u64 = |n: usize| u64::try_from(n).unwrap_or(u64::MAX);
    let c = &s.callback;
    // (key, value, least, most); a file checked more often than every 100 ms
    // costs reads for nothing, as with the TLS files and the callers file.
    let mut knobs = vec![
        (
            "callback.max_clock_skew_secs".to_owned(),
            c.max_clock_skew.as_secs(),
            1,
            3_600,
        ),
        (
            "callback.max_body_bytes".to_owned(),
            as_u64(c.max_body_bytes),
            1 << 10,
            1 << 20,
        ),
        // Fewer would forget a callback WeCom may still repeat within the window.
        (
            "callback.max_remembered".to_owned(),
            as_u64(c.max_remembered),
            1_000,
            10_000_000,
        ),
    ];
    for (name, suite) in &s.suites {
        knobs.push((
            format!("suites.{name}.reload_interval_ms"),
            ms(suite.reload_interval),
            100,
            MAX_MS,
        ));
    }
    if let Some(file) = &s.apps_file {
        knobs.push((
            "apps_reload_interval_ms".to_owned(),
            ms(file.reload_interval),
            100,
            MAX_MS,
        ));
    }
    for (key, value, least, most) in knobs {
        if !(least..=most).contains(&value) {
            return Err(ConfigError::new(
                key,
                format!("is {value}; it must be between {least} and {most}"),
            ));
        }
    }
    Ok(())
}
