//! One HTTP exchange with WeCom, bounded in time and in body size, read by
//! [`super::api`]; and the one place every request is traced and counted.

use std::{
    fmt,
    future::Future,
    pin::Pin,
    sync::Arc,
    task::Poll,
    time::{Duration, Instant},
};

use bytes::Bytes;
use http::{
    Method, Request, Uri,
    header::{AUTHORIZATION, CONTENT_TYPE, HeaderValue, USER_AGENT},
};
use http_body_util::{BodyExt, Full, LengthLimitError, Limited};
use hyper::body::{Body as _, Incoming};
use hyper_rustls::{HttpsConnector, HttpsConnectorBuilder};
use hyper_util::{
    client::{
        legacy::{
            Client,
            connect::{HttpConnector, proxy::Tunnel},
        },
        proxy::matcher::Matcher,
    },
    rt::{TokioExecutor, TokioIo, TokioTimer},
};
use percent_encoding::percent_decode_str;
use rustls::{ClientConfig, RootCertStore};
use serde::de::DeserializeOwned;
use tokio::net::TcpStream;
use tracing::{Instrument, field::Empty};
use url::Url;

use super::{Endpoint, Error, TransportKind, api, errcode};
use crate::telemetry::{
    Metrics,
    metrics::{Errcode, WeComRequest},
    redacted, traces,
};

/// How the gateway's HTTP client talks to WeCom.
#[derive(Debug, Clone)]
pub struct HttpSettings {
    /// TCP + TLS connect timeout.
    pub connect_timeout: Duration,
    /// One request, from taking a connection (a new one included) to the last body byte.
    pub request_timeout: Duration,
    /// Largest response body read; a larger one fails the call.
    pub max_body_bytes: usize,
    /// Most idle connections kept per WeCom host; a burst's extra ones close.
    pub max_idle_connections: usize,
    /// An idle connection is closed after this long.
    pub idle_timeout: Duration,
}

/// The HTTP client all apps share: one connection pool, HTTP/1.1 or HTTP/2 as
/// WeCom's TLS handshake offers (ALPN), through a proxy when the environment names one.
///
/// hyper-util's pooled client, not reqwest: reqwest wraps this same client in
/// layers (redirects, retries, its own URL type) that cost a third of the
/// gateway's CPU per call and that the gateway does not use.
pub(crate) type HttpClient = Client<ConnectWithin<HttpsConnector<Egress>>, Full<Bytes>>;

/// How often an HTTP/2 connection to WeCom is pinged, and how long an answer may take.
const H2_PING_INTERVAL: Duration = Duration::from_secs(30);
const H2_PING_TIMEOUT: Duration = Duration::from_secs(10);

/// Why the HTTP client for WeCom cannot be built.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The TLS set-up failed.
    #[error("TLS set-up")]
    Tls(#[from] rustls::Error),
    /// A proxy variable names a proxy of a kind the gateway cannot use.
    #[error(
        "{variable} names a {scheme}:// proxy; only http:// proxies are supported \
         (the gateway tunnels to WeCom through them with CONNECT)"
    )]
    ProxyScheme {
        /// The environment variable.
        variable: &'static str,
        /// The proxy URL's scheme (the URL itself may hold a password).
        scheme: String,
    },
    /// A proxy variable's value is not a URL (an unencoded `#`, `/`, `?` or `@`
    /// in its password, say).
    #[error(
        "{variable} is not a proxy URL the gateway can read (percent-encode any \
         reserved character in its user or password)"
    )]
    ProxyUnreadable {
        /// The environment variable.
        variable: &'static str,
    },
}

/// The proxies the environment names, read as curl reads them (each variable's
/// upper-case name first, then its lower-case one; `ALL_PROXY` where the scheme's
/// own is unset; `NO_PROXY`), each checked: a value the gateway cannot use stops
/// it, rather than send WeCom's traffic direct from an IP WeCom does not trust.
/// The matcher is built from the values checked, so what is used is what passed.
fn proxies_from(var: impl Fn(&str) -> Option<String>) -> Result<Matcher, ClientError> {
    let pick = |upper: &'static str, lower: &'static str| {
        let found = var(upper)
            .map(|v| (upper, v))
            .or_else(|| var(lower).map(|v| (lower, v)));
        match found {
            Some((variable, value)) if !value.trim().is_empty() => {
                check_proxy(variable, value.trim())?;
                Ok(Some(value.trim().to_owned()))
            }
            _ => Ok::<_, ClientError>(None),
        }
    };
    let mut proxies = Matcher::builder();
    if let Some(all) = pick("ALL_PROXY", "all_proxy")? {
        proxies = proxies.all(all);
    }
    if let Some(http) = pick("HTTP_PROXY", "http_proxy")? {
        proxies = proxies.http(http);
    }
    if let Some(https) = pick("HTTPS_PROXY", "https_proxy")? {
        proxies = proxies.https(https);
    }
    if let Some(no) = var("NO_PROXY").or_else(|| var("no_proxy")) {
        proxies = proxies.no(no);
    }
    Ok(proxies.build())
}

/// A proxy URL must parse and name an `http://` proxy (or be a bare `host:port`,
/// which means one). The refusal names the variable, and the scheme only once it
/// has parsed as one: never the value, which may hold a password.
fn check_proxy(variable: &'static str, value: &str) -> Result<(), ClientError> {
    let unreadable = || ClientError::ProxyUnreadable { variable };
    let uri: Uri = value.parse().map_err(|_| unreadable())?;
    if let Some(scheme) = uri.scheme_str()
        && !scheme.eq_ignore_ascii_case("http")
    {
        return Err(ClientError::ProxyScheme {
            variable,
            scheme: scheme.to_ascii_lowercase(),
        });
    }
    // `http::Uri` drops a fragment and takes any port text: a `#` in a password
    // would leave a proxy named by the start of the user info.
    let authority = uri.authority().ok_or_else(unreadable)?;
    let port = authority.port().map(|port| port.as_str().parse::<u16>());
    if value.contains('#') || authority.host().is_empty() || port.is_some_and(|p| p.is_err()) {
        return Err(unreadable());
    }
    Ok(())
}

/// An HTTP client bound to one app's WeCom API base.
#[derive(Clone)]
pub(crate) struct Transport {
    http: HttpClient,
    /// `scheme://host[:port][/path]` of the API base, without a trailing slash or
    /// the userinfo: each request's URL is this, the endpoint's path and the query.
    prefix: Arc<str>,
    /// `Basic …` from the API base's userinfo (a reverse proxy's password), if any.
    authorization: Option<HeaderValue>,
    /// Where WeCom is, as configured; its password is never shown.
    base: Url,
    request_timeout: Duration,
    max_body_bytes: usize,
    /// The app the requests are made for, as metrics label them.
    app: Arc<str>,
    metrics: Metrics,
}

impl fmt::Debug for Transport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Transport")
            .field("app", &self.app)
            .field("base", &redacted(&self.base).as_str())
            .field("max_body_bytes", &self.max_body_bytes)
            .finish_non_exhaustive()
    }
}

/// A request to send: the query may carry secrets and is never logged.
pub(crate) struct Call<'a> {
    pub(crate) endpoint: Endpoint,
    pub(crate) query: &'a [(&'a str, &'a str)],
    /// JSON body for a POST; `None` for a GET.
    pub(crate) body: Option<&'a [u8]>,
    /// 1 for the first attempt, then counting retries (of any cause).
    pub(crate) attempt: u32,
}

/// What came back. WeCom answers every call with HTTP 200; another status comes
/// from a proxy or a broken front end, and its page is not read.
pub(super) struct Reply {
    pub(crate) status: u16,
    /// The body of a 200 answer; empty otherwise.
    pub(crate) body: Bytes,
}

const AGENT: HeaderValue =
    HeaderValue::from_static(concat!("wecom-kf-upgrade/", env!("CARGO_PKG_VERSION")));
const JSON: HeaderValue = HeaderValue::from_static("application/json");

impl Transport {
    /// Builds the shared HTTP client: rustls with Mozilla's roots, HTTP/2 when
    /// offered, the proxies the environment names, bounded connect time and idle
    /// pool. Redirects are never followed (hyper does not): following one would
    /// send the token elsewhere.
    pub(crate) fn client(settings: &HttpSettings) -> Result<HttpClient, ClientError> {
        let tls =
            ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
                .with_safe_default_protocol_versions()?
                .with_root_certificates(RootCertStore {
                    roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
                })
                .with_no_client_auth();
        let proxies = proxies_from(|name| std::env::var(name).ok())?;
        Ok(Self::client_with(settings, tls, proxies))
    }

    /// The shared client with a TLS configuration and proxies of the caller's
    /// (tests: their own CA, their own proxy).
    pub(crate) fn client_with(
        settings: &HttpSettings,
        tls: ClientConfig,
        proxies: Matcher,
    ) -> HttpClient {
        let mut tcp = HttpConnector::new();
        tcp.enforce_http(false);
        tcp.set_nodelay(true);
        let connector = HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_or_http()
            .enable_all_versions()
            .wrap_connector(Egress::new(tcp, proxies));
        Client::builder(TokioExecutor::new())
            .timer(TokioTimer::new())
            .pool_timer(TokioTimer::new())
            .pool_max_idle_per_host(settings.max_idle_connections)
            .pool_idle_timeout(settings.idle_timeout)
            // An HTTP/2 connection is shared by every call: a dead one (a NAT or a
            // firewall dropped it) must be found by a ping, not by timed-out calls.
            .http2_keep_alive_interval(H2_PING_INTERVAL)
            .http2_keep_alive_timeout(H2_PING_TIMEOUT)
            .http2_keep_alive_while_idle(true)
            .build(ConnectWithin {
                inner: connector,
                limit: settings.connect_timeout,
            })
    }

    pub(crate) fn new(
        http: HttpClient,
        base: &Url,
        settings: &HttpSettings,
        app: Arc<str>,
        metrics: Metrics,
    ) -> Self {
        let mut prefix = base.clone();
        let _ = prefix.set_username("");
        let _ = prefix.set_password(None);
        prefix.set_query(None);
        prefix.set_fragment(None);
        let authorization = (!base.username().is_empty() || base.password().is_some())
            .then(|| basic_auth(base))
            .flatten();
        Self {
            http,
            prefix: prefix.as_str().trim_end_matches('/').into(),
            authorization,
            base: base.clone(),
            request_timeout: settings.request_timeout,
            max_body_bytes: settings.max_body_bytes,
            app,
            metrics,
        }
    }

    /// Sends the call and reads WeCom's answer, in a span of its own (an OpenTelemetry
    /// client span: method, path without the query, HTTP status, attempt, errcode),
    /// and counts it.
    pub(crate) async fn request<T: DeserializeOwned>(&self, call: Call<'_>) -> Result<T, Error> {
        let (endpoint, attempt) = (call.endpoint, call.attempt);
        let method = if call.body.is_some() { "POST" } else { "GET" };
        let span = tracing::debug_span!(
            "wecom.http",
            otel.name = endpoint.span_name(),
            otel.kind = "client",
            otel.status_code = Empty,
            http.request.method = method,
            url.path = endpoint.path(),
            http.response.status_code = Empty,
            wecom.attempt = attempt,
            wecom.errcode = Empty,
        );
        let started = Instant::now();
        let answer = async {
            let reply = self.send(call).await?;
            span.record("http.response.status_code", reply.status);
            api::decode(endpoint, reply)
        }
        .instrument(span.clone())
        .await;
        let errcode = match &answer {
            Ok(_) => Some(0),
            Err(error) => error.errcode(),
        };
        if let Some(errcode) = errcode {
            span.record("wecom.errcode", errcode);
        }
        if answer.is_err() {
            span.record("otel.status_code", "error");
        }
        self.metrics.wecom_request(WeComRequest {
            endpoint: endpoint.path(),
            app: &self.app,
            attempt,
            outcome: outcome(&answer),
            errcode: match errcode {
                None => Errcode::None,
                Some(code) if errcode::is_known(code) => Errcode::Known(code),
                Some(_) => Errcode::Other,
            },
            elapsed: started.elapsed(),
            trace: traces::span_trace(&span)
                .filter(|trace| trace.exported)
                .map(|trace| trace.id),
        });
        answer
    }

    /// Sends the call within the request timeout; the reply's body is read only for a 200.
    async fn send(&self, call: Call<'_>) -> Result<Reply, Error> {
        let endpoint = call.endpoint;
        let request = self
            .http_request(&call)
            .map_err(|e| Error::transport(endpoint, TransportKind::Other, e))?;
        let exchange = async {
            let response = self
                .http
                .request(request)
                .await
                .map_err(|e| Error::transport(endpoint, kind_of(&e), e))?;
            let status = response.status().as_u16();
            let body = if status == 200 {
                self.read_bounded(endpoint, response.into_body()).await?
            } else {
                Bytes::new()
            };
            Ok(Reply { status, body })
        };
        tokio::time::timeout(self.request_timeout, exchange)
            .await
            .unwrap_or_else(|_| {
                Err(Error::transport(
                    endpoint,
                    TransportKind::Timeout,
                    TimedOut(self.request_timeout),
                ))
            })
    }

    /// The request: the URL built from the prefix (no URL parsed but the result),
    /// the query form-encoded, the headers WeCom needs.
    fn http_request(&self, call: &Call<'_>) -> Result<Request<Full<Bytes>>, http::Error> {
        let path = call.endpoint.path();
        let mut url = String::with_capacity(self.prefix.len() + path.len() + 96);
        url.push_str(&self.prefix);
        url.push_str(path);
        if !call.query.is_empty() {
            url.push('?');
            let start = url.len();
            url::form_urlencoded::Serializer::for_suffix(&mut url, start)
                .extend_pairs(call.query)
                .finish();
        }
        let mut request = Request::builder().uri(url).header(USER_AGENT, AGENT);
        if let Some(authorization) = &self.authorization {
            request = request.header(AUTHORIZATION, authorization.clone());
        }
        match call.body {
            Some(body) => request
                .method(Method::POST)
                .header(CONTENT_TYPE, JSON)
                .body(Full::new(Bytes::copy_from_slice(body))),
            None => request.method(Method::GET).body(Full::default()),
        }
    }

    /// Reads the body, refusing more than `max_body_bytes` without buffering them.
    async fn read_bounded(&self, endpoint: Endpoint, body: Incoming) -> Result<Bytes, Error> {
        let limit = self.max_body_bytes;
        let too_large = || Error::BodyTooLarge { endpoint, limit };
        if body.size_hint().lower() > limit as u64 {
            return Err(too_large());
        }
        match Limited::new(body, limit).collect().await {
            Ok(collected) => Ok(collected.to_bytes()),
            Err(error) if error.is::<LengthLimitError>() => Err(too_large()),
            Err(error) => Err(Error::transport(
                endpoint,
                TransportKind::Other,
                BodyError(error),
            )),
        }
    }
}

/// How the connection to WeCom is made: directly, or through the HTTP proxy that
/// `HTTPS_PROXY` / `HTTP_PROXY` / `ALL_PROXY` name (a `CONNECT` tunnel, the proxy's
/// userinfo sent as its credentials), but for hosts `NO_PROXY` lists, as curl reads them.
#[derive(Clone)]
pub(crate) struct Egress {
    tcp: HttpConnector,
    proxies: Arc<Matcher>,
}

impl Egress {
    fn new(tcp: HttpConnector, proxies: Matcher) -> Self {
        Self {
            tcp,
            proxies: Arc::new(proxies),
        }
    }
}

type Connecting =
    Pin<Box<dyn Future<Output = Result<TokioIo<TcpStream>, BoxError>> + Send + 'static>>;

impl tower_service::Service<Uri> for Egress {
    type Response = TokioIo<TcpStream>;
    type Error = BoxError;
    type Future = Connecting;

    fn poll_ready(&mut self, _: &mut std::task::Context<'_>) -> Poll<Result<(), BoxError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, target: Uri) -> Connecting {
        match self.proxies.intercept(&target) {
            Some(proxy) => {
                let mut tunnel = Tunnel::new(proxy.uri().clone(), self.tcp.clone());
                if let Some(credentials) = proxy.basic_auth() {
                    tunnel = tunnel.with_auth(credentials.clone());
                }
                // The tunnel assumes port 443 when the target names none.
                let target = with_port(target);
                Box::pin(async move { Ok(tunnel.call(target?).await?) })
            }
            None => {
                let connecting = self.tcp.call(target);
                Box::pin(async move { Ok(connecting.await?) })
            }
        }
    }
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// `target` with its port written out (80 for `http`, 443 for `https`).
fn with_port(target: Uri) -> Result<Uri, BoxError> {
    if target.port().is_some() {
        return Ok(target);
    }
    let port = if target.scheme() == Some(&http::uri::Scheme::HTTP) {
        80
    } else {
        443
    };
    let host = target.host().ok_or("no host to connect to")?;
    let scheme = target.scheme_str().unwrap_or("https");
    Ok(Uri::try_from(format!("{scheme}://{host}:{port}/"))?)
}

/// A connector whose whole connect (DNS, TCP, a proxy's CONNECT, TLS) must finish
/// within `limit`; past it the connect fails, and the request was not sent.
#[derive(Clone)]
pub(crate) struct ConnectWithin<C> {
    inner: C,
    limit: Duration,
}

impl<C> tower_service::Service<Uri> for ConnectWithin<C>
where
    C: tower_service::Service<Uri>,
    C::Future: Send + 'static,
    C::Error: Into<BoxError>,
{
    type Response = C::Response;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<C::Response, BoxError>> + Send + 'static>>;

    fn poll_ready(&mut self, cx: &mut std::task::Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, target: Uri) -> Self::Future {
        let (connecting, limit) = (self.inner.call(target), self.limit);
        Box::pin(async move {
            match tokio::time::timeout(limit, connecting).await {
                Ok(connected) => connected.map_err(Into::into),
                Err(_) => Err(format!("no connection within {limit:?}").into()),
            }
        })
    }
}

/// `Basic base64(user:password)` from a URL's userinfo, percent-decoded; sensitive,
/// so HTTP/2's header compression never indexes it.
fn basic_auth(url: &Url) -> Option<HeaderValue> {
    use base64::Engine as _;
    let decode = |s: &str| percent_decode_str(s).decode_utf8_lossy().into_owned();
    let credentials = format!(
        "{}:{}",
        decode(url.username()),
        decode(url.password().unwrap_or_default())
    );
    let encoded = base64::engine::general_purpose::STANDARD.encode(credentials);
    let mut value = HeaderValue::from_str(&format!("Basic {encoded}")).ok()?;
    value.set_sensitive(true);
    Some(value)
}

/// Errors before the request was sent (no connection, or hyper handing the request
/// back unsent because its connection closed first) apart from the rest.
fn kind_of(error: &hyper_util::client::legacy::Error) -> TransportKind {
    let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(error);
    let mut unsent = error.is_connect();
    while let Some(error) = cause {
        unsent |= error
            .downcast_ref::<hyper::Error>()
            .is_some_and(hyper::Error::is_canceled);
        cause = error.source();
    }
    if unsent {
        TransportKind::Connect
    } else {
        TransportKind::Other
    }
}

/// The request timeout ran out.
#[derive(Debug, thiserror::Error)]
#[error("no complete answer within {0:?}")]
struct TimedOut(Duration);

/// The answer's body broke off.
#[derive(Debug, thiserror::Error)]
#[error("reading the body failed")]
struct BodyError(#[source] BoxError);

/// How a request ended, as the `outcome` label of `wecom_requests_total` says it.
fn outcome<T>(answer: &Result<T, Error>) -> &'static str {
    match answer {
        Ok(_) => "ok",
        Err(Error::Api { .. }) => "errcode",
        Err(Error::HttpStatus { status, .. }) => match status {
            400..=499 => "http_4xx",
            500..=599 => "http_5xx",
            _ => "http_other",
        },
        Err(Error::Transport { kind, .. }) => match kind {
            TransportKind::Timeout => "timeout",
            TransportKind::Connect => "connect_error",
            TransportKind::Other => "transport_error",
            TransportKind::OutOfResources => "out_of_resources",
        },
        Err(Error::MalformedBody { .. }) => "malformed_body",
        Err(Error::BodyTooLarge { .. }) => "body_too_large",
        // The gateway's own limits refuse before any request: never recorded here.
        Err(Error::RateLimited { .. } | Error::NoTurn { .. } | Error::NoToken { .. }) => "not_sent",
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
    use tokio::net::TcpListener;
    use tokio_rustls::TlsAcceptor;

    use super::*;

    /// A WeCom front end over TLS that offers `alpn`, answers every request with
    /// errcode 0, and counts the connections it accepted and the HTTP/2 requests
    /// it answered (with the query each carried).
    struct TlsFront {
        base: Url,
        ca: CertificateDer<'static>,
        connections: Arc<AtomicUsize>,
        requests: Arc<std::sync::Mutex<Vec<String>>>,
    }

    impl TlsFront {
        async fn start(alpn: &[&[u8]]) -> Self {
            let issued = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
            let ca = issued.cert.der().clone();
            let key = PrivatePkcs8KeyDer::from(issued.signing_key.serialize_der());
            let mut tls = rustls::ServerConfig::builder_with_provider(Arc::new(
                rustls::crypto::ring::default_provider(),
            ))
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(vec![ca.clone()], PrivateKeyDer::Pkcs8(key))
            .unwrap();
            tls.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
            let acceptor = TlsAcceptor::from(Arc::new(tls));
            let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
            let port = listener.local_addr().unwrap().port();
            let connections = Arc::new(AtomicUsize::new(0));
            let requests = Arc::new(std::sync::Mutex::new(Vec::new()));
            let (accepted, seen) = (Arc::clone(&connections), Arc::clone(&requests));
            tokio::spawn(async move {
                while let Ok((tcp, _)) = listener.accept().await {
                    accepted.fetch_add(1, Ordering::SeqCst);
                    let (acceptor, seen) = (acceptor.clone(), Arc::clone(&seen));
                    tokio::spawn(async move {
                        let Ok(tls) = acceptor.accept(tcp).await else {
                            return;
                        };
                        if tls.get_ref().1.alpn_protocol() != Some(b"h2") {
                            return answer_one_http1(tls, &seen).await;
                        }
                        let Ok(mut h2) = h2::server::handshake(tls).await else {
                            return;
                        };
                        while let Some(Ok((request, mut respond))) = h2.accept().await {
                            let query = request.uri().query().unwrap_or_default();
                            seen.lock().unwrap().push(format!("HTTP/2 {query}"));
                            let response = http::Response::builder().status(200).body(()).unwrap();
                            let mut body = respond.send_response(response, false).unwrap();
                            let answer = Bytes::from_static(br#"{"errcode":0,"errmsg":"ok"}"#);
                            let _ = body.send_data(answer, true);
                        }
                    });
                }
            });
            Self {
                base: Url::parse(&format!("https://localhost:{port}")).unwrap(),
                ca,
                connections,
                requests,
            }
        }

        fn transport(&self) -> Transport {
            self.transport_via(Matcher::builder().build())
        }

        fn transport_via(&self, proxies: Matcher) -> Transport {
            let mut roots = RootCertStore::empty();
            roots.add(self.ca.clone()).unwrap();
            transport(&self.base, roots, proxies)
        }
    }

    /// Reads one HTTP/1.1 request (head and a `content-length` body) and answers it.
    async fn answer_one_http1(
        mut tls: impl tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
        seen: &std::sync::Mutex<Vec<String>>,
    ) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut read = Vec::new();
        let mut chunk = [0; 4096];
        let head_end = loop {
            match tls.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => read.extend_from_slice(&chunk[..n]),
            }
            if let Some(at) = read.windows(4).position(|w| w == b"\r\n\r\n") {
                break at + 4;
            }
        };
        let head = String::from_utf8_lossy(&read[..head_end]).to_lowercase();
        let length: usize = head
            .lines()
            .find_map(|line| line.strip_prefix("content-length:"))
            .and_then(|n| n.trim().parse().ok())
            .unwrap_or(0);
        while read.len() < head_end + length {
            match tls.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => read.extend_from_slice(&chunk[..n]),
            }
        }
        let request_line = head.lines().next().unwrap_or_default().to_owned();
        seen.lock().unwrap().push(request_line);
        let body = r#"{"errcode":0,"errmsg":"ok"}"#;
        let answer = format!(
            "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
            body.len()
        );
        let _ = tls.write_all(answer.as_bytes()).await;
        let _ = tls.shutdown().await;
    }

    async fn upgrade(transport: &Transport) -> Result<serde::de::IgnoredAny, Error> {
        transport
            .request(Call {
                endpoint: Endpoint::UpgradeService,
                query: &[("access_token", "TOKEN with space&=")],
                body: Some(b"{}"),
                attempt: 1,
            })
            .await
    }

    #[tokio::test]
    async fn http2_is_used_when_wecom_offers_it_and_calls_share_one_connection() {
        let front = TlsFront::start(&[b"h2", b"http/1.1"]).await;
        let transport = front.transport();
        // Until a first handshake has said HTTP/2, concurrent calls would each open
        // a connection of their own (the pool cannot know they could share one).
        upgrade(&transport).await.unwrap();
        let calls: Vec<_> = (0..50)
            .map(|_| {
                let transport = transport.clone();
                tokio::spawn(async move { upgrade(&transport).await })
            })
            .collect();
        for call in calls {
            call.await.unwrap().unwrap();
        }
        assert_eq!(front.requests.lock().unwrap().len(), 51);
        assert_eq!(front.connections.load(Ordering::SeqCst), 1);
        // The query is form-encoded into the URL built from the prefix.
        assert_eq!(
            front.requests.lock().unwrap()[0],
            "HTTP/2 access_token=TOKEN+with+space%26%3D"
        );
    }

    #[tokio::test]
    async fn http1_is_used_when_wecom_offers_only_http1() {
        let front = TlsFront::start(&[b"http/1.1"]).await;
        upgrade(&front.transport()).await.unwrap();
        assert_eq!(
            *front.requests.lock().unwrap(),
            [
                "post /cgi-bin/kf/customer/upgrade_service?access_token=token+with+space%26%3d http/1.1"
            ]
        );
    }

    fn settings() -> HttpSettings {
        HttpSettings {
            connect_timeout: Duration::from_secs(2),
            request_timeout: Duration::from_secs(5),
            max_body_bytes: 1 << 16,
            max_idle_connections: 64,
            idle_timeout: Duration::from_secs(20),
        }
    }

    fn transport(base: &Url, roots: RootCertStore, proxies: Matcher) -> Transport {
        let tls =
            ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
                .with_safe_default_protocol_versions()
                .unwrap()
                .with_root_certificates(roots)
                .with_no_client_auth();
        let http = Transport::client_with(&settings(), tls, proxies);
        Transport::new(http, base, &settings(), "test".into(), Metrics::new())
    }

    /// A proxy that answers one `CONNECT` (keeping its head) and tunnels it to `to`,
    /// whatever host it names.
    async fn tunnel_proxy(
        to: std::net::SocketAddr,
    ) -> (std::net::SocketAddr, Arc<std::sync::Mutex<String>>) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let proxy = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = proxy.local_addr().unwrap();
        let head = Arc::new(std::sync::Mutex::new(String::new()));
        let asked = Arc::clone(&head);
        tokio::spawn(async move {
            let (mut client, _) = proxy.accept().await.unwrap();
            let mut read = Vec::new();
            while !read.ends_with(b"\r\n\r\n") {
                let mut byte = [0];
                client.read_exact(&mut byte).await.unwrap();
                read.push(byte[0]);
            }
            *asked.lock().unwrap() = String::from_utf8_lossy(&read).into_owned();
            let mut upstream = tokio::net::TcpStream::connect(to).await.unwrap();
            client
                .write_all(b"HTTP/1.1 200 Connection established\r\n\r\n")
                .await
                .unwrap();
            let _ = tokio::io::copy_bidirectional(&mut client, &mut upstream).await;
        });
        (addr, head)
    }

    #[tokio::test]
    async fn an_http_base_without_a_port_is_tunnelled_to_port_80_with_the_proxy_credentials() {
        let wecom = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let wecom_addr = wecom.local_addr().unwrap();
        let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
        let answered = Arc::clone(&seen);
        tokio::spawn(async move {
            let (tcp, _) = wecom.accept().await.unwrap();
            answer_one_http1(tcp, &answered).await;
        });
        let (proxy, connect) = tunnel_proxy(wecom_addr).await;
        let proxies = Matcher::builder()
            .http(format!("http://user:pw@{proxy}"))
            .build();
        // The host is resolved by the proxy, not here.
        let base = Url::parse("http://wecom.invalid").unwrap();
        upgrade(&transport(&base, RootCertStore::empty(), proxies))
            .await
            .unwrap();

        let connect = connect.lock().unwrap().clone();
        assert!(
            connect.starts_with("CONNECT wecom.invalid:80 HTTP/1.1\r\n"),
            "{connect}"
        );
        // base64("user:pw")
        assert!(
            connect.contains("Proxy-Authorization: Basic dXNlcjpwdw==\r\n"),
            "{connect}"
        );
        assert_eq!(seen.lock().unwrap().len(), 1);
    }

    #[tokio::test]
    async fn an_https_base_is_tunnelled_and_tls_runs_inside_the_tunnel() {
        let front = TlsFront::start(&[b"h2", b"http/1.1"]).await;
        let port = front.base.port().unwrap();
        let (proxy, connect) = tunnel_proxy(([127, 0, 0, 1], port).into()).await;
        let proxies = Matcher::builder().https(format!("http://{proxy}")).build();
        upgrade(&front.transport_via(proxies)).await.unwrap();
        let connect = connect.lock().unwrap().clone();
        assert!(
            connect.starts_with(&format!("CONNECT localhost:{port} HTTP/1.1\r\n")),
            "{connect}"
        );
        assert_eq!(front.requests.lock().unwrap().len(), 1);
    }

    #[tokio::test]
    async fn a_connect_that_stalls_in_the_tls_handshake_fails_as_unsent_within_the_connect_timeout()
    {
        // Accepts TCP, never answers the TLS ClientHello.
        let silent = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = silent.local_addr().unwrap().port();
        tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((tcp, _)) = silent.accept().await {
                held.push(tcp);
            }
        });
        let base = Url::parse(&format!("https://localhost:{port}")).unwrap();
        let started = Instant::now();
        let error = upgrade(&transport(
            &base,
            RootCertStore::empty(),
            Matcher::builder().build(),
        ))
        .await
        .unwrap_err();
        assert!(
            matches!(
                error,
                Error::Transport {
                    kind: TransportKind::Connect,
                    ..
                }
            ),
            "{error:?}"
        );
        assert!(!error.may_have_been_applied());
        // The connect timeout (2 s), not the request timeout (5 s).
        assert!(
            started.elapsed() < Duration::from_secs(4),
            "{:?}",
            started.elapsed()
        );
    }

    #[test]
    fn only_readable_http_proxies_are_used_and_a_refusal_shows_no_password() {
        let vars = |pairs: &'static [(&'static str, &'static str)]| {
            move |name: &str| {
                let found = pairs.iter().find(|(n, _)| *n == name);
                found.map(|(_, v)| (*v).to_owned())
            }
        };
        let wecom: Uri = "https://qyapi.weixin.qq.com/cgi-bin/gettoken"
            .parse()
            .unwrap();
        let proxy_of = |matcher: Matcher| matcher.intercept(&wecom).map(|i| i.uri().to_string());
        for (pairs, proxy) in [
            (
                &[("HTTPS_PROXY", "http://u:p@proxy:3128")][..],
                Some("http://proxy:3128/"),
            ),
            (
                &[("https_proxy", " proxy:3128 ")][..],
                Some("http://proxy:3128/"),
            ),
            // The upper-case name wins, as curl has it.
            (
                &[
                    ("HTTPS_PROXY", "http://upper:1"),
                    ("https_proxy", "http://lower:2"),
                ][..],
                Some("http://upper:1/"),
            ),
            (&[("ALL_PROXY", "http://all:3")][..], Some("http://all:3/")),
            (
                &[
                    ("HTTPS_PROXY", "http://p:1"),
                    ("NO_PROXY", ".weixin.qq.com"),
                ][..],
                None,
            ),
            (&[][..], None),
        ] {
            let matcher = proxies_from(vars(pairs)).unwrap();
            assert_eq!(proxy_of(matcher).as_deref(), proxy, "{pairs:?}");
        }
        for (value, message) in [
            (
                "https://u:SECRET@proxy",
                "HTTPS_PROXY names a https:// proxy",
            ),
            (
                "socks5h://u:SECRET@proxy:1080",
                "HTTPS_PROXY names a socks5h:// proxy",
            ),
            (
                "http://u:SE#CRET@proxy:3128",
                "HTTPS_PROXY is not a proxy URL",
            ),
            ("u:SE://CRET@p:3128", "HTTPS_PROXY is not a proxy URL"),
        ] {
            let pairs: &'static [(&'static str, &'static str)] =
                Box::leak(vec![("HTTPS_PROXY", value)].into_boxed_slice());
            let error = proxies_from(vars(pairs)).unwrap_err().to_string();
            assert!(error.contains(message), "{value}: {error}");
            assert!(
                !error.contains("SECRET") && !error.contains("CRET"),
                "{error}"
            );
        }
    }

    #[test]
    fn a_base_with_userinfo_sends_it_as_basic_authorization_never_in_the_url() {
        let base = Url::parse("https://proxy%20user:pa%3Ass@proxy.example/wecom/").unwrap();
        let transport = transport(&base, RootCertStore::empty(), Matcher::builder().build());
        let call = Call {
            endpoint: Endpoint::GetToken,
            query: &[("corpid", "ww1"), ("corpsecret", "S")],
            body: None,
            attempt: 1,
        };
        let request = transport.http_request(&call).unwrap();
        assert_eq!(
            request.uri().to_string(),
            "https://proxy.example/wecom/cgi-bin/gettoken?corpid=ww1&corpsecret=S"
        );
        let authorization = &request.headers()[AUTHORIZATION];
        // base64("proxy user:pa:ss")
        assert_eq!(authorization, "Basic cHJveHkgdXNlcjpwYTpzcw==");
        assert!(authorization.is_sensitive());
        assert!(!format!("{transport:?}").contains("pa%3Ass"));
    }
}
