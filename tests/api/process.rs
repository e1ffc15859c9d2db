//! The gateway as a child process: the real binary, its JSON log collected.

use std::{
    io::{BufRead, BufReader},
    net::SocketAddr,
    process::{Child, Command, Stdio},
    sync::{Arc, Mutex},
    time::Duration,
};

use wecom_kf_upgrade::sandbox::{DEMO_CORP_ID, DEMO_SECRET, SandboxHandle};

use crate::helpers::Client;

/// The gateway as a child process, with its log lines collected.
pub struct Gateway {
    pub child: Child,
    log: Arc<Mutex<Vec<String>>>,
    pub grpc_addr: SocketAddr,
    pub admin_addr: SocketAddr,
    _config: TempConfig,
}

struct TempConfig(std::path::PathBuf);

impl Drop for TempConfig {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

impl Gateway {
    /// `serve --config` with `config` (TOML), the app from the environment,
    /// against `sandbox`; `open_files` limits its file descriptors.
    pub fn start(sandbox: &SandboxHandle, config: &str, open_files: Option<u32>) -> Self {
        let path = std::env::temp_dir().join(format!(
            "wecom-kf-upgrade-test-{}-{}.toml",
            std::process::id(),
            fastrand::u64(..)
        ));
        let listen = "listen = \"127.0.0.1:0\"\nadmin_listen = \"127.0.0.1:0\"\n";
        std::fs::write(&path, format!("{listen}{config}")).unwrap();
        let binary = env!("CARGO_BIN_EXE_wecom-kf-upgrade");
        let limit = open_files.map_or_else(String::new, |n| format!("ulimit -n {n} && "));
        let mut child = Command::new("sh")
            .arg("-c")
            .arg(format!(r#"{limit}exec "$0" serve --config "$1""#))
            .arg(binary)
            .arg(&path)
            .env("WECOM_CORP_ID", DEMO_CORP_ID)
            .env("WECOM_CORP_SECRET", DEMO_SECRET)
            .env("WECOM_API_BASE", sandbox.base_url())
            .env("LOG_FORMAT", "json")
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("the gateway starts");
        let log = Arc::new(Mutex::new(Vec::new()));
        let (addr_tx, addr_rx) = std::sync::mpsc::channel();
        let stderr = child.stderr.take().unwrap();
        let lines = Arc::clone(&log);
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let (Some(grpc), Some(admin)) =
                    (field(&line, "grpc_addr"), field(&line, "admin_addr"))
                {
                    let addrs = (grpc.parse::<SocketAddr>(), admin.parse::<SocketAddr>());
                    let _ = addr_tx.send((addrs.0.unwrap(), addrs.1.unwrap()));
                }
                lines.lock().unwrap().push(line);
            }
        });
        let (grpc_addr, admin_addr) = addr_rx
            .recv_timeout(Duration::from_secs(20))
            .expect("the gateway logs its address");
        Self {
            child,
            log,
            grpc_addr,
            admin_addr,
            _config: TempConfig(path),
        }
    }

    pub async fn client(&self) -> Client {
        Client::connect(format!("http://{}", self.grpc_addr))
            .await
            .unwrap()
    }

    /// The admin port's `/metrics`, as text.
    pub async fn metrics(&self) -> String {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut stream = tokio::net::TcpStream::connect(self.admin_addr)
            .await
            .unwrap();
        let request = "GET /metrics HTTP/1.1\r\nhost: gateway\r\nconnection: close\r\n\r\n";
        stream.write_all(request.as_bytes()).await.unwrap();
        let mut answer = String::new();
        stream.read_to_string(&mut answer).await.unwrap();
        answer
    }

    pub fn lines_with(&self, text: &str) -> Vec<String> {
        let log = self.log.lock().unwrap();
        log.iter().filter(|l| l.contains(text)).cloned().collect()
    }

    /// User plus system CPU time so far, from `/proc`.
    pub fn cpu_time(&self) -> Duration {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.child.id())).unwrap();
        // Fields after the command name, which is in parentheses.
        let fields: Vec<&str> = stat
            .rsplit_once(')')
            .unwrap()
            .1
            .split_whitespace()
            .collect();
        let ticks: u64 = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
        // Linux reports in USER_HZ, 100 a second on every mainstream platform.
        Duration::from_millis(ticks * 10)
    }

    pub fn terminate(&self) {
        let status = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A string field of a JSON log line, wherever it is nested.
pub fn field<'a>(line: &'a str, name: &str) -> Option<&'a str> {
    let start = line.find(&format!("\"{name}\":\""))? + name.len() + 4;
    let len = line[start..].find('"')?;
    Some(&line[start..start + len])
}
