//! TLS and mTLS on the gRPC port, with certificates made here (rcgen): real tonic
//! clients over TLS, a plaintext client refused, client certificates checked and
//! naming callers, a replaced certificate served to new connections while
//! established ones keep theirs.

use std::{net::SocketAddr, time::Duration};

use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, SanType};
use tokio::{io::AsyncReadExt, net::TcpStream, sync::oneshot};
use tonic::{
    Code,
    transport::{Certificate, Channel, ClientTlsConfig, Identity},
};
use wecom_kf_upgrade::{
    config::Settings,
    grpc::pb,
    sandbox::{DEMO_CORP_ID, DEMO_SECRET, Sandbox, SandboxConfig, SandboxHandle},
};

use crate::helpers::*;

/// A certificate authority made for one test.
struct Ca {
    pem: String,
    issuer: Issuer<'static, KeyPair>,
}

/// A certificate and its key, in PEM.
struct Issued {
    cert: String,
    key: String,
}

impl Ca {
    fn new(name: &str) -> Self {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        let cert = params.self_signed(&key).unwrap();
        Self {
            pem: cert.pem(),
            issuer: Issuer::new(params, key),
        }
    }

    /// A certificate for these DNS names or IP addresses, and URIs (SPIFFE IDs).
    fn issue(&self, names: &[&str], uris: &[&str]) -> Issued {
        let key = KeyPair::generate().unwrap();
        let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
        let mut params = CertificateParams::new(names).unwrap();
        for uri in uris {
            let uri = uri.to_string().try_into().unwrap();
            params.subject_alt_names.push(SanType::URI(uri));
        }
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        Issued {
            cert: cert.pem(),
            key: key.serialize_pem(),
        }
    }
}

/// A gateway serving TLS with the files in `dir`, against a fresh sandbox.
struct TlsGateway {
    addr: SocketAddr,
    dir: TempDir,
    _sandbox: SandboxHandle,
    _stop: oneshot::Sender<()>,
}

/// Starts a gateway with `server.crt`/`server.key` (and `clients-ca.crt` when
/// `client_ca`) from `dir`, and `extra` configuration lines.
async fn spawn_tls(
    dir: TempDir,
    client_ca: bool,
    extra: &str,
    adjust: impl FnOnce(&mut Settings),
) -> TlsGateway {
    let sandbox = Sandbox::new(SandboxConfig::default());
    let handle = sandbox.spawn("127.0.0.1:0".parse().unwrap()).await.unwrap();
    let file = |name: &str| dir.path().join(name).display().to_string();
    let mut config = format!(
        "{extra}\n[tls]\ncert_file = \"{}\"\nkey_file = \"{}\"\n",
        file("server.crt"),
        file("server.key")
    );
    if client_ca {
        config.push_str(&format!(
            "client_ca_file = \"{}\"\n",
            file("clients-ca.crt")
        ));
    }
    let base = handle.base_url();
    let vars = [
        ("WECOM_CORP_ID", DEMO_CORP_ID),
        ("WECOM_CORP_SECRET", DEMO_SECRET),
        ("WECOM_API_BASE", base.as_str()),
    ];
    let mut settings = settings_from(&config, &vars);
    adjust(&mut settings);
    let (addr, _, stop, _) = start_server(settings).await;
    TlsGateway {
        addr,
        dir,
        _sandbox: handle,
        _stop: stop,
    }
}

/// A directory with a server certificate for localhost and 127.0.0.1 from `ca`.
fn server_files(ca: &Ca) -> TempDir {
    let dir = TempDir::new("tls");
    let server = ca.issue(&["localhost", "127.0.0.1"], &[]);
    dir.write("server.crt", &server.cert);
    dir.write("server.key", &server.key);
    dir
}

/// A tonic client over TLS that trusts `ca`, presenting `identity` if given.
async fn tls_client(
    addr: SocketAddr,
    ca: &str,
    identity: Option<&Issued>,
) -> Result<Client, tonic::transport::Error> {
    let mut tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(ca))
        .domain_name("localhost");
    if let Some(identity) = identity {
        tls = tls.identity(Identity::from_pem(&identity.cert, &identity.key));
    }
    let channel = Channel::from_shared(format!("https://{addr}"))
        .unwrap()
        .tls_config(tls)?
        .connect()
        .await?;
    Ok(Client::new(channel))
}

/// GetUpgradeConfig over a fresh connection: whether the connection and the call
/// both worked.
async fn fresh_call(addr: SocketAddr, ca: &str, identity: Option<&Issued>) -> Result<(), String> {
    let mut client = tls_client(addr, ca, identity)
        .await
        .map_err(|e| format!("connect: {e:?}"))?;
    client
        .get_upgrade_config(pb::GetUpgradeConfigRequest {})
        .await
        .map(drop)
        .map_err(|status| format!("call: {status:?}"))
}

#[tokio::test]
async fn a_call_over_tls_succeeds_and_a_plaintext_one_is_refused() {
    let ca = Ca::new("server CA");
    let gateway = spawn_tls(server_files(&ca), false, "", |_| {}).await;

    let mut client = tls_client(gateway.addr, &ca.pem, None).await.unwrap();
    let config = client
        .get_upgrade_config(pb::GetUpgradeConfigRequest {})
        .await
        .unwrap()
        .into_inner();
    assert!(config.member_range.is_some());

    // HTTP/JSON shares the port: HTTP/1.1 over the same TLS (ALPN http/1.1).
    let https = reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(ca.pem.as_bytes()).unwrap())
        .build()
        .unwrap();
    let port = gateway.addr.port();
    let response = https
        .get(format!("https://localhost:{port}/v1/upgrade-config"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.version(), reqwest::Version::HTTP_11);

    let plaintext_fails = async {
        match Client::connect(format!("http://{}", gateway.addr)).await {
            Err(_) => true,
            Ok(mut client) => client
                .get_upgrade_config(pb::GetUpgradeConfigRequest {})
                .await
                .is_err(),
        }
    };
    let failed = tokio::time::timeout(Duration::from_secs(5), plaintext_fails).await;
    assert_eq!(failed, Ok(true), "a plaintext call fails, and fast");
}

#[tokio::test]
async fn mtls_refuses_clients_without_a_certificate_or_with_another_cas() {
    let (server_ca, clients_ca, stranger_ca) = (
        Ca::new("server CA"),
        Ca::new("clients CA"),
        Ca::new("another CA"),
    );
    let dir = server_files(&server_ca);
    dir.write("clients-ca.crt", &clients_ca.pem);
    let gateway = spawn_tls(dir, true, "", |_| {}).await;
    let ours = clients_ca.issue(&["billing.clients.example"], &[]);
    let theirs = stranger_ca.issue(&["billing.clients.example"], &[]);

    let without = fresh_call(gateway.addr, &server_ca.pem, None).await;
    assert!(without.is_err(), "no client certificate: {without:?}");
    let foreign = fresh_call(gateway.addr, &server_ca.pem, Some(&theirs)).await;
    assert!(foreign.is_err(), "another CA's certificate: {foreign:?}");
    let known = fresh_call(gateway.addr, &server_ca.pem, Some(&ours)).await;
    assert_eq!(known, Ok(()), "a certificate from the client CA");
}

// Under mTLS, a caller can be named by its certificate instead of a token.
#[tokio::test]
async fn a_client_certificate_names_its_caller() {
    let (server_ca, clients_ca) = (Ca::new("server CA"), Ca::new("clients CA"));
    let dir = server_files(&server_ca);
    dir.write("clients-ca.crt", &clients_ca.pem);
    let callers = "[[callers]]\nname = \"billing\"\napps = [\"default\"]\n\
                   cert_sans = [\"spiffe://example.org/ns/billing/sa/api\"]\n";
    let callers_file = dir.write("callers.toml", callers);
    let extra = format!("[auth]\ncallers_file = \"{}\"", callers_file.display());
    let gateway = spawn_tls(dir, true, &extra, |_| {}).await;
    let billing = clients_ca.issue(
        &["billing.pods.example"],
        &["spiffe://example.org/ns/billing/sa/api"],
    );
    let stranger = clients_ca.issue(&["stranger.pods.example"], &[]);

    assert_eq!(
        fresh_call(gateway.addr, &server_ca.pem, Some(&billing)).await,
        Ok(())
    );
    let mut client = tls_client(gateway.addr, &server_ca.pem, Some(&stranger))
        .await
        .unwrap();
    let refused = client
        .get_upgrade_config(pb::GetUpgradeConfigRequest {})
        .await
        .unwrap_err();
    assert_status(
        &refused,
        Code::Unauthenticated,
        "UNKNOWN_CLIENT_CERTIFICATE",
    );
    assert!(
        refused.message().contains("stranger.pods.example"),
        "{refused:?}"
    );
}

#[tokio::test]
async fn a_replaced_certificate_is_served_to_new_connections_while_old_ones_keep_theirs() {
    let (old_ca, new_ca) = (Ca::new("old CA"), Ca::new("new CA"));
    let gateway = spawn_tls(server_files(&old_ca), false, "", |s| {
        s.tls.as_mut().unwrap().reload_interval = Duration::from_millis(50);
    })
    .await;
    let mut established = tls_client(gateway.addr, &old_ca.pem, None).await.unwrap();
    let first = established
        .get_upgrade_config(pb::GetUpgradeConfigRequest {})
        .await;
    assert!(first.is_ok(), "{first:?}");

    // cert-manager renews: the key and certificate are replaced on disk.
    let renewed = new_ca.issue(&["localhost", "127.0.0.1"], &[]);
    gateway.dir.write("server.key", &renewed.key);
    gateway.dir.write("server.crt", &renewed.cert);
    let mut served = Err(String::new());
    for _ in 0..100 {
        served = fresh_call(gateway.addr, &new_ca.pem, None).await;
        if served.is_ok() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        served,
        Ok(()),
        "a new connection gets the new certificate, without a restart"
    );
    let old = fresh_call(gateway.addr, &old_ca.pem, None).await;
    assert!(old.is_err(), "no new connection gets the old one: {old:?}");

    let again = established
        .get_upgrade_config(pb::GetUpgradeConfigRequest {})
        .await;
    assert!(
        again.is_ok(),
        "the established connection keeps working: {again:?}"
    );
}

#[tokio::test]
async fn a_broken_certificate_file_keeps_the_last_good_one() {
    let ca = Ca::new("server CA");
    let gateway = spawn_tls(server_files(&ca), false, "", |s| {
        s.tls.as_mut().unwrap().reload_interval = Duration::from_millis(50);
    })
    .await;
    gateway
        .dir
        .write("server.crt", "-----BEGIN CERTIFICATE-----\ntruncated");
    // A key that does not go with the certificate is refused as well.
    gateway.dir.write(
        "server.key",
        Ca::new("other").issue(&["localhost"], &[]).key,
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(fresh_call(gateway.addr, &ca.pem, None).await, Ok(()));
}

// A client that connects and never starts its handshake holds up nobody, and is
// closed after the handshake timeout.
#[tokio::test]
async fn a_silent_connection_holds_up_nobody_and_is_closed() {
    let ca = Ca::new("server CA");
    let gateway = spawn_tls(server_files(&ca), false, "", |s| {
        s.server.handshake_timeout = Duration::from_millis(300);
    })
    .await;
    let mut silent = TcpStream::connect(gateway.addr).await.unwrap();

    let call = tokio::time::timeout(
        Duration::from_secs(2),
        fresh_call(gateway.addr, &ca.pem, None),
    )
    .await;
    assert!(matches!(call, Ok(Ok(()))), "{call:?}");
    let mut byte = [0u8; 1];
    let closed = tokio::time::timeout(Duration::from_secs(3), silent.read(&mut byte)).await;
    assert!(
        matches!(closed, Ok(Ok(0)) | Ok(Err(_))),
        "the silent connection is closed: {closed:?}"
    );
}
