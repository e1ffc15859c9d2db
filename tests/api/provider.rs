//! A 服务商's gateway: the sandbox pushes suite tickets to the callback endpoint,
//! the gateway turns them into a suite token and one token per authorised corp,
//! and each corp's calls reach WeCom with that corp's token.

use std::{
    collections::BTreeMap,
    net::SocketAddr,
    sync::Arc,
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use secrecy::{ExposeSecret, SecretString};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
    sync::oneshot,
};
use tonic::Code;
use wecom_kf_upgrade::{
    auth::new_caller,
    config::Settings,
    grpc::pb,
    sandbox::{
        DEMO_CALLBACK_TOKEN, DEMO_CORP_ID, DEMO_CORPS, DEMO_ENCODING_AES_KEY, DEMO_SECRET,
        DEMO_SUITE_ID, DEMO_SUITE_SECRET, RecordedRequest, Sandbox, SandboxConfig, SandboxHandle,
        SandboxProvider,
    },
    startup::Application,
    wecom::{Endpoint, suite::crypto::MsgCrypt},
};

use crate::fleet::RedisServer;
use crate::helpers::{
    Client, EXTERNAL_USERID, TempDir, assert_status, for_app, init_test_logging, member_upgrade,
};

const SUITE: &str = "acme";
const CORP_A: (&str, &str, &str) = DEMO_CORPS[0];
const CORP_B: (&str, &str, &str) = DEMO_CORPS[1];

/// A gateway with one suite whose corps file lists `corps`, against a sandbox that
/// pushes no ticket until told.
struct Provider {
    client: Client,
    admin_addr: SocketAddr,
    sandbox: Arc<Sandbox>,
    callback_url: String,
    files: TempDir,
    _sandbox: SandboxHandle,
    _stop: oneshot::Sender<()>,
}

fn corps_file(corps: &[(&str, &str, &str)]) -> String {
    corps
        .iter()
        .map(|(app, corp, code)| {
            format!("[[corps]]\napp = \"{app}\"\nauth_corpid = \"{corp}\"\npermanent_code = \"{code}\"\n")
        })
        .collect()
}

async fn spawn_provider(corps: &[(&str, &str, &str)], extra_config: &str) -> Provider {
    init_test_logging();
    let sandbox = Sandbox::new(SandboxConfig {
        provider: SandboxProvider {
            // Tests push when they mean to.
            ticket_interval: Duration::from_secs(3600),
            ..SandboxProvider::default()
        },
        ..SandboxConfig::default()
    });
    let handle = sandbox.spawn("127.0.0.1:0".parse().unwrap()).await.unwrap();
    let gateway = spawn_gateway(&handle, corps, extra_config).await;
    sandbox.push_to(gateway.callback_url.clone());
    Provider {
        client: gateway.client,
        admin_addr: gateway.admin_addr,
        sandbox,
        callback_url: gateway.callback_url,
        files: gateway.files,
        _sandbox: handle,
        _stop: gateway.stop,
    }
}

/// A gateway with one suite, against the sandbox at `sandbox`; `extra_config` goes
/// at the top of its file (top-level keys, then tables such as `[callback]`).
struct Gateway {
    client: Client,
    admin_addr: SocketAddr,
    callback_url: String,
    files: TempDir,
    stop: oneshot::Sender<()>,
}

async fn spawn_gateway(
    sandbox: &SandboxHandle,
    corps: &[(&str, &str, &str)],
    extra_config: &str,
) -> Gateway {
    let files = TempDir::new("provider");
    let corps = files.write("corps.toml", corps_file(corps));
    let secret = files.write("suite_secret", format!("{DEMO_SUITE_SECRET}\n"));
    let config = format!(
        r#"
default_app = "{default_app}"
{extra_config}
[[suites]]
name = "{SUITE}"
suite_id = "{DEMO_SUITE_ID}"
suite_secret_file = "{secret}"
token_env = "SUITE_CALLBACK_TOKEN"
encoding_aes_key = "{DEMO_ENCODING_AES_KEY}"
corps_file = "{corps}"
reload_interval_ms = 100
"#,
        default_app = CORP_A.0,
        secret = secret.display(),
        corps = corps.display(),
    );
    let path = files.write("config.toml", config);
    let env = BTreeMap::from([
        ("WECOM_API_BASE".to_owned(), sandbox.base_url()),
        (
            "SUITE_CALLBACK_TOKEN".to_owned(),
            DEMO_CALLBACK_TOKEN.to_owned(),
        ),
    ]);
    let mut settings = Settings::load(Some(&path), &env).expect("provider settings are valid");
    settings.listen = "127.0.0.1:0".parse().unwrap();
    settings.admin_listen = "127.0.0.1:0".parse().unwrap();
    settings.callback.listen = "127.0.0.1:0".parse().unwrap();
    settings.upstream.retry_backoff = Duration::from_millis(5);
    settings.upstream.call_timeout = Duration::from_millis(5_000);
    settings.server.drain_delay = Duration::ZERO;
    let app = Application::build(settings).await.expect("gateway builds");
    let (grpc_addr, admin_addr) = (app.grpc_addr(), app.admin_addr());
    let callback: SocketAddr = app
        .callback_addr()
        .expect("a suite opens the callback port");
    let (stop, stopped) = oneshot::channel::<()>();
    tokio::spawn(app.run_until_stopped(async {
        let _ = stopped.await;
    }));
    Gateway {
        admin_addr,
        client: Client::connect(format!("http://{grpc_addr}"))
            .await
            .unwrap(),
        callback_url: format!("http://{callback}/suites/{SUITE}/callback"),
        files,
        stop,
    }
}

impl Provider {
    async fn upgrade(&self, app: &str, external_userid: &str) -> Result<(), tonic::Status> {
        let mut request = member_upgrade("zhangsan", "");
        request.external_userid = external_userid.to_owned();
        self.client
            .clone()
            .upgrade_service(for_app(request, app))
            .await
            .map(|_| ())
    }

    fn requests_to(&self, endpoint: Endpoint) -> Vec<RecordedRequest> {
        self.sandbox.requests_to(endpoint.path())
    }

    /// The corps `get_corp_token` was asked for, in order.
    fn corp_token_requests(&self) -> Vec<String> {
        self.requests_to(Endpoint::GetCorpToken)
            .iter()
            .map(|r| {
                r.body["auth_corpid"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned()
            })
            .collect()
    }
}

#[tokio::test]
async fn one_pushed_ticket_serves_500_callers_of_two_corps_with_one_fetch_of_each_token() {
    let provider = spawn_provider(&[CORP_A, CORP_B], "").await;
    provider
        .sandbox
        .push_ticket()
        .await
        .expect("the gateway takes the ticket");

    let mut calls = tokio::task::JoinSet::new();
    for i in 0..500 {
        let (app, corp, _) = if i % 2 == 0 { CORP_A } else { CORP_B };
        let mut request = member_upgrade("zhangsan", "");
        request.external_userid = format!("wm-{corp}-{i}");
        let mut client = provider.client.clone();
        calls.spawn(async move { client.upgrade_service(for_app(request, app)).await });
    }
    let results = calls.join_all().await;
    let failed: Vec<_> = results.iter().filter(|r| r.is_err()).collect();
    assert!(
        failed.is_empty(),
        "{} calls failed: {:?}",
        failed.len(),
        failed.first()
    );

    assert_eq!(provider.requests_to(Endpoint::GetSuiteToken).len(), 1);
    let mut corps = provider.corp_token_requests();
    corps.sort();
    assert_eq!(corps, [CORP_A.1, CORP_B.1]);
    assert_eq!(provider.requests_to(Endpoint::GetToken).len(), 0);
    // Each corp's calls reached WeCom with that corp's own token.
    let upgrades = provider.requests_to(Endpoint::UpgradeService);
    assert_eq!(upgrades.len(), 500);
    for request in upgrades {
        let external_userid = request.body["external_userid"].as_str().unwrap();
        let corp = request
            .corp_id
            .as_deref()
            .expect("a token the sandbox issued");
        assert!(
            external_userid.starts_with(&format!("wm-{corp}-")),
            "{external_userid} was sent with the token of {corp}"
        );
    }
}

#[tokio::test]
async fn without_a_ticket_calls_say_so_and_recover_on_the_next_push() {
    let provider = spawn_provider(&[CORP_A, CORP_B], "").await;

    let status = provider
        .upgrade(CORP_A.0, EXTERNAL_USERID)
        .await
        .unwrap_err();
    assert_status(&status, Code::Unavailable, "SUITE_TICKET_MISSING");
    assert!(status.message().contains("suite_ticket"), "{status:?}");
    assert!(
        provider.requests_to(Endpoint::GetSuiteToken).is_empty(),
        "nothing sent"
    );

    provider.sandbox.push_ticket().await.unwrap();
    provider
        .upgrade(CORP_A.0, EXTERNAL_USERID)
        .await
        .expect("recovered at once");
    provider.upgrade(CORP_B.0, EXTERNAL_USERID).await.unwrap();
}

#[tokio::test]
async fn a_stale_ticket_is_refused_clearly_and_the_next_push_recovers() {
    let provider = spawn_provider(&[CORP_A, CORP_B], "").await;
    provider.sandbox.push_ticket().await.unwrap();
    provider.sandbox.expire_tickets();

    let status = provider
        .upgrade(CORP_B.0, EXTERNAL_USERID)
        .await
        .unwrap_err();
    let info = assert_status(&status, Code::Unavailable, "SUITE_TICKET_INVALID");
    assert_eq!(info["errcode"], "40085");
    assert!(provider.requests_to(Endpoint::UpgradeService).is_empty());

    provider.sandbox.push_ticket().await.unwrap();
    provider
        .upgrade(CORP_B.0, EXTERNAL_USERID)
        .await
        .expect("recovered without a restart");
}

#[tokio::test]
async fn a_refused_permanent_code_is_a_failed_precondition_for_that_corp_only() {
    let wrong = (CORP_B.0, CORP_B.1, "not-the-permanent-code");
    let provider = spawn_provider(&[CORP_A, wrong], "").await;
    provider.sandbox.push_ticket().await.unwrap();

    let status = provider
        .upgrade(CORP_B.0, EXTERNAL_USERID)
        .await
        .unwrap_err();
    let info = assert_status(&status, Code::FailedPrecondition, "PERMANENT_CODE_REJECTED");
    assert_eq!(info["errcode"], "40084");
    provider.upgrade(CORP_A.0, EXTERNAL_USERID).await.unwrap();
}

#[tokio::test]
async fn a_refused_suite_token_is_replaced_once() {
    let provider = spawn_provider(&[CORP_A, CORP_B], "").await;
    provider.sandbox.push_ticket().await.unwrap();
    provider.upgrade(CORP_A.0, EXTERNAL_USERID).await.unwrap();
    // WeCom forgets every token: the corp token and, behind it, the suite token.
    provider.sandbox.revoke_tokens();

    provider.upgrade(CORP_A.0, EXTERNAL_USERID).await.unwrap();
    assert_eq!(provider.requests_to(Endpoint::GetSuiteToken).len(), 2);
    assert_eq!(
        provider.corp_token_requests(),
        [CORP_A.1, CORP_A.1, CORP_A.1]
    );
}

// === the callback endpoint ===

/// A signed, encrypted callback as WeCom sends it.
struct Callback {
    timestamp: String,
    nonce: String,
    signature: String,
    body: String,
}

fn crypt() -> MsgCrypt {
    MsgCrypt::new(
        SecretString::from(DEMO_CALLBACK_TOKEN),
        DEMO_ENCODING_AES_KEY,
    )
    .unwrap()
}

fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

fn ticket_callback(ticket: &str, timestamp: i64, receive_id: &str) -> Callback {
    let crypt = crypt();
    let xml = format!(
        "<xml><SuiteId><![CDATA[{DEMO_SUITE_ID}]]></SuiteId><InfoType><![CDATA[suite_ticket]]>\
         </InfoType><TimeStamp>{timestamp}</TimeStamp><SuiteTicket><![CDATA[{ticket}]]>\
         </SuiteTicket></xml>"
    );
    let encrypted = crypt.encrypt(xml.as_bytes(), receive_id, [7; 16]);
    let (timestamp, nonce) = (timestamp.to_string(), format!("{}", fastrand::u32(..)));
    Callback {
        signature: crypt.signature(&timestamp, &nonce, &encrypted),
        body: format!(
            "<xml><ToUserName><![CDATA[{DEMO_SUITE_ID}]]></ToUserName><Encrypt><![CDATA[{encrypted}]]></Encrypt><AgentID><![CDATA[]]></AgentID></xml>"
        ),
        timestamp,
        nonce,
    }
}

async fn post(url: &str, callback: &Callback) -> (u16, String) {
    let answer = reqwest::Client::new()
        .post(url)
        .query(&[
            ("msg_signature", callback.signature.as_str()),
            ("timestamp", &callback.timestamp),
            ("nonce", &callback.nonce),
        ])
        .body(callback.body.clone())
        .send()
        .await
        .unwrap();
    (answer.status().as_u16(), answer.text().await.unwrap())
}

#[tokio::test]
async fn bad_stale_or_malformed_callbacks_are_refused_and_repeats_do_nothing() {
    let provider = spawn_provider(&[CORP_A], "").await;
    let url = &provider.callback_url;
    let now = unix_now();

    let mut forged = ticket_callback("forged", now, DEMO_SUITE_ID);
    forged.signature = crypt().signature(&forged.timestamp, "another-nonce", "x");
    assert_eq!(post(url, &forged).await.0, 403);
    let stale = ticket_callback("stale", now - 3600, DEMO_SUITE_ID);
    assert_eq!(post(url, &stale).await.0, 403);
    let future = ticket_callback("future", now + 3600, DEMO_SUITE_ID);
    assert_eq!(post(url, &future).await.0, 403);
    let elsewhere = ticket_callback("elsewhere", now, "another-suite");
    assert_eq!(post(url, &elsewhere).await.0, 403);
    let mut garbage = ticket_callback("garbage", now, DEMO_SUITE_ID);
    garbage.body = "<xml><Encrypt>".to_owned();
    assert_eq!(post(url, &garbage).await.0, 400);
    let unknown_suite = url.replace(SUITE, "nobody");
    assert_eq!(
        post(&unknown_suite, &ticket_callback("x", now, DEMO_SUITE_ID))
            .await
            .0,
        404
    );

    // Nothing was stored: there is still no ticket at all.
    let status = provider
        .upgrade(CORP_A.0, EXTERNAL_USERID)
        .await
        .unwrap_err();
    assert_status(&status, Code::Unavailable, "SUITE_TICKET_MISSING");

    // A genuine callback is taken once; a repeat of it (WeCom sends one again when
    // its first delivery saw no `success` in time), whatever the case of its
    // signature, is acknowledged and does nothing.
    let genuine = ticket_callback("genuine-but-unknown-to-wecom", now, DEMO_SUITE_ID);
    assert_eq!(post(url, &genuine).await, (200, "success".to_owned()));
    assert_eq!(post(url, &genuine).await, (200, "success".to_owned()));
    let shouted = Callback {
        signature: genuine.signature.to_ascii_uppercase(),
        timestamp: genuine.timestamp.clone(),
        nonce: genuine.nonce.clone(),
        body: genuine.body.clone(),
    };
    assert_eq!(post(url, &shouted).await, (200, "success".to_owned()));
    // The ticket was stored and used at once: WeCom does not know it.
    let status = provider
        .upgrade(CORP_A.0, EXTERNAL_USERID)
        .await
        .unwrap_err();
    assert_status(&status, Code::Unavailable, "SUITE_TICKET_INVALID");

    let metrics = reqwest::get(format!("http://{}/metrics", provider.admin_addr))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for (suite, outcome, count) in [
        (SUITE, "bad_signature", 1),
        (SUITE, "stale", 2),
        (SUITE, "wrong_receiver", 1),
        (SUITE, "malformed", 1),
        (SUITE, "replayed", 2),
        (SUITE, "ticket_stored", 1),
        ("unknown", "unknown_suite", 1),
    ] {
        let line = format!(
            "wecom_kf_upgrade_suite_callbacks_total{{suite=\"{suite}\",outcome=\"{outcome}\"}} {count}"
        );
        assert!(metrics.contains(&line), "no `{line}` in\n{metrics}");
    }
}

#[tokio::test]
async fn the_url_check_answers_the_decrypted_echostr() {
    let provider = spawn_provider(&[CORP_A], "").await;
    let crypt = crypt();
    let check = |receive_id: &str| {
        let echostr = crypt.encrypt(b"1616140317555161061", receive_id, [3; 16]);
        let timestamp = unix_now().to_string();
        let nonce = fastrand::u32(..).to_string();
        let signature = crypt.signature(&timestamp, &nonce, &echostr);
        let url = provider.callback_url.clone();
        async move {
            let answer = reqwest::Client::new()
                .get(url)
                .query(&[
                    ("msg_signature", signature.as_str()),
                    ("timestamp", &timestamp),
                    ("nonce", &nonce),
                    ("echostr", &echostr),
                ])
                .send()
                .await
                .unwrap();
            (answer.status().as_u16(), answer.text().await.unwrap())
        }
    };
    assert_eq!(
        check(DEMO_SUITE_ID).await,
        (200, "1616140317555161061".to_owned())
    );
    assert_eq!(check("another-receiver").await.0, 403);
}

/// Reads from `stream` until the gateway closes it or `patience` runs out:
/// what arrived, and how long it took (`None`: still open).
async fn until_closed(stream: &mut TcpStream, patience: Duration) -> (String, Option<Duration>) {
    let started = Instant::now();
    let mut received = Vec::new();
    let mut buffer = [0u8; 1024];
    loop {
        let left = patience.saturating_sub(started.elapsed());
        match tokio::time::timeout(left, stream.read(&mut buffer)).await {
            Ok(Ok(0) | Err(_)) => {
                return (
                    String::from_utf8_lossy(&received).into_owned(),
                    Some(started.elapsed()),
                );
            }
            Ok(Ok(n)) => received.extend_from_slice(&buffer[..n]),
            Err(_) => return (String::from_utf8_lossy(&received).into_owned(), None),
        }
    }
}

#[tokio::test]
async fn the_callback_port_cuts_off_slow_clients_and_holds_connections_past_its_cap() {
    let provider = spawn_provider(
        &[CORP_A],
        "[callback]\nmax_connections = 1\nhandshake_timeout_ms = 1000\nrequest_read_timeout_ms = 1000\n",
    )
    .await;
    let addr = provider
        .callback_url
        .trim_start_matches("http://")
        .split('/')
        .next()
        .unwrap()
        .to_owned();
    let request =
        "GET /suites/nobody/callback HTTP/1.1\r\nhost: gateway\r\nconnection: close\r\n\r\n";

    // A client that starts its headers and never finishes them takes the one slot…
    let mut slow = TcpStream::connect(&addr).await.unwrap();
    slow.write_all(b"POST /suites/acme/callback HTTP/1.1\r\nhost: gateway\r\n")
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    // …so a complete request on a second connection waits in the backlog, unanswered…
    let mut waiting = TcpStream::connect(&addr).await.unwrap();
    waiting.write_all(request.as_bytes()).await.unwrap();
    let (early, closed) = until_closed(&mut waiting, Duration::from_millis(400)).await;
    assert!(
        early.is_empty() && closed.is_none(),
        "answered past the cap: {early:?}"
    );
    // …until the slow client is cut off at the header deadline (1 s),
    let (answer, cut_off) = until_closed(&mut slow, Duration::from_secs(5)).await;
    let cut_off = cut_off.expect("a client that never sends its headers is cut off");
    assert!(
        cut_off < Duration::from_secs(2),
        "cut off only after {cut_off:?}"
    );
    assert!(!answer.contains("success"), "{answer}");
    // and the waiting request is served at once.
    let (answer, closed) = until_closed(&mut waiting, Duration::from_secs(2)).await;
    assert!(answer.starts_with("HTTP/1.1 404"), "{answer:?}");
    assert!(closed.is_some());

    // A client that connects and says nothing is closed at the handshake deadline.
    let mut silent = TcpStream::connect(&addr).await.unwrap();
    let (answer, closed) = until_closed(&mut silent, Duration::from_secs(5)).await;
    let closed = closed.expect("a silent connection is closed");
    assert!(
        answer.is_empty()
            && closed >= Duration::from_millis(800)
            && closed < Duration::from_secs(3),
        "{answer:?} after {closed:?}"
    );

    // The port still serves WeCom's callbacks.
    let callback = ticket_callback("after-the-slow-ones", unix_now(), DEMO_SUITE_ID);
    assert_eq!(
        post(&provider.callback_url, &callback).await,
        (200, "success".to_owned())
    );
}

#[tokio::test]
async fn a_suite_whose_key_is_check_configs_placeholder_loads_and_refuses_its_callbacks() {
    init_test_logging();
    // check-config printed an inline EncodingAESKey as "****", and that output was loaded.
    let files = TempDir::new("placeholder-key");
    let corps = files.write("corps.toml", corps_file(&[CORP_A]));
    let config = format!(
        r#"
default_app = "{default_app}"
[[suites]]
name = "{SUITE}"
suite_id = "{DEMO_SUITE_ID}"
suite_secret = "****"
token = "{DEMO_CALLBACK_TOKEN}"
encoding_aes_key = "****"
corps_file = "{corps}"
"#,
        default_app = CORP_A.0,
        corps = corps.display(),
    );
    let path = files.write("config.toml", config);
    let mut settings =
        Settings::load(Some(&path), &BTreeMap::new()).expect("check-config's output loads back");
    settings.listen = "127.0.0.1:0".parse().unwrap();
    settings.admin_listen = "127.0.0.1:0".parse().unwrap();
    settings.callback.listen = "127.0.0.1:0".parse().unwrap();
    let app = Application::build(settings).await.expect("gateway builds");
    let (callback, admin) = (app.callback_addr().unwrap(), app.admin_addr());
    let (_stop, stopped) = oneshot::channel::<()>();
    tokio::spawn(app.run_until_stopped(async {
        let _ = stopped.await;
    }));

    let url = format!("http://{callback}/suites/{SUITE}/callback");
    let (status, answer) = post(&url, &ticket_callback("t", unix_now(), DEMO_SUITE_ID)).await;
    assert_eq!(status, 503, "{answer}");
    assert!(
        answer.contains("EncodingAESKey is not configured"),
        "{answer}"
    );
    let metrics = reqwest::get(format!("http://{admin}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let line =
        format!("wecom_kf_upgrade_suite_callbacks_total{{suite=\"{SUITE}\",outcome=\"no_key\"}} 1");
    assert!(metrics.contains(&line), "no `{line}` in\n{metrics}");
}

// === corps and apps added without a restart ===

async fn eventually(what: &str, mut check: impl AsyncFnMut() -> bool) {
    for _ in 0..200 {
        if check().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("{what} did not happen within 5 s");
}

#[tokio::test]
async fn corps_come_and_go_with_the_corps_file() {
    let provider = spawn_provider(&[CORP_A], "").await;
    provider.sandbox.push_ticket().await.unwrap();
    let status = provider
        .upgrade(CORP_B.0, EXTERNAL_USERID)
        .await
        .unwrap_err();
    assert_status(&status, Code::InvalidArgument, "UNKNOWN_APP");

    provider
        .files
        .write("corps.toml", corps_file(&[CORP_A, CORP_B]));
    eventually("corp B's arrival", async || {
        provider.upgrade(CORP_B.0, EXTERNAL_USERID).await.is_ok()
    })
    .await;

    // Corp A is the default app: a version without it is refused, and everything
    // stays as it was (checked over several reload intervals).
    provider.files.write("corps.toml", corps_file(&[CORP_B]));
    tokio::time::sleep(Duration::from_millis(500)).await;
    provider.upgrade(CORP_A.0, EXTERNAL_USERID).await.unwrap();
    provider.upgrade(CORP_B.0, EXTERNAL_USERID).await.unwrap();

    provider.files.write("corps.toml", corps_file(&[CORP_A]));
    eventually("corp B's removal", async || {
        provider.upgrade(CORP_B.0, EXTERNAL_USERID).await.is_err()
    })
    .await;
    let status = provider
        .upgrade(CORP_B.0, EXTERNAL_USERID)
        .await
        .unwrap_err();
    assert_status(&status, Code::InvalidArgument, "UNKNOWN_APP");
    provider.upgrade(CORP_A.0, EXTERNAL_USERID).await.unwrap();
    // Corp A kept its token through every reload.
    let corp_a_fetches = provider
        .corp_token_requests()
        .iter()
        .filter(|c| *c == CORP_A.1)
        .count();
    assert_eq!(corp_a_fetches, 1);
}

/// A caller granted a corp's app in the callers file before the corps file that
/// adds the corp is re-read: the callers file is refused at first, and taken once
/// the app exists.
#[tokio::test]
async fn a_callers_file_granting_a_corp_not_added_yet_is_taken_once_it_is() {
    let dir = TempDir::new("provider-callers");
    let caller = new_caller("billing", &[CORP_A.0.to_owned()]).unwrap();
    let callers = dir.write("callers.toml", &caller.entry);
    let provider = spawn_provider(
        &[CORP_A],
        &format!(
            "[auth]\ncallers_file = \"{}\"\nreload_interval_ms = 100\n",
            callers.display()
        ),
    )
    .await;
    provider.sandbox.push_ticket().await.unwrap();
    let token = caller.token.expose_secret().to_owned();
    let upgrade = |app: &'static str| {
        let mut client = provider.client.clone();
        let token = token.clone();
        async move {
            let mut request = for_app(member_upgrade("zhangsan", ""), app);
            let bearer = format!("Bearer {token}").parse().unwrap();
            request.metadata_mut().insert("authorization", bearer);
            client.upgrade_service(request).await
        }
    };
    upgrade(CORP_A.0).await.unwrap();

    // The grant comes first, and is refused for a while: corp B is unknown.
    let both = format!("\"{}\", \"{}\"", CORP_A.0, CORP_B.0);
    let granted = caller.entry.replace(&format!("\"{}\"", CORP_A.0), &both);
    assert_ne!(granted, caller.entry);
    dir.write("callers.toml", granted);
    tokio::time::sleep(Duration::from_millis(500)).await;
    provider
        .files
        .write("corps.toml", corps_file(&[CORP_A, CORP_B]));
    eventually("the caller's use of corp B", async || {
        upgrade(CORP_B.0).await.is_ok()
    })
    .await;
    upgrade(CORP_A.0).await.unwrap();
}

#[tokio::test]
async fn apps_of_the_apps_file_are_added_without_a_restart() {
    let dir = TempDir::new("apps-file");
    let apps_file = dir.write("apps.toml", "");
    let provider = spawn_provider(
        &[CORP_A],
        &format!(
            "apps_file = \"{}\"\napps_reload_interval_ms = 100\n",
            apps_file.display()
        ),
    )
    .await;
    let config = |client: &Client| {
        let mut client = client.clone();
        async move {
            client
                .get_upgrade_config(for_app(pb::GetUpgradeConfigRequest {}, "custom-built"))
                .await
        }
    };
    let status = config(&provider.client).await.unwrap_err();
    assert_status(&status, Code::InvalidArgument, "UNKNOWN_APP");

    // A corp authorised the provider's 代开发 template: its app is added.
    dir.write(
        "apps.toml",
        format!(
            "[[apps]]\nname = \"custom-built\"\ncorp_id = \"{DEMO_CORP_ID}\"\nsecret = \"{DEMO_SECRET}\"\n"
        ),
    );
    eventually("the 代开发 app's arrival", async || {
        config(&provider.client).await.is_ok()
    })
    .await;
    assert_eq!(provider.requests_to(Endpoint::GetToken).len(), 1);
}

/// An app moved from the apps file to a corps file arrives whichever file is
/// re-read first: the corps file naming it is refused while the apps file still
/// has it, and taken once it no longer does.
#[tokio::test]
async fn an_app_moved_from_the_apps_file_to_a_corps_file_arrives_in_either_order() {
    let dir = TempDir::new("moved-app");
    let apps_file = dir.write(
        "apps.toml",
        format!(
            "[[apps]]\nname = \"moved\"\ncorp_id = \"{DEMO_CORP_ID}\"\nsecret = \"{DEMO_SECRET}\"\n"
        ),
    );
    let provider = spawn_provider(
        &[CORP_A],
        &format!(
            "apps_file = \"{}\"\napps_reload_interval_ms = 100\n",
            apps_file.display()
        ),
    )
    .await;
    provider.sandbox.push_ticket().await.unwrap();
    provider.upgrade("moved", EXTERNAL_USERID).await.unwrap();
    assert_eq!(provider.requests_to(Endpoint::GetToken).len(), 1);

    // The corps file is changed first, and refused while the apps file has the app.
    let moved = ("moved", CORP_B.1, CORP_B.2);
    provider
        .files
        .write("corps.toml", corps_file(&[CORP_A, moved]));
    tokio::time::sleep(Duration::from_millis(500)).await;
    dir.write("apps.toml", "");
    eventually("the app's arrival from the corps file", async || {
        provider.upgrade("moved", EXTERNAL_USERID).await.is_ok()
            && provider
                .corp_token_requests()
                .contains(&CORP_B.1.to_owned())
    })
    .await;
    provider.upgrade("moved", EXTERNAL_USERID).await.unwrap();
    assert_eq!(
        provider.requests_to(Endpoint::GetToken).len(),
        1,
        "no gettoken since the move: the app is the suite's corp"
    );
}

// === a fleet ===

/// How many clients Redis has connected.
async fn redis_clients(url: &str) -> usize {
    let client = redis::Client::open(url).unwrap();
    let mut connection = client.get_multiplexed_async_connection().await.unwrap();
    let list: String = redis::cmd("CLIENT")
        .arg("LIST")
        .query_async(&mut connection)
        .await
        .unwrap();
    list.lines().count()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_fleet_shares_the_ticket_the_suite_token_and_each_corp_token() {
    let Some(redis) = RedisServer::start() else {
        return;
    };
    init_test_logging();
    let sandbox = Sandbox::new(SandboxConfig {
        provider: SandboxProvider {
            ticket_interval: Duration::from_secs(3600),
            ..SandboxProvider::default()
        },
        ..SandboxConfig::default()
    });
    let handle = sandbox.spawn("127.0.0.1:0".parse().unwrap()).await.unwrap();
    let fleet = format!("[redis]\nurl = \"{}\"\n", redis.url());
    let replicas = [
        spawn_gateway(&handle, &[CORP_A, CORP_B], &fleet).await,
        spawn_gateway(&handle, &[CORP_A, CORP_B], &fleet).await,
    ];
    // Both replicas are connected (and this test's own connection).
    for _ in 0..200 {
        if redis_clients(&redis.url()).await >= 3 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    // WeCom pushes the ticket to one replica; the other calls first.
    sandbox.push_to(replicas[0].callback_url.clone());
    sandbox.push_ticket().await.unwrap();
    for (replica, (app, _, _)) in [(1, CORP_A), (0, CORP_A), (0, CORP_B), (1, CORP_B)] {
        let mut client = replicas[replica].client.clone();
        let mut request = member_upgrade("zhangsan", "");
        request.external_userid = format!("wm-{app}-{replica}");
        client
            .upgrade_service(for_app(request, app))
            .await
            .unwrap_or_else(|status| panic!("replica {replica}, {app}: {status:?}"));
    }
    assert_eq!(sandbox.requests_to(Endpoint::GetSuiteToken.path()).len(), 1);
    let mut corps: Vec<String> = sandbox
        .requests_to(Endpoint::GetCorpToken.path())
        .iter()
        .map(|r| r.body["auth_corpid"].as_str().unwrap().to_owned())
        .collect();
    corps.sort();
    assert_eq!(corps, [CORP_A.1, CORP_B.1]);
}
