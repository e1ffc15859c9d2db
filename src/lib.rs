//! A gRPC gateway for WeCom (企业微信) 微信客服「升级服务」: read the configured
//! service members and group chats, recommend one to a customer, cancel it.
//!
//! # Layout
//! - [`config`]: typed settings, loaded file → environment → sandbox → secrets; printed as TOML.
//! - [`auth`]: who is calling (bearer token or client certificate) and which apps it may use.
//! - [`tls`]: TLS and mTLS on the gRPC port, certificates reloaded when their files change.
//! - `reload`: files re-read when their contents change.
//! - [`callback`]: the endpoint WeCom pushes third-party suites' tickets to.
//! - [`domain`]: validated requests (`OpenKfId`, `UserId`, `Wording`…).
//! - [`grpc`]: the edge: straight-line handlers, each call's budget and outcome (its
//!   span, metrics and one log line), and one mapping from an edge error to its status
//!   and who is at fault.
//! - [`wecom`]: the WeCom adapter, free of the configuration: HTTP transport, one token
//!   refresher per app, errcodes, JSON types.
//! - [`sandbox`]: a WeCom simulator for the demo, local development and the tests.
//! - `listener`: the gRPC port's hardened accept loop: connection cap, handshake
//!   timeout, accept errors backed off.
//! - [`startup`]: binds the listeners, serves gRPC and admin HTTP, drains on shutdown.
//! - [`signal`]: SIGTERM and SIGINT: the first drains, a second exits at once.
//! - [`telemetry`]: structured logs (one line per call), OTLP traces, Prometheus metrics;
//!   error cause chains.
//! - [`cli`]: the `wecom-kf-upgrade` command line.
#![forbid(unsafe_code)]
#![warn(
    missing_docs,
    missing_debug_implementations,
    unreachable_pub,
    rust_2018_idioms
)]

pub mod auth;
pub mod callback;
pub mod cli;
pub mod config;
pub mod domain;
pub mod grpc;
mod listener;
mod reload;
pub mod sandbox;
pub mod signal;
pub mod startup;
pub mod telemetry;
pub mod tls;
pub mod wecom;
