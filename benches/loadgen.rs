//! A closed-loop load generator: `concurrency` workers each send one request,
//! wait for the answer, and send the next, for `duration`. It measures, in one run,
//! the same operation two ways:
//!
//! - `direct`: plain HTTP/JSON straight to the sandbox (`upgrade_service` with a token),
//!   what a caller without the gateway would do;
//! - `gateway`: gRPC `UpgradeService` through the gateway, which adds validation, the
//!   token cache, error mapping and the hop to the same sandbox.
//!
//! The ratio of the two is the gateway's cost; absolute figures depend on the machine.
//! Run through `scripts/bench.sh`, which starts the gateway and reads its memory.

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use clap::Parser;
use tonic::transport::{Certificate, Channel, ClientTlsConfig};
use wecom_kf_upgrade::{
    grpc::pb::{self, customer_upgrade_service_client::CustomerUpgradeServiceClient},
    sandbox::{DEMO_CORP_ID, DEMO_SECRET},
};

#[derive(Debug, Parser)]
struct Args {
    /// The gateway's gRPC address.
    #[arg(long, default_value = "127.0.0.1:50051")]
    gateway: String,
    /// The sandbox's base URL (the one the gateway uses).
    #[arg(long, default_value = "http://127.0.0.1:9465")]
    sandbox: String,
    /// Requests in flight at once.
    #[arg(long, default_value_t = 64)]
    concurrency: usize,
    /// Seconds per measurement (after a one-second warm-up).
    #[arg(long, default_value_t = 10)]
    duration_secs: u64,
    /// gRPC connections the workers share (HTTP/2 multiplexes the rest).
    #[arg(long, default_value_t = 4)]
    connections: usize,
    /// The gateway's process id: its CPU time (utime + stime from /proc) over the
    /// gateway measurement is reported per call.
    #[arg(long)]
    gateway_pid: Option<u32>,
    /// Measure the gateway path only (e.g. for its CPU per call).
    #[arg(long)]
    gateway_only: bool,
    /// The gateway serves TLS: verify it with this PEM CA certificate, as `localhost`.
    #[arg(long)]
    ca_file: Option<std::path::PathBuf>,
    /// Send `authorization: Bearer TOKEN` with every call.
    #[arg(long)]
    token: Option<String>,
    /// `cargo bench` passes this; ignored.
    #[arg(long, hide = true)]
    bench: bool,
}

/// What one worker saw.
#[derive(Default)]
struct Tally {
    latencies_us: Vec<u32>,
    errors: u64,
}

/// One measurement's summary.
struct Summary {
    name: &'static str,
    calls: usize,
    errors: u64,
    per_sec: f64,
    p50: f64,
    p90: f64,
    p99: f64,
    max: f64,
    /// CPU seconds the measured process spent over the measurement, if one was named.
    cpu: Option<Duration>,
}

impl Summary {
    fn of(
        name: &'static str,
        tallies: Vec<Tally>,
        elapsed: Duration,
        cpu: Option<Duration>,
    ) -> Self {
        let errors = tallies.iter().map(|t| t.errors).sum();
        let mut all: Vec<u32> = tallies.into_iter().flat_map(|t| t.latencies_us).collect();
        all.sort_unstable();
        let at = |q: f64| {
            let index = ((all.len() as f64 * q) as usize).min(all.len().saturating_sub(1));
            all.get(index).map_or(0.0, |us| f64::from(*us) / 1000.0)
        };
        Summary {
            name,
            calls: all.len(),
            errors,
            per_sec: all.len() as f64 / elapsed.as_secs_f64(),
            p50: at(0.50),
            p90: at(0.90),
            p99: at(0.99),
            max: all.last().map_or(0.0, |us| f64::from(*us) / 1000.0),
            cpu,
        }
    }

    fn print(&self) {
        println!(
            "{:<8} {:>9} {:>7} {:>10.0} {:>8.2} {:>8.2} {:>8.2} {:>8.2}",
            self.name,
            self.calls,
            self.errors,
            self.per_sec,
            self.p50,
            self.p90,
            self.p99,
            self.max
        );
        if let Some(cpu) = self.cpu {
            println!(
                "{} process CPU: {:.2} s over the run, {:.1} µs per call",
                self.name,
                cpu.as_secs_f64(),
                cpu.as_secs_f64() * 1e6 / self.calls.max(1) as f64
            );
        }
    }
}

/// CPU time a process has used (utime + stime from `/proc/PID/stat`: all its
/// threads, in clock ticks).
fn cpu_time(pid: u32) -> Option<Duration> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name, which is in parentheses and may hold spaces:
    // state is field 3, utime 14 and stime 15.
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    let ticks: u64 = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    Some(Duration::from_secs_f64(
        ticks as f64 / clock_ticks_per_second(),
    ))
}

/// `getconf CLK_TCK`, 100 if it cannot be asked.
fn clock_ticks_per_second() -> f64 {
    static TICKS: std::sync::OnceLock<f64> = std::sync::OnceLock::new();
    *TICKS.get_or_init(|| {
        std::process::Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|out| String::from_utf8(out.stdout).ok()?.trim().parse().ok())
            .unwrap_or(100.0)
    })
}

/// Runs `call` in `concurrency` closed loops: one second of warm-up, then `duration`.
/// With `cpu_of`, that process's CPU time over the measured `duration` is read too.
async fn measure<F, Fut>(
    name: &'static str,
    concurrency: usize,
    duration: Duration,
    cpu_of: Option<u32>,
    call: F,
) -> Summary
where
    F: Fn(usize) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = bool> + Send,
{
    let call = Arc::new(call);
    let warm_up = Instant::now() + Duration::from_secs(1);
    let end = warm_up + duration;
    let cpu = cpu_of.map(|pid| {
        tokio::spawn(async move {
            tokio::time::sleep_until(warm_up.into()).await;
            let before = cpu_time(pid)?;
            tokio::time::sleep_until(end.into()).await;
            Some(cpu_time(pid)?.saturating_sub(before))
        })
    });
    let workers: Vec<_> = (0..concurrency)
        .map(|worker| {
            let call = Arc::clone(&call);
            tokio::spawn(async move {
                let mut tally = Tally::default();
                loop {
                    let started = Instant::now();
                    if started >= end {
                        return tally;
                    }
                    let ok = call(worker).await;
                    if started >= warm_up {
                        if ok {
                            let us = started.elapsed().as_micros().min(u128::from(u32::MAX));
                            tally.latencies_us.push(us as u32);
                        } else {
                            tally.errors += 1;
                        }
                    }
                }
            })
        })
        .collect();
    let mut tallies = Vec::with_capacity(concurrency);
    for worker in workers {
        tallies.push(worker.await.unwrap_or_default());
    }
    let cpu = match cpu {
        Some(sampler) => sampler.await.ok().flatten(),
        None => None,
    };
    Summary::of(name, tallies, duration, cpu)
}

fn customer(worker: usize) -> String {
    format!("wmbench{worker:05}")
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = Args::parse();
    let direct = if args.gateway_only {
        None
    } else {
        Some(direct(&args).await?)
    };
    let gateway = gateway(&args).await?;

    println!(
        "concurrency {}, {} s per run after 1 s warm-up; latencies in ms",
        args.concurrency, args.duration_secs
    );
    println!(
        "{:<8} {:>9} {:>7} {:>10} {:>8} {:>8} {:>8} {:>8}",
        "path", "calls", "errors", "calls/s", "p50", "p90", "p99", "max"
    );
    if let Some(direct) = &direct {
        direct.print();
    }
    gateway.print();
    if let Some(direct) = &direct {
        println!(
            "gateway/direct: throughput {:.2}x, p50 latency {:.2}x",
            gateway.per_sec / direct.per_sec.max(f64::MIN_POSITIVE),
            gateway.p50 / direct.p50.max(f64::MIN_POSITIVE)
        );
    }
    let direct_errors = direct.map_or(0, |direct| direct.errors);
    if direct_errors + gateway.errors > 0 {
        return Err(format!(
            "{direct_errors} direct and {} gateway calls failed",
            gateway.errors
        )
        .into());
    }
    Ok(())
}

/// The caller does WeCom's HTTP itself, with one token.
async fn direct(args: &Args) -> Result<Summary, Box<dyn std::error::Error>> {
    let http = reqwest::Client::new();
    let token_answer: serde_json::Value = serde_json::from_slice(
        &http
            .get(format!("{}/cgi-bin/gettoken", args.sandbox))
            .query(&[("corpid", DEMO_CORP_ID), ("corpsecret", DEMO_SECRET)])
            .send()
            .await?
            .bytes()
            .await?,
    )?;
    let token = token_answer["access_token"]
        .as_str()
        .ok_or("the sandbox gave no access_token")?
        .to_owned();
    let url = format!(
        "{}/cgi-bin/kf/customer/upgrade_service?access_token={token}",
        args.sandbox
    );
    let duration = Duration::from_secs(args.duration_secs);
    let direct = measure("direct", args.concurrency, duration, None, move |worker| {
        let (http, url) = (http.clone(), url.clone());
        async move {
            let body = serde_json::json!({
                "open_kfid": "kfbench", "external_userid": customer(worker),
                "type": 1, "member": {"userid": "zhangsan", "wording": "bench"},
            });
            let request = http
                .post(&url)
                .header(reqwest::header::CONTENT_TYPE, "application/json")
                .body(body.to_string());
            let Ok(response) = request.send().await else {
                return false;
            };
            let Ok(bytes) = response.bytes().await else {
                return false;
            };
            serde_json::from_slice::<serde_json::Value>(&bytes)
                .is_ok_and(|answer| answer["errcode"] == 0)
        }
    })
    .await;
    Ok(direct)
}

/// The same operation through the gateway, over gRPC.
async fn gateway(args: &Args) -> Result<Summary, Box<dyn std::error::Error>> {
    let mut clients = Vec::with_capacity(args.connections);
    for _ in 0..args.connections.max(1) {
        let channel = match &args.ca_file {
            Some(ca) => {
                let tls = ClientTlsConfig::new()
                    .ca_certificate(Certificate::from_pem(std::fs::read(ca)?))
                    .domain_name("localhost");
                Channel::from_shared(format!("https://{}", args.gateway))?.tls_config(tls)?
            }
            None => Channel::from_shared(format!("http://{}", args.gateway))?,
        };
        clients.push(CustomerUpgradeServiceClient::new(channel.connect().await?));
    }
    let bearer: Option<tonic::metadata::MetadataValue<_>> = match &args.token {
        Some(token) => Some(format!("Bearer {token}").parse()?),
        None => None,
    };
    let duration = Duration::from_secs(args.duration_secs);
    let gateway = measure(
        "gateway",
        args.concurrency,
        duration,
        args.gateway_pid,
        move |worker| {
            let mut client = clients[worker % clients.len()].clone();
            let bearer = bearer.clone();
            async move {
                let message = pb::UpgradeServiceRequest {
                    open_kfid: "kfbench".into(),
                    external_userid: customer(worker),
                    target: Some(pb::upgrade_service_request::Target::Member(
                        pb::MemberTarget {
                            userid: "zhangsan".into(),
                            wording: "bench".into(),
                        },
                    )),
                };
                let mut request = tonic::Request::new(message);
                if let Some(bearer) = bearer {
                    request.metadata_mut().insert("authorization", bearer);
                }
                client.upgrade_service(request).await.is_ok()
            }
        },
    )
    .await;
    Ok(gateway)
}
