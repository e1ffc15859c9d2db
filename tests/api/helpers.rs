//! `spawn_app()`: the real gateway on port 0, a real generated tonic client, and
//! an upstream (the sandbox, or a scripted fake) it talks to.

use std::{
    collections::BTreeMap,
    io::Write,
    net::SocketAddr,
    path::{Path, PathBuf},
    sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpListener,
    sync::oneshot,
    task::JoinHandle,
};
use tonic::{Code, Status, transport::Channel};
use tonic_types::StatusExt;
use tracing_subscriber::{EnvFilter, fmt::MakeWriter};
use wecom_kf_upgrade::{
    config::Settings,
    grpc::pb::{self, customer_upgrade_service_client::CustomerUpgradeServiceClient},
    sandbox::{DEMO_CORP_ID, DEMO_SECRET, Fault, Sandbox, SandboxConfig, SandboxHandle},
    startup::Application,
    telemetry::{self, LogFormat, Traces},
    wecom::Endpoint,
};

pub type Client = CustomerUpgradeServiceClient<Channel>;

/// A running gateway and what it talks to.
pub struct TestApp {
    pub client: Client,
    pub grpc_addr: SocketAddr,
    pub admin_addr: SocketAddr,
    pub sandbox: Arc<Sandbox>,
    _sandbox: SandboxHandle,
    stop: Option<oneshot::Sender<()>>,
    pub server: JoinHandle<()>,
}

/// Settings for a test: fast retries, short drains, everything on loopback.
pub fn test_settings(api_base: &str, corp_id: &str, secret: &str) -> Settings {
    let env = BTreeMap::from([
        ("WECOM_CORP_ID".to_owned(), corp_id.to_owned()),
        ("WECOM_CORP_SECRET".to_owned(), secret.to_owned()),
        ("WECOM_API_BASE".to_owned(), api_base.to_owned()),
    ]);
    let settings = Settings::load(None, &env).expect("test settings are valid");
    for_tests(settings)
}

/// Settings from a configuration file's text and environment variables, with the
/// test adjustments of [`test_settings`].
pub fn settings_from(config: &str, vars: &[(&str, &str)]) -> Settings {
    let dir = TempDir::new("config");
    let path = dir.write("config.toml", config);
    let env: BTreeMap<String, String> = vars
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let settings = Settings::load(Some(&path), &env).expect("test settings are valid");
    for_tests(settings)
}

fn for_tests(mut settings: Settings) -> Settings {
    settings.listen = "127.0.0.1:0".parse().unwrap();
    settings.admin_listen = "127.0.0.1:0".parse().unwrap();
    settings.upstream.retry_backoff = Duration::from_millis(5);
    settings.upstream.request_timeout = Duration::from_millis(2_000);
    settings.upstream.call_timeout = Duration::from_millis(5_000);
    settings.server.drain_delay = Duration::from_millis(0);
    settings.server.shutdown_grace = Duration::from_millis(2_000);
    settings
}

/// The gateway against a fresh sandbox with the seed's configuration.
pub async fn spawn_app() -> TestApp {
    spawn_app_with(|_| {}).await
}

/// The gateway against a fresh sandbox, with settings adjusted by `adjust`.
pub async fn spawn_app_with(adjust: impl FnOnce(&mut Settings)) -> TestApp {
    spawn_app_configured(
        |sandbox| test_settings(sandbox, DEMO_CORP_ID, DEMO_SECRET),
        adjust,
    )
    .await
}

/// The gateway against a fresh sandbox, with the settings `configure` makes for the
/// sandbox's base URL, adjusted by `adjust`.
pub async fn spawn_app_configured(
    configure: impl FnOnce(&str) -> Settings,
    adjust: impl FnOnce(&mut Settings),
) -> TestApp {
    init_test_logging();
    let sandbox = Sandbox::new(SandboxConfig::default());
    let handle = sandbox.spawn("127.0.0.1:0".parse().unwrap()).await.unwrap();
    let mut settings = configure(&handle.base_url());
    adjust(&mut settings);
    let (client, grpc_addr, admin_addr, stop, server) = start(settings).await;
    TestApp {
        client,
        grpc_addr,
        admin_addr,
        sandbox,
        _sandbox: handle,
        stop: Some(stop),
        server,
    }
}

/// Starts the gateway with `settings`; returns a connected client and the handles.
pub async fn start(
    settings: Settings,
) -> (
    Client,
    SocketAddr,
    SocketAddr,
    oneshot::Sender<()>,
    JoinHandle<()>,
) {
    let (grpc_addr, admin_addr, stop, server) = start_server(settings).await;
    let client = Client::connect(format!("http://{grpc_addr}"))
        .await
        .expect("client connects");
    (client, grpc_addr, admin_addr, stop, server)
}

/// Starts the gateway with `settings`; returns its addresses and handles.
pub async fn start_server(
    settings: Settings,
) -> (SocketAddr, SocketAddr, oneshot::Sender<()>, JoinHandle<()>) {
    let app = Application::build(settings).await.expect("gateway builds");
    let (grpc_addr, admin_addr) = (app.grpc_addr(), app.admin_addr());
    let (stop, stopped) = oneshot::channel::<()>();
    let server = tokio::spawn(async move {
        app.run_until_stopped(async {
            let _ = stopped.await;
        })
        .await
        .expect("gateway runs");
    });
    (grpc_addr, admin_addr, stop, server)
}

/// A directory of files for one test, removed when dropped.
pub struct TempDir(PathBuf);

impl TempDir {
    pub fn new(purpose: &str) -> Self {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let dir =
            std::env::temp_dir().join(format!("wku-test-{}-{purpose}-{n}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        Self(dir)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }

    /// Writes `contents` to `name` in the directory, replacing the file at once
    /// (written aside, then renamed, as Kubernetes and cert-manager do).
    pub fn write(&self, name: &str, contents: impl AsRef<[u8]>) -> PathBuf {
        let path = self.0.join(name);
        let aside = self.0.join(format!(".{name}.new"));
        std::fs::write(&aside, contents).unwrap();
        std::fs::rename(&aside, &path).unwrap();
        path
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

impl TestApp {
    /// Sends the shutdown signal.
    pub fn shut_down(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }

    /// Scripts a fault on `endpoint`.
    pub fn fault(&self, endpoint: Endpoint, fault: Fault) {
        self.sandbox.push_fault(Fault {
            path: endpoint.path().to_owned(),
            ..fault
        });
    }

    /// GetUpgradeConfig, with no metadata.
    pub async fn get_config(&mut self) -> Result<pb::GetUpgradeConfigResponse, Status> {
        self.client
            .get_upgrade_config(pb::GetUpgradeConfigRequest {})
            .await
            .map(tonic::Response::into_inner)
    }

    /// The access token the sandbox hands out now: while it is valid, the same one
    /// the gateway holds.
    pub async fn sandbox_token(&self) -> String {
        let url = format!(
            "{}/cgi-bin/gettoken?corpid={DEMO_CORP_ID}&corpsecret={DEMO_SECRET}",
            self._sandbox.base_url()
        );
        let body = reqwest::get(url).await.unwrap().bytes().await.unwrap();
        let answer: serde_json::Value = serde_json::from_slice(&body).unwrap();
        answer["access_token"].as_str().unwrap().to_owned()
    }

    /// How many requests the sandbox received for `endpoint`.
    pub fn calls_to(&self, endpoint: Endpoint) -> usize {
        self.sandbox.requests_to(endpoint.path()).len()
    }
}

impl Drop for TestApp {
    fn drop(&mut self) {
        self.shut_down();
    }
}

/// An address where connections are refused: the port stays bound (so no other
/// test can take it) but never listens.
pub fn refusing_addr() -> (tokio::net::TcpSocket, SocketAddr) {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let addr = socket.local_addr().unwrap();
    (socket, addr)
}

// === requests ===

pub const OPEN_KFID: &str = "kfxxxxxxxxxxxxxx";
pub const EXTERNAL_USERID: &str = "wmxxxxxxxxxxxxxxxxxx";

pub fn member_upgrade(userid: &str, wording: &str) -> pb::UpgradeServiceRequest {
    pb::UpgradeServiceRequest {
        open_kfid: OPEN_KFID.into(),
        external_userid: EXTERNAL_USERID.into(),
        target: Some(pb::upgrade_service_request::Target::Member(
            pb::MemberTarget {
                userid: userid.into(),
                wording: wording.into(),
            },
        )),
    }
}

pub fn groupchat_upgrade(chat_id: &str, wording: &str) -> pb::UpgradeServiceRequest {
    pb::UpgradeServiceRequest {
        open_kfid: OPEN_KFID.into(),
        external_userid: EXTERNAL_USERID.into(),
        target: Some(pb::upgrade_service_request::Target::Groupchat(
            pb::GroupChatTarget {
                chat_id: chat_id.into(),
                wording: wording.into(),
            },
        )),
    }
}

pub fn cancel() -> pb::CancelUpgradeRequest {
    pb::CancelUpgradeRequest {
        open_kfid: OPEN_KFID.into(),
        external_userid: EXTERNAL_USERID.into(),
    }
}

/// A request carrying `x-wecom-app: app`.
pub fn for_app<T>(message: T, app: &str) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request
        .metadata_mut()
        .insert("x-wecom-app", app.parse().unwrap());
    request
}

// === assertions ===

/// Asserts the status code and ErrorInfo reason; returns the ErrorInfo metadata.
#[track_caller]
pub fn assert_status(
    status: &Status,
    code: Code,
    reason: &str,
) -> std::collections::HashMap<String, String> {
    assert_eq!(status.code(), code, "unexpected status: {status:?}");
    let info = status
        .get_details_error_info()
        .unwrap_or_else(|| panic!("no ErrorInfo in {status:?}"));
    assert_eq!(info.reason, reason, "unexpected reason in {status:?}");
    info.metadata
}

// === a scripted fake upstream, below HTTP libraries ===

/// A raw TCP "WeCom" that answers each connection's request with the next scripted
/// response and records every request exactly as received.
pub struct FakeUpstream {
    pub addr: SocketAddr,
    pub received: Arc<Mutex<Vec<RawRequest>>>,
    _task: JoinHandle<()>,
}

#[derive(Debug, Clone)]
pub struct RawRequest {
    /// e.g. `POST /cgi-bin/kf/customer/upgrade_service?access_token=… HTTP/1.1`
    pub request_line: String,
    pub body: Vec<u8>,
}

/// What the fake does with one request.
#[derive(Debug, Clone)]
pub enum Scripted {
    /// HTTP 200 with this JSON body.
    Json(&'static str),
    /// These exact bytes, then close the connection.
    Raw(&'static str),
}

impl FakeUpstream {
    /// Answers requests in order; `gettoken` always gets a valid token and is not
    /// taken from the script.
    pub async fn start(script: Vec<Scripted>) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let received = Arc::new(Mutex::new(Vec::new()));
        let script = Arc::new(Mutex::new(std::collections::VecDeque::from(script)));
        let log = Arc::clone(&received);
        let task = tokio::spawn(async move {
            while let Ok((mut socket, _)) = listener.accept().await {
                let (log, script) = (Arc::clone(&log), Arc::clone(&script));
                tokio::spawn(async move {
                    // One request per connection keeps the fake simple and the script in order.
                    let Some(request) = read_request(&mut socket).await else {
                        return;
                    };
                    let is_gettoken = request.request_line.contains("/cgi-bin/gettoken");
                    log.lock().unwrap().push(request);
                    let answer = if is_gettoken {
                        Scripted::Json(
                            r#"{"errcode":0,"errmsg":"ok","access_token":"FAKE-TOKEN-123","expires_in":7200}"#,
                        )
                    } else {
                        script
                            .lock()
                            .unwrap()
                            .pop_front()
                            .unwrap_or(Scripted::Json(r#"{"errcode":0,"errmsg":"ok"}"#))
                    };
                    let bytes = match answer {
                        Scripted::Json(body) => format!(
                            "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                            body.len()
                        ),
                        Scripted::Raw(raw) => raw.to_owned(),
                    };
                    let _ = socket.write_all(bytes.as_bytes()).await;
                    let _ = socket.shutdown().await;
                });
            }
        });
        Self {
            addr,
            received,
            _task: task,
        }
    }

    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The requests to `path`, in order.
    pub fn requests_to(&self, path: &str) -> Vec<RawRequest> {
        self.received
            .lock()
            .unwrap()
            .iter()
            .filter(|r| {
                r.request_line
                    .split(' ')
                    .nth(1)
                    .is_some_and(|t| t.starts_with(path))
            })
            .cloned()
            .collect()
    }
}

async fn read_request(socket: &mut tokio::net::TcpStream) -> Option<RawRequest> {
    let mut buffer = Vec::new();
    let mut chunk = [0u8; 4096];
    let header_end = loop {
        let n = tokio::time::timeout(Duration::from_secs(5), socket.read(&mut chunk))
            .await
            .ok()?
            .ok()?;
        if n == 0 {
            return None;
        }
        buffer.extend_from_slice(&chunk[..n]);
        if let Some(i) = buffer.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
    };
    let head = String::from_utf8_lossy(&buffer[..header_end]).into_owned();
    let content_length = head
        .lines()
        .find_map(|l| {
            let (name, value) = l.split_once(':')?;
            name.eq_ignore_ascii_case("content-length")
                .then(|| value.trim().parse::<usize>().ok())?
        })
        .unwrap_or(0);
    while buffer.len() < header_end + content_length {
        let n = socket.read(&mut chunk).await.ok()?;
        if n == 0 {
            break;
        }
        buffer.extend_from_slice(&chunk[..n]);
    }
    Some(RawRequest {
        request_line: head.lines().next().unwrap_or_default().to_owned(),
        body: buffer[header_end..].to_vec(),
    })
}

/// The gateway against a [`FakeUpstream`].
pub async fn spawn_app_against(fake: &FakeUpstream) -> (Client, oneshot::Sender<()>) {
    init_test_logging();
    let settings = test_settings(&fake.base_url(), "wwfake", "fake-secret");
    let (client, _, _, stop, _) = start(settings).await;
    (client, stop)
}

/// Logs go to the test output only with `TEST_LOG=1`.
pub fn init_test_logging() {
    if std::env::var_os("TEST_LOG").is_some() {
        let _ = telemetry::init(false);
    }
}

// === the gateway's log, captured ===

/// Collects what the gateway's subscriber writes.
#[derive(Clone, Default)]
pub struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(bytes);
        Ok(bytes.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> MakeWriter<'a> for Captured {
    type Writer = Captured;
    fn make_writer(&'a self) -> Self::Writer {
        self.clone()
    }
}

impl Captured {
    /// Everything written so far, as text.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }

    /// The events written so far, as JSON objects.
    pub fn events(&self) -> Vec<serde_json::Value> {
        String::from_utf8_lossy(&self.0.lock().unwrap())
            .lines()
            .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
            .collect()
    }

    /// The events written so far on `target`.
    pub fn events_on(&self, target: &str) -> Vec<serde_json::Value> {
        let events = self.events().into_iter();
        events.filter(|event| event["target"] == target).collect()
    }

    /// The audit events written so far.
    pub fn audit_events(&self) -> Vec<serde_json::Value> {
        self.events_on("audit")
    }

    /// Installs the gateway's JSON subscriber, writing here, for this thread.
    /// Tests that use it run on a current-thread runtime, so that the server's
    /// tasks run on this thread and the thread's subscriber sees their events.
    pub fn install(&self, filter: &str) -> tracing::subscriber::DefaultGuard {
        self.install_with(filter, None)
    }

    /// Installs it with spans exported to `traces` as well.
    pub fn install_with(
        &self,
        filter: &str,
        traces: Option<&Traces>,
    ) -> tracing::subscriber::DefaultGuard {
        // While a single dispatcher exists, tracing-core decides whether a callsite
        // is enabled by asking only the default of the thread that reaches it
        // first: another test's thread, without a subscriber, would disable the
        // callsite for this one. A second dispatcher, kept for the whole run,
        // makes it ask every dispatcher.
        static SECOND_DISPATCHER: std::sync::LazyLock<tracing::Dispatch> =
            std::sync::LazyLock::new(|| {
                tracing::Dispatch::new(tracing::subscriber::NoSubscriber::default())
            });
        std::sync::LazyLock::force(&SECOND_DISPATCHER);
        let subscriber = telemetry::subscriber(
            EnvFilter::new(filter),
            LogFormat::Json,
            self.clone(),
            traces,
        );
        tracing::subscriber::set_default(subscriber)
    }
}
