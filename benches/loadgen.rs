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
//! With `--pid`, the gateway process's CPU time per call in each run, from
//! `/proc/PID/stat`, which noise on a shared machine disturbs less than wall time.
//! Run through `scripts/bench.sh`, which starts the gateway and reads its memory.

use std::{
    path::PathBuf,
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
    /// The gateway serves TLS: verify it with this PEM CA certificate, as `localhost`.
    #[arg(long)]
    ca_file: Option<PathBuf>,
    /// Send `authorization: Bearer TOKEN` with every call.
    #[arg(long)]
    token: Option<String>,
    /// The gateway's process id: report its CPU time per call.
    #[arg(long)]
    pid: Option<u32>,
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
    /// The gateway process's CPU time per call, microseconds, with `--pid`.
    cpu_us_per_call: Option<f64>,
    calls: usize,
    errors: u64,
    per_sec: f64,
    p50: f64,
    p90: f64,
    p99: f64,
    max: f64,
}

impl Summary {
    fn of(name: &'static str, tallies: Vec<Tally>, elapsed: Duration) -> Self {
        let errors = tallies.iter().map(|t| t.errors).sum();
        let mut all: Vec<u32> = tallies.into_iter().flat_map(|t| t.latencies_us).collect();
        all.sort_unstable();
        let at = |q: f64| {
            let index = ((all.len() as f64 * q) as usize).min(all.len().saturating_sub(1));
            all.get(index).map_or(0.0, |us| f64::from(*us) / 1000.0)
        };
        Summary {
            name,
            cpu_us_per_call: None,
            calls: all.len(),
            errors,
            per_sec: all.len() as f64 / elapsed.as_secs_f64(),
            p50: at(0.50),
            p90: at(0.90),
            p99: at(0.99),
            max: all.last().map_or(0.0, |us| f64::from(*us) / 1000.0),
        }
    }

    fn print(&self) {
        let cpu = self
            .cpu_us_per_call
            .map_or_else(String::new, |us| format!(" {us:>10.1}"));
        println!(
            "{:<8} {:>9} {:>7} {:>10.0} {:>8.2} {:>8.2} {:>8.2} {:>8.2}{cpu}",
            self.name,
            self.calls,
            self.errors,
            self.per_sec,
            self.p50,
            self.p90,
            self.p99,
            self.max
        );
    }
}

/// The CPU time (user + system, every thread) the process has used, from
/// `/proc/PID/stat`, in microseconds. Linux reports it in USER_HZ ticks, which the
/// kernel's user ABI fixes at 100 a second.
fn cpu_time_us(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may hold spaces: fields are counted after its closing parenthesis.
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    let ticks = |i: usize| fields.get(i)?.parse::<u64>().ok();
    // utime and stime are fields 14 and 15 of the line, 12 and 13 after the name.
    Some((ticks(11)? + ticks(12)?) * 10_000)
}

/// `measure`, with the CPU time `pid` spent per call during it.
async fn measure_cpu<F, Fut>(
    pid: Option<u32>,
    name: &'static str,
    concurrency: usize,
    duration: Duration,
    call: F,
) -> Summary
where
    F: Fn(usize) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = bool> + Send,
{
    let before = pid.and_then(cpu_time_us);
    let started = Instant::now();
    let mut summary = measure(name, concurrency, duration, call).await;
    let after = pid.and_then(cpu_time_us);
    // The warm-up second is included: count its calls at the measured rate.
    let calls = summary.per_sec * started.elapsed().as_secs_f64();
    if let (Some(before), Some(after)) = (before, after) {
        summary.cpu_us_per_call = Some((after - before) as f64 / calls.max(1.0));
    }
    summary
}

/// Runs `call` in `concurrency` closed loops: one second of warm-up, then `duration`.
async fn measure<F, Fut>(
    name: &'static str,
    concurrency: usize,
    duration: Duration,
    call: F,
) -> Summary
where
    F: Fn(usize) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = bool> + Send,
{
    let call = Arc::new(call);
    let warm_up = Instant::now() + Duration::from_secs(1);
    let end = warm_up + duration;
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
    Summary::of(name, tallies, duration)
}

fn customer(worker: usize) -> String {
    format!("wmbench{worker:05}")
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = Args::parse();
    let duration = Duration::from_secs(args.duration_secs);

    // direct: the caller does WeCom's HTTP itself, with one token.
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
    let direct = measure_cpu(
        args.pid,
        "direct",
        args.concurrency,
        duration,
        move |worker| {
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
        },
    )
    .await;

    // gateway: the same operation through gRPC.
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
    let gateway = measure_cpu(
        args.pid,
        "gateway",
        args.concurrency,
        duration,
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

    println!(
        "concurrency {}, {} s per run after 1 s warm-up; latencies in ms",
        args.concurrency, args.duration_secs
    );
    let cpu_header = if args.pid.is_some() {
        " cpu_us/call"
    } else {
        ""
    };
    println!(
        "{:<8} {:>9} {:>7} {:>10} {:>8} {:>8} {:>8} {:>8}{cpu_header}",
        "path", "calls", "errors", "calls/s", "p50", "p90", "p99", "max"
    );
    direct.print();
    gateway.print();
    println!(
        "gateway/direct: throughput {:.2}x, p50 latency {:.2}x",
        gateway.per_sec / direct.per_sec.max(f64::MIN_POSITIVE),
        gateway.p50 / direct.p50.max(f64::MIN_POSITIVE)
    );
    if direct.errors + gateway.errors > 0 {
        return Err(format!(
            "{} direct and {} gateway calls failed",
            direct.errors, gateway.errors
        )
        .into());
    }
    Ok(())
}
