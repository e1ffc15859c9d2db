//! criterion micro-benchmarks of the steps every call takes, in the gateway's
//! default configuration where one applies (the JSON access log at `info`, into a
//! sink here; metrics on):
//!
//! - `token_read`: a cached access token handed to a call, from one thread and from
//!   two at once (per call: the two-thread figure must not be slower);
//! - `upgrade_body`: an `UpgradeService` request checked and encoded as WeCom's JSON;
//! - `status_of_refusal`: a WeCom errcode mapped to the caller's status and ErrorInfo;
//! - `record_call`: a call taken in and finished: span, metrics, access log line.
//!
//! `cargo bench --bench hot_paths`; `scripts/bench.sh` runs the load benchmark.

use std::{
    future::Future,
    hint::black_box,
    pin::pin,
    sync::Arc,
    task::{Context, Poll, Waker},
    time::Duration,
};

use async_trait::async_trait;
use criterion::{Criterion, criterion_group, criterion_main};
use wecom_kf_upgrade::{
    auth::Access,
    config::{TokenSettings, UpstreamSettings},
    grpc::{hot_paths, pb},
    telemetry::{self, LogFormat, Metrics},
    wecom::{AccessToken, Error, IssuedToken, TokenCache, TokenSource},
};

/// The gateway's allocator, so that copies and allocations cost what they do there.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// A token source that always issues the same token, valid for two hours: 214
/// characters, as long as the tokens WeCom issues (it asks for 512 bytes of room).
#[derive(Debug)]
struct FixedToken;

#[async_trait]
impl TokenSource for FixedToken {
    async fn fetch(&self, _attempt: u32) -> Result<IssuedToken, Error> {
        Ok(IssuedToken {
            token: AccessToken::new("t".repeat(214)),
            expires_in: Duration::from_secs(7200),
        })
    }
}

/// Polls a future once: a cached token is ready at once, and a read that had to
/// wait would show as a panic here rather than as a fast figure.
fn ready<F: Future>(future: F) -> F::Output {
    let mut context = Context::from_waker(Waker::noop());
    match pin!(future).poll(&mut context) {
        Poll::Ready(output) => output,
        Poll::Pending => panic!("the token was not cached"),
    }
}

fn token_read(c: &mut Criterion) {
    let runtime = tokio::runtime::Runtime::new().expect("a runtime");
    let cache = runtime.block_on(async {
        let cache = TokenCache::new(
            "bench",
            Arc::new(FixedToken),
            // The defaults of `[token]` and `[upstream]`.
            TokenSettings::default().policy(),
            UpstreamSettings::default().retry(),
            &Metrics::new(),
        );
        cache.get().await.expect("the first fetch");
        Arc::new(cache)
    });
    let mut group = c.benchmark_group("token_read");
    group.bench_function("uncontended", |b| b.iter(|| black_box(ready(cache.get()))));
    // CPU time per read on each of 1 and of 2 threads reading at once: what the
    // threads share (a lock word, a reference count) would show as more CPU per
    // read with 2. CPU time, not wall time: on a busy machine two threads may not
    // run at once, and wall time would count the wait.
    for threads in [1, 2] {
        group.bench_function(format!("{threads}_threads_cpu"), |b| {
            b.iter_custom(|iters| reads_on_threads(&cache, threads, iters));
        });
    }
    group.finish();
    drop(runtime);
}

/// Mean CPU time of `iters` reads on each of `threads` threads, started together.
fn reads_on_threads(cache: &TokenCache, threads: u32, iters: u64) -> Duration {
    let start = std::sync::Barrier::new(threads as usize);
    let total: Duration = std::thread::scope(|scope| {
        let readers: Vec<_> = (0..threads)
            .map(|_| {
                scope.spawn(|| {
                    start.wait();
                    let before = thread_cpu();
                    for _ in 0..iters {
                        black_box(ready(cache.get())).ok();
                    }
                    thread_cpu().saturating_sub(before)
                })
            })
            .collect();
        readers
            .into_iter()
            .map(|reader| reader.join().expect("a reader panicked"))
            .sum()
    });
    total / threads
}

/// The calling thread's CPU time, to the nanosecond (`CLOCK_THREAD_CPUTIME_ID`;
/// schedstat is only brought up to date at a tick or a switch).
fn thread_cpu() -> Duration {
    let mut now = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `now` is a valid, writable timespec; the clock id is a constant the
    // kernel knows.
    let status = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut now) };
    assert_eq!(status, 0, "clock_gettime(CLOCK_THREAD_CPUTIME_ID)");
    Duration::new(now.tv_sec as u64, now.tv_nsec as u32)
}

fn upgrade_request() -> pb::UpgradeServiceRequest {
    pb::UpgradeServiceRequest {
        open_kfid: "wkAJ2GCAAAZSfhHCt7IFSvLKtMPxyJTw".into(),
        external_userid: "wmAJ2GCAAAZSfhHCt7IFSvLKtMPxyAAA".into(),
        target: Some(pb::upgrade_service_request::Target::Member(
            pb::MemberTarget {
                userid: "zhangsan".into(),
                wording: "你好，我是你的专属服务专员张三".into(),
            },
        )),
    }
}

fn conversions(c: &mut Criterion) {
    c.bench_function("upgrade_body", |b| {
        b.iter_batched(
            upgrade_request,
            |request| black_box(hot_paths::upgrade_body(request)),
            criterion::BatchSize::SmallInput,
        );
    });
    c.bench_function("status_of_refusal", |b| {
        b.iter(|| black_box(hot_paths::status_of_refusal(black_box(95021))));
    });
}

fn record_call(c: &mut Criterion) {
    let filter = telemetry::DEFAULT_FILTER
        .parse()
        .expect("the default filter");
    let subscriber = telemetry::subscriber(filter, LogFormat::Json, std::io::sink, None);
    let (access, metrics) = (Access::open(), Metrics::new());
    tracing::subscriber::with_default(subscriber, || {
        c.bench_function("record_call", |b| {
            b.iter(|| black_box(hot_paths::record_call(&access, &metrics)));
        });
    });
}

criterion_group!(benches, token_read, conversions, record_call);
criterion_main!(benches);
