//! The gateway's benchmark: it starts the WeCom sandbox and the gateway (its default
//! configuration) as processes of their own, loads them, and prints one table with
//! the targets the gateway is held to, each marked met or not.
//!
//! - **Closed loops** (`--concurrency`, default 1, 16, 64, 256 callers, each sending
//!   its next call when the last is answered) of `UpgradeService`, `GetUpgradeConfig`
//!   and `grpc.health.v1.Health/Check` through the gateway, and of the same
//!   `upgrade_service` exchange sent **directly** as HTTP/JSON to the sandbox, with a
//!   token in hand: what a caller without the gateway would do.
//! - **Open loops** (`--rates`, default 100 and 1,000 calls a second, sent on a fixed
//!   schedule whatever the answers do) of the same; latency counts from the scheduled
//!   send, so a stall is not hidden by the callers slowing down with it.
//! - The gateway's CPU per call in each run: the CPU time of all its threads (from
//!   `/proc/PID/task/*/schedstat`, in nanoseconds) over the measured seconds, divided by
//!   the calls answered. Ratios within one run are what to read: the machine is shared.
//! - `gettoken` requests caused by 1,000 concurrent callers on a cold cache (a fresh
//!   gateway, the sandbox holding its `gettoken` answer 200 ms so every caller arrives
//!   while the one fetch is out); RSS idle, and with 1,000 and 5,000 calls in flight
//!   (the sandbox holding its answers); time from process start to SERVING.
//!
//! Every call has a deadline (`--deadline-ms`) and every answer's status is checked: a
//! run with failed calls says how many and which, and the process exits non-zero.
//! Run it through `scripts/bench.sh`, which builds it and the gateway in release mode.

use std::{
    collections::BTreeMap,
    fmt::Write as _,
    future::Future,
    net::SocketAddr,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use clap::Parser;
use tonic::transport::{Certificate, Channel, ClientTlsConfig};
use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};
use wecom_kf_upgrade::{
    grpc::pb::{self, customer_upgrade_service_client::CustomerUpgradeServiceClient},
    sandbox::{DEMO_CORP_ID, DEMO_SECRET},
};

type BoxError = Box<dyn std::error::Error + Send + Sync>;

#[derive(Debug, Parser)]
struct Args {
    /// The gateway binary (`target/release/wecom-kf-upgrade`).
    #[arg(long)]
    binary: PathBuf,
    /// Callers in the closed loops.
    #[arg(long, value_delimiter = ',', default_values_t = [1, 16, 64, 256])]
    concurrency: Vec<usize>,
    /// Calls a second in the open loops.
    #[arg(long, value_delimiter = ',', default_values_t = [100, 1000])]
    rates: Vec<u32>,
    /// Seconds per measurement, after a one-second warm-up.
    #[arg(long, default_value_t = 5)]
    duration_secs: u64,
    /// Each call's deadline (the gRPC `grpc-timeout`; the direct calls' HTTP timeout).
    #[arg(long, default_value_t = 5000)]
    deadline_ms: u64,
    /// gRPC connections the closed loops share (HTTP/2 multiplexes the rest).
    #[arg(long, default_value_t = 4)]
    connections: usize,
    /// Skip the cold-cache and memory steps (loads only).
    #[arg(long)]
    loads_only: bool,
    /// `KEY=VALUE` for the gateway's environment (repeatable), e.g. `RUST_LOG=warn`.
    #[arg(long = "gateway-env")]
    gateway_env: Vec<String>,
    /// The gateway serves TLS: verify it with this PEM CA certificate, as `localhost`.
    #[arg(long)]
    ca_file: Option<PathBuf>,
    /// Send `authorization: Bearer TOKEN` with every call.
    #[arg(long)]
    token: Option<String>,
    /// `cargo bench` passes this; ignored.
    #[arg(long, hide = true)]
    bench: bool,
}

// ---------------------------------------------------------------------------------
// Processes

/// A child process, killed when dropped; its stderr goes to a file.
struct Process {
    child: Child,
    log: PathBuf,
    started: Instant,
}

impl Process {
    fn spawn(mut command: Command, log: PathBuf) -> Result<Self, BoxError> {
        let file = std::fs::File::create(&log)?;
        let started = Instant::now();
        let child = command
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(file)
            .spawn()?;
        Ok(Self {
            child,
            log,
            started,
        })
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The address the JSON field `name` holds in the first log line that has it.
    async fn logged_addr(&self, name: &str) -> Result<SocketAddr, BoxError> {
        let needle = format!("\"{name}\":\"");
        for _ in 0..2000 {
            let log = std::fs::read_to_string(&self.log).unwrap_or_default();
            if let Some(at) = log.find(&needle) {
                let rest = &log[at + needle.len()..];
                return Ok(rest[..rest.find('"').unwrap_or(0)].parse()?);
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        Err(format!("no {name} in {}", self.log.display()).into())
    }

    /// Lines of its log.
    fn log_lines(&self) -> usize {
        std::fs::read_to_string(&self.log).map_or(0, |log| log.lines().count())
    }

    /// `VmRSS` or `VmHWM` from `/proc/PID/status`, in MiB.
    fn memory_mib(&self, field: &str) -> f64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid()));
        status
            .ok()
            .and_then(|status| {
                let line = status.lines().find(|line| line.starts_with(field))?;
                line.split_whitespace().nth(1)?.parse::<f64>().ok()
            })
            .map_or(f64::NAN, |kib| kib / 1024.0)
    }

    /// The process's CPU time so far, two ways: each live thread's nanoseconds on
    /// the CPU (`/proc/PID/task/*/schedstat`), and utime + stime of all threads,
    /// exited ones included (`/proc/PID/stat`, in clock ticks).
    fn cpu(&self) -> CpuSample {
        let pid = self.pid();
        let mut threads = BTreeMap::new();
        let tasks = std::fs::read_dir(format!("/proc/{pid}/task"));
        for task in tasks.into_iter().flatten().flatten() {
            let tid = task.file_name().to_string_lossy().parse::<u32>().ok();
            let stat = std::fs::read_to_string(task.path().join("schedstat")).ok();
            let nanos = stat.and_then(|stat| stat.split_whitespace().next()?.parse::<u64>().ok());
            if let (Some(tid), Some(nanos)) = (tid, nanos) {
                threads.insert(tid, nanos);
            }
        }
        let ticks = std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .ok()
            .and_then(|stat| {
                // After the command name (in parentheses, may hold spaces): utime is
                // the 12th field, stime the 13th.
                let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
                Some(fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?)
            })
            .unwrap_or(0);
        CpuSample { threads, ticks }
    }
}

/// A process's CPU time at one moment (see [`Process::cpu`]).
struct CpuSample {
    /// Nanoseconds on the CPU, by thread id.
    threads: BTreeMap<u32, u64>,
    /// utime + stime, in clock ticks (100 a second on Linux).
    ticks: u64,
}

impl CpuSample {
    /// The CPU used since `earlier`: to the nanosecond when every thread of then
    /// is still there (a thread started since counts from zero); from the clock
    /// ticks, which keep exited threads' time, when one has exited.
    fn since(&self, earlier: &CpuSample) -> Duration {
        let all_alive = earlier
            .threads
            .keys()
            .all(|tid| self.threads.contains_key(tid));
        if all_alive {
            let now: u64 = self.threads.values().sum();
            let then: u64 = earlier.threads.values().sum();
            Duration::from_nanos(now.saturating_sub(then))
        } else {
            Duration::from_millis(self.ticks.saturating_sub(earlier.ticks) * 10)
        }
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A scratch directory, removed when dropped.
struct Scratch(PathBuf);

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The sandbox, its base URL and its control routes.
struct Sandbox {
    /// Runs as long as the sandbox is needed.
    _process: Process,
    base: String,
    http: reqwest::Client,
}

impl Sandbox {
    async fn start(args: &Args, dir: &Path) -> Result<Self, BoxError> {
        let mut command = Command::new(&args.binary);
        command
            .args(["sandbox", "--listen", "127.0.0.1:0"])
            .env("LOG_FORMAT", "json")
            .env("RUST_LOG", "warn,wecom_kf_upgrade=info");
        without_proxies(&mut command);
        let process = Process::spawn(command, dir.join("sandbox.log"))?;
        let addr = process.logged_addr("addr").await?;
        Ok(Self {
            _process: process,
            base: format!("http://{addr}"),
            http: reqwest::Client::builder().no_proxy().build()?,
        })
    }

    /// Holds the next `times` answers on `path` for `delay`.
    async fn hold(&self, path: &str, delay: Duration, times: usize) -> Result<(), BoxError> {
        let fault = serde_json::json!({
            "path": path, "delay_ms": delay.as_millis() as u64, "times": times,
        });
        let url = format!("{}/sandbox/faults", self.base);
        let request = self.http.post(url).body(fault.to_string());
        let request = request.header(reqwest::header::CONTENT_TYPE, "application/json");
        request.send().await?.error_for_status()?;
        Ok(())
    }

    async fn clear_holds(&self) -> Result<(), BoxError> {
        let url = format!("{}/sandbox/faults", self.base);
        self.http.delete(url).send().await?.error_for_status()?;
        Ok(())
    }
}

/// A gateway process with the sandbox as its WeCom.
struct Gateway {
    process: Process,
    grpc: SocketAddr,
    admin: SocketAddr,
    /// From spawn to the first `SERVING` answer to a health check.
    to_serving: Duration,
}

impl Gateway {
    /// Starts a gateway with `config` (TOML) and waits until it answers SERVING.
    async fn start(
        args: &Args,
        sandbox: &Sandbox,
        dir: &Path,
        name: &str,
        config: &str,
    ) -> Result<Self, BoxError> {
        let config_path = dir.join(format!("{name}.toml"));
        std::fs::write(&config_path, config)?;
        let mut command = Command::new(&args.binary);
        command
            .arg("serve")
            .arg("--config")
            .arg(&config_path)
            .args(["--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0"])
            .env_remove("RUST_LOG")
            .env("LOG_FORMAT", "json")
            .env("WECOM_CORP_ID", DEMO_CORP_ID)
            .env("WECOM_CORP_SECRET", DEMO_SECRET)
            .env("WECOM_API_BASE", &sandbox.base);
        without_proxies(&mut command);
        for pair in &args.gateway_env {
            let (key, value) = pair
                .split_once('=')
                .ok_or_else(|| format!("--gateway-env {pair}: not KEY=VALUE"))?;
            command.env(key, value);
        }
        let process = Process::spawn(command, dir.join(format!("{name}.log")))?;
        let grpc = process.logged_addr("grpc_addr").await?;
        let admin = process.logged_addr("admin_addr").await?;
        let channel = connect(args, grpc).await?;
        let mut health = HealthClient::new(channel);
        let to_serving = loop {
            let request = HealthCheckRequest {
                service: String::new(),
            };
            if let Ok(answer) = health.check(authorized(args, request)).await
                && answer.get_ref().status == 1
            {
                break process.started.elapsed();
            }
            if process.started.elapsed() > Duration::from_secs(20) {
                return Err(format!("{name}: not SERVING after 20 s").into());
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        };
        Ok(Self {
            process,
            grpc,
            admin,
            to_serving,
        })
    }

    /// The sum of a counter or gauge over the series of `/metrics` whose line has
    /// every one of `parts`.
    async fn metric(&self, http: &reqwest::Client, parts: &[&str]) -> Result<f64, BoxError> {
        let url = format!("http://{}/metrics", self.admin);
        let text = http.get(url).send().await?.text().await?;
        Ok(text
            .lines()
            .filter(|line| !line.starts_with('#') && parts.iter().all(|p| line.contains(p)))
            .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
            .sum())
    }
}

/// Everything is on loopback: a proxy the machine's environment names must not
/// carry the gateway's or the sandbox's traffic.
fn without_proxies(command: &mut Command) {
    for name in ["HTTPS_PROXY", "HTTP_PROXY", "ALL_PROXY"] {
        command
            .env_remove(name)
            .env_remove(name.to_ascii_lowercase());
    }
}

async fn connect(args: &Args, addr: SocketAddr) -> Result<Channel, BoxError> {
    let endpoint = match &args.ca_file {
        Some(ca) => {
            let tls = ClientTlsConfig::new()
                .ca_certificate(Certificate::from_pem(std::fs::read(ca)?))
                .domain_name("localhost");
            Channel::from_shared(format!("https://{addr}"))?.tls_config(tls)?
        }
        None => Channel::from_shared(format!("http://{addr}"))?,
    };
    Ok(endpoint.connect().await?)
}

fn authorized<T>(args: &Args, message: T) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request.set_timeout(Duration::from_millis(args.deadline_ms));
    if let Some(token) = &args.token
        && let Ok(value) = format!("Bearer {token}").parse()
    {
        request.metadata_mut().insert("authorization", value);
    }
    request
}

// ---------------------------------------------------------------------------------
// What is called

/// The operation a run measures.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Op {
    Upgrade,
    Config,
    Health,
    Direct,
}

impl Op {
    fn name(self) -> &'static str {
        match self {
            Op::Upgrade => "UpgradeService",
            Op::Config => "GetUpgradeConfig",
            Op::Health => "Health/Check",
            Op::Direct => "direct HTTP",
        }
    }
}

/// Makes one call of each kind; cheap to clone (one per caller).
#[derive(Clone)]
struct Caller {
    upgrade: Vec<CustomerUpgradeServiceClient<Channel>>,
    health: Vec<HealthClient<Channel>>,
    http: reqwest::Client,
    direct_url: Arc<str>,
    args: Arc<Args>,
}

impl Caller {
    async fn new(args: Arc<Args>, gateway: &Gateway, sandbox: &Sandbox) -> Result<Self, BoxError> {
        let mut upgrade = Vec::new();
        let mut health = Vec::new();
        for _ in 0..args.connections.max(1) {
            let channel = connect(&args, gateway.grpc).await?;
            upgrade.push(CustomerUpgradeServiceClient::new(channel.clone()));
            health.push(HealthClient::new(channel));
        }
        let http = reqwest::Client::builder()
            .timeout(Duration::from_millis(args.deadline_ms))
            .no_proxy()
            .build()?;
        let token = http
            .get(format!("{}/cgi-bin/gettoken", sandbox.base))
            .query(&[("corpid", DEMO_CORP_ID), ("corpsecret", DEMO_SECRET)])
            .send()
            .await?
            .bytes()
            .await?;
        let token: serde_json::Value = serde_json::from_slice(&token)?;
        let token = token["access_token"]
            .as_str()
            .ok_or("the sandbox gave no access_token")?;
        let direct_url = format!(
            "{}/cgi-bin/kf/customer/upgrade_service?access_token={token}",
            sandbox.base
        );
        Ok(Self {
            upgrade,
            health,
            http,
            direct_url: direct_url.into(),
            args,
        })
    }

    /// One call; `Err` names how it failed (a gRPC code, or what went wrong).
    async fn call(&self, op: Op, n: usize) -> Result<(), String> {
        let args = &*self.args;
        let grpc = |status: tonic::Status| format!("{:?}", status.code());
        match op {
            Op::Upgrade => {
                let mut client = self.upgrade[n % self.upgrade.len()].clone();
                let request = authorized(args, upgrade_request(n));
                client
                    .upgrade_service(request)
                    .await
                    .map(drop)
                    .map_err(grpc)
            }
            Op::Config => {
                let mut client = self.upgrade[n % self.upgrade.len()].clone();
                let request = authorized(args, pb::GetUpgradeConfigRequest {});
                client
                    .get_upgrade_config(request)
                    .await
                    .map(drop)
                    .map_err(grpc)
            }
            Op::Health => {
                let mut client = self.health[n % self.health.len()].clone();
                let request = authorized(
                    args,
                    HealthCheckRequest {
                        service: String::new(),
                    },
                );
                let answer = client.check(request).await.map_err(grpc)?;
                match answer.get_ref().status {
                    1 => Ok(()),
                    status => Err(format!("health status {status}")),
                }
            }
            Op::Direct => {
                let body = serde_json::json!({
                    "open_kfid": "kfbench", "external_userid": customer(n),
                    "type": 1, "member": {"userid": "zhangsan", "wording": "bench"},
                });
                let response = self
                    .http
                    .post(&*self.direct_url)
                    .header(reqwest::header::CONTENT_TYPE, "application/json")
                    .body(body.to_string())
                    .send()
                    .await
                    .map_err(|e| format!("http: {e}"))?;
                let answer = response.bytes().await.map_err(|e| format!("http: {e}"))?;
                let answer: serde_json::Value =
                    serde_json::from_slice(&answer).map_err(|e| format!("json: {e}"))?;
                match answer["errcode"].as_i64() {
                    Some(0) => Ok(()),
                    errcode => Err(format!("errcode {errcode:?}")),
                }
            }
        }
    }
}

fn customer(n: usize) -> String {
    format!("wmbench{:05}", n % 100_000)
}

fn upgrade_request(n: usize) -> pb::UpgradeServiceRequest {
    pb::UpgradeServiceRequest {
        open_kfid: "kfbench".into(),
        external_userid: customer(n),
        target: Some(pb::upgrade_service_request::Target::Member(
            pb::MemberTarget {
                userid: "zhangsan".into(),
                wording: "bench".into(),
            },
        )),
    }
}

// ---------------------------------------------------------------------------------
// Runs

/// What one run saw.
#[derive(Default)]
struct Tally {
    latencies_us: Vec<u32>,
    failures: BTreeMap<String, u64>,
    /// Open loops: how late each call was sent after its scheduled time (the load
    /// generator's own lag, which the latencies include).
    send_lags_us: Vec<u32>,
}

impl Tally {
    fn record(&mut self, outcome: Result<(), String>, latency: Duration) {
        match outcome {
            Ok(()) => self.latencies_us.push(micros(latency)),
            Err(how) => *self.failures.entry(how).or_default() += 1,
        }
    }

    fn merge(&mut self, other: Tally) {
        self.latencies_us.extend(other.latencies_us);
        self.send_lags_us.extend(other.send_lags_us);
        for (how, n) in other.failures {
            *self.failures.entry(how).or_default() += n;
        }
    }
}

fn micros(duration: Duration) -> u32 {
    duration.as_micros().min(u128::from(u32::MAX)) as u32
}

/// The `q` quantile of sorted microseconds, in milliseconds (NaN when empty).
fn quantile_ms(sorted: &[u32], q: f64) -> f64 {
    let index = ((sorted.len() as f64 * q) as usize).min(sorted.len().saturating_sub(1));
    sorted
        .get(index)
        .map_or(f64::NAN, |us| f64::from(*us) / 1000.0)
}

/// A run's figures.
struct Run {
    op: Op,
    /// `c64` (closed loop, 64 callers) or `100/s` (open loop).
    load: String,
    calls: usize,
    failures: BTreeMap<String, u64>,
    per_sec: f64,
    p50_ms: f64,
    p99_ms: f64,
    p999_ms: f64,
    /// The gateway's CPU per answered call (none for direct calls).
    cpu_us: Option<f64>,
    /// Open loops: p99 of the load generator's own send lag.
    send_lag_p99_ms: Option<f64>,
}

impl Run {
    fn of(
        op: Op,
        load: String,
        mut tally: Tally,
        elapsed: Duration,
        cpu: Option<Duration>,
    ) -> Self {
        tally.latencies_us.sort_unstable();
        tally.send_lags_us.sort_unstable();
        let all = &tally.latencies_us;
        let calls = all.len();
        let lags = &tally.send_lags_us;
        Run {
            op,
            load,
            calls,
            per_sec: calls as f64 / elapsed.as_secs_f64(),
            p50_ms: quantile_ms(all, 0.50),
            p99_ms: quantile_ms(all, 0.99),
            p999_ms: quantile_ms(all, 0.999),
            cpu_us: cpu.map(|cpu| cpu.as_secs_f64() * 1e6 / calls.max(1) as f64),
            send_lag_p99_ms: (!lags.is_empty()).then(|| quantile_ms(lags, 0.99)),
            failures: tally.failures,
        }
    }

    fn row(&self) -> String {
        let cpu = self.cpu_us.map_or("-".to_owned(), |us| format!("{us:.1}"));
        let failed: u64 = self.failures.values().sum();
        let lag = self
            .send_lag_p99_ms
            .map_or("-".to_owned(), |ms| format!("{ms:.2}"));
        format!(
            "{:<17} {:>6} {:>8} {:>9.0} {:>8.2} {:>8.2} {:>8.2} {:>9} {:>7} {:>9}",
            self.op.name(),
            self.load,
            self.calls,
            self.per_sec,
            self.p50_ms,
            self.p99_ms,
            self.p999_ms,
            cpu,
            failed,
            lag
        )
    }
}

/// Where a run's CPU is read: the gateway process, for calls through it.
fn cpu_of(op: Op, gateway: &Gateway) -> Option<&Process> {
    (op != Op::Direct).then_some(&gateway.process)
}

/// `concurrency` callers, each sending its next call when the last is answered:
/// one second of warm-up, then `duration`.
async fn closed(caller: &Caller, op: Op, concurrency: usize, cpu: Option<&Process>) -> Run {
    let duration = Duration::from_secs(caller.args.duration_secs);
    let warm_up = Instant::now() + Duration::from_secs(1);
    let end = warm_up + duration;
    let workers: Vec<_> = (0..concurrency)
        .map(|worker| {
            let caller = caller.clone();
            tokio::spawn(async move {
                let mut tally = Tally::default();
                let mut n = worker;
                loop {
                    let started = Instant::now();
                    if started >= end {
                        return tally;
                    }
                    let outcome = caller.call(op, n).await;
                    if started >= warm_up {
                        tally.record(outcome, started.elapsed());
                    }
                    n += concurrency;
                }
            })
        })
        .collect();
    let cpu = measure_cpu(cpu, warm_up, end).await;
    let mut tally = Tally::default();
    for worker in workers {
        tally.merge(worker.await.unwrap_or_default());
    }
    Run::of(op, format!("c{concurrency}"), tally, duration, cpu)
}

/// `rate` calls a second on a fixed schedule, each on its own task: one second of
/// warm-up, then `duration`. Latency counts from the scheduled start.
async fn open(caller: &Caller, op: Op, rate: u32, cpu: Option<&Process>) -> Run {
    let duration = Duration::from_secs(caller.args.duration_secs);
    let start = Instant::now();
    let warm_up = start + Duration::from_secs(1);
    let end = warm_up + duration;
    let tally = Arc::new(Mutex::new(Tally::default()));
    let interval = Duration::from_secs(1) / rate.max(1);
    let schedule = {
        let (caller, tally) = (caller.clone(), Arc::clone(&tally));
        tokio::spawn(async move {
            let mut calls = tokio::task::JoinSet::new();
            for n in 0.. {
                let at = start + interval * n;
                if at >= end {
                    break;
                }
                tokio::time::sleep_until(at.into()).await;
                let (caller, tally) = (caller.clone(), Arc::clone(&tally));
                calls.spawn(async move {
                    let lag = at.elapsed();
                    let outcome = caller.call(op, n as usize).await;
                    if at >= warm_up {
                        let mut tally = tally.lock().unwrap_or_else(|e| e.into_inner());
                        tally.record(outcome, at.elapsed());
                        tally.send_lags_us.push(micros(lag));
                    }
                });
            }
            while calls.join_next().await.is_some() {}
        })
    };
    let cpu = measure_cpu(cpu, warm_up, end).await;
    let _ = schedule.await;
    let tally = std::mem::take(&mut *tally.lock().unwrap_or_else(|e| e.into_inner()));
    Run::of(op, format!("{rate}/s"), tally, duration, cpu)
}

/// The CPU `process` used between `from` and `to` (waiting until `to`).
async fn measure_cpu(process: Option<&Process>, from: Instant, to: Instant) -> Option<Duration> {
    tokio::time::sleep_until(from.into()).await;
    let before = process.map(Process::cpu);
    tokio::time::sleep_until(to.into()).await;
    Some(process?.cpu().since(&before?))
}

/// Starts `n` calls of `op` at once and waits for them all.
async fn burst<F, Fut>(n: usize, call: F) -> Tally
where
    F: Fn(usize) -> Fut,
    Fut: Future<Output = Result<(), String>> + Send + 'static,
{
    let calls: Vec<_> = (0..n)
        .map(|i| {
            let call = call(i);
            tokio::spawn(async move {
                let started = Instant::now();
                (call.await, started.elapsed())
            })
        })
        .collect();
    let mut tally = Tally::default();
    for call in calls {
        match call.await {
            Ok((outcome, latency)) => tally.record(outcome, latency),
            Err(e) => tally.record(Err(format!("task: {e}")), Duration::ZERO),
        }
    }
    tally
}

/// RSS while `n` `UpgradeService` calls are in the gateway: the sandbox holds its
/// answers, the calls are counted in `rpc_in_flight`, then they are cancelled.
async fn rss_with_calls_in_flight(
    args: &Arc<Args>,
    gateway: &Gateway,
    sandbox: &Sandbox,
    n: usize,
) -> Result<f64, BoxError> {
    const UPGRADE: &str = "/cgi-bin/kf/customer/upgrade_service";
    sandbox.hold(UPGRADE, Duration::from_secs(60), n).await?;
    // The server allows 200 streams per connection.
    let mut clients = Vec::new();
    for _ in 0..n.div_ceil(150) {
        clients.push(CustomerUpgradeServiceClient::new(
            connect(args, gateway.grpc).await?,
        ));
    }
    let calls: Vec<_> = (0..n)
        .map(|i| {
            let mut client = clients[i % clients.len()].clone();
            let mut request = authorized(args, upgrade_request(i));
            request.set_timeout(Duration::from_secs(60));
            tokio::spawn(async move { client.upgrade_service(request).await })
        })
        .collect();
    let in_flight = ["rpc_in_flight{", "UpgradeService"];
    let mut held = 0.0;
    for _ in 0..300 {
        held = gateway.metric(&sandbox.http, &in_flight).await?;
        if held >= n as f64 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Let the allocator settle into what the calls hold.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let rss = gateway.process.memory_mib("VmRSS");
    // Still all there when RSS was read (none timed out meanwhile).
    held = held.min(gateway.metric(&sandbox.http, &in_flight).await?);
    for call in &calls {
        call.abort();
    }
    drop(clients);
    sandbox.clear_holds().await?;
    if held < n as f64 {
        return Err(format!("only {held} of {n} calls reached the gateway").into());
    }
    Ok(rss)
}

// ---------------------------------------------------------------------------------
// The report

/// A target the gateway is held to.
struct Target {
    what: String,
    measured: String,
    met: bool,
}

fn targets_table(targets: &[Target]) -> String {
    let mut out = String::from(
        "\ntarget                                                        measured                 met\n",
    );
    for t in targets {
        let _ = writeln!(
            out,
            "{:<61} {:<24} {}",
            t.what,
            t.measured,
            if t.met { "met" } else { "NOT MET" }
        );
    }
    out
}

/// The run of `op` at `load`, if it ran and every call in it succeeded: a run
/// with failures meets no target.
fn clean_run<'a>(runs: &'a [Run], op: Op, load: &str) -> Option<&'a Run> {
    runs.iter()
        .find(|run| run.op == op && run.load == load && run.failures.is_empty())
}

/// The gateway's CPU ratio of `UpgradeService` to `Health/Check` in the runs of `load`.
fn cpu_ratio(runs: &[Run], load: &str) -> Option<(f64, f64, f64)> {
    let cpu = |op| clean_run(runs, op, load)?.cpu_us;
    let (upgrade, health) = (cpu(Op::Upgrade)?, cpu(Op::Health)?);
    Some((upgrade / health, upgrade, health))
}

fn p99(runs: &[Run], op: Op, load: &str) -> Option<f64> {
    Some(clean_run(runs, op, load)?.p99_ms)
}

/// The gateway's configuration: the defaults, but for WeCom's frequency limits,
/// which the sandbox does not need kept (the run measures the gateway).
const LIMITS_LIFTED: &str =
    "[limits]\ncorp_api_per_minute = 1000000\ncorp_api_per_hour = 100000000\n";

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    let args = Arc::new(Args::parse());
    let dir = std::env::temp_dir().join(format!("wecom-kf-upgrade-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let _scratch = Scratch(dir.clone());
    let sandbox = Sandbox::start(&args, &dir).await?;
    let mut targets = Vec::new();
    let mut failed = 0;

    let gateway = Gateway::start(&args, &sandbox, &dir, "gateway", LIMITS_LIFTED).await?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let idle_rss = gateway.process.memory_mib("VmRSS");
    println!(
        "# {} cores; the gateway (pid {}), the sandbox and this load generator share them",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        gateway.process.pid(),
    );
    println!(
        "# {} s per run after 1 s of warm-up; deadline {} ms; latency in ms; CPU: the gateway's, µs per call",
        args.duration_secs, args.deadline_ms
    );

    if !args.loads_only {
        // A cold cache: the first fetch is held so that every caller arrives during it.
        let cold = Gateway::start(&args, &sandbox, &dir, "cold", LIMITS_LIFTED).await?;
        // The caller first: it asks the sandbox for a token of its own (for direct
        // calls), which must not be the answer held.
        let caller = Caller::new(Arc::clone(&args), &cold, &sandbox).await?;
        let hold = Duration::from_millis(200);
        sandbox.hold("/cgi-bin/gettoken", hold, 1).await?;
        let mut tally = burst(1000, |i| {
            let caller = caller.clone();
            async move { caller.call(Op::Upgrade, i).await }
        })
        .await;
        let fetches = cold
            .metric(
                &sandbox.http,
                &["wecom_requests_total{", "/cgi-bin/gettoken"],
            )
            .await?;
        let cold_failures: u64 = tally.failures.values().sum();
        if cold_failures > 0 {
            println!("cold burst failures: {:?}", tally.failures);
            failed += cold_failures;
        }
        // Every caller waited for the held fetch: none was answered sooner.
        tally.latencies_us.sort_unstable();
        let fastest = tally
            .latencies_us
            .first()
            .map_or(Duration::ZERO, |us| Duration::from_micros(u64::from(*us)));
        targets.push(Target {
            what: "gettoken requests for 1,000 concurrent cold callers: exactly 1".into(),
            measured: format!("{fetches} (fastest call {} ms)", fastest.as_millis()),
            met: fetches == 1.0 && cold_failures == 0 && fastest >= hold,
        });
        targets.push(Target {
            what: "SERVING within 200 ms of process start".into(),
            measured: format!(
                "{:.0} ms, {:.0} ms",
                gateway.to_serving.as_secs_f64() * 1e3,
                cold.to_serving.as_secs_f64() * 1e3
            ),
            met: gateway.to_serving.max(cold.to_serving) <= Duration::from_millis(200),
        });
    }

    let caller = Caller::new(Arc::clone(&args), &gateway, &sandbox).await?;
    let mut runs = Vec::new();
    println!(
        "\n{:<17} {:>6} {:>8} {:>9} {:>8} {:>8} {:>8} {:>9} {:>7} {:>9}",
        "call", "load", "calls", "calls/s", "p50", "p99", "p99.9", "CPU µs", "failed", "send lag"
    );
    for &concurrency in &args.concurrency {
        for op in [Op::Upgrade, Op::Config, Op::Health, Op::Direct] {
            let run = closed(&caller, op, concurrency, cpu_of(op, &gateway)).await;
            println!("{}", run.row());
            runs.push(run);
        }
    }
    for &rate in &args.rates {
        for op in [Op::Upgrade, Op::Health, Op::Direct] {
            let run = open(&caller, op, rate, cpu_of(op, &gateway)).await;
            println!("{}", run.row());
            runs.push(run);
        }
    }
    for run in &runs {
        if !run.failures.is_empty() {
            println!(
                "{} {} failures: {:?}",
                run.op.name(),
                run.load,
                run.failures
            );
            failed += run.failures.values().sum::<u64>();
        }
    }

    for load in ["c64", "100/s"] {
        if let Some((ratio, upgrade, health)) = cpu_ratio(&runs, load) {
            targets.push(Target {
                what: format!("CPU per UpgradeService ≤ 2.5× per Health/Check, {load}"),
                measured: format!("{ratio:.2}× ({upgrade:.1} / {health:.1} µs)"),
                met: ratio <= 2.5,
            });
        }
    }
    if let (Some(through), Some(direct)) = (
        p99(&runs, Op::Upgrade, "1000/s"),
        p99(&runs, Op::Direct, "1000/s"),
    ) {
        let added = through - direct;
        targets.push(Target {
            what: "p99 latency added by the gateway ≤ 1 ms, 1000/s".into(),
            measured: format!("{added:.2} ms ({through:.2} − {direct:.2})"),
            met: added <= 1.0,
        });
    }

    if !args.loads_only {
        let rss_1000 = rss_with_calls_in_flight(&args, &gateway, &sandbox, 1000).await?;
        // 5,000 calls in flight need the in-flight cap (2,000 by default) raised.
        let config = format!("{LIMITS_LIFTED}[server]\nmax_calls_in_flight = 5000\n");
        let wide = Gateway::start(&args, &sandbox, &dir, "wide", &config).await?;
        let rss_5000 = rss_with_calls_in_flight(&args, &wide, &sandbox, 5000).await?;
        targets.push(Target {
            what: "RSS idle < 20 MiB".into(),
            measured: format!("{idle_rss:.1} MiB"),
            met: idle_rss < 20.0,
        });
        targets.push(Target {
            what: "RSS at 1,000 / 5,000 calls in flight < 100 MiB".into(),
            measured: format!("{rss_1000:.1} / {rss_5000:.1} MiB"),
            met: rss_1000.max(rss_5000) < 100.0,
        });
    }
    println!(
        "\ngateway: peak RSS {:.1} MiB, {} log lines",
        gateway.process.memory_mib("VmHWM"),
        gateway.process.log_lines()
    );
    print!("{}", targets_table(&targets));
    if failed > 0 {
        return Err(format!("{failed} calls failed").into());
    }
    Ok(())
}
