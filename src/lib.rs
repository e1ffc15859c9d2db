//! A gRPC gateway for WeCom (企业微信) 微信客服「升级服务」: read the configured
//! service members and group chats, recommend one to a customer, cancel it.
//!
//! # Layout
//! - [`config`]: typed settings from a TOML file and the environment; secrets stay secret.
//! - [`domain`]: validated requests (`OpenKfId`, `UserId`, `Wording`…).
//! - [`grpc`]: the tonic service: proto → domain, deadlines, one error → status mapping.
//! - [`wecom`]: the WeCom adapter: HTTP transport, token cache, errcodes, JSON types.
//! - [`sandbox`]: a WeCom simulator for the demo, local development and the tests.
//! - [`startup`]: binds the listeners, serves gRPC and admin HTTP, drains on shutdown.
//! - [`signal`]: SIGTERM and SIGINT: the first drains, a second exits at once.
//! - [`telemetry`]: structured logging.
//! - [`cli`]: the `wecom-kf-upgrade` command line.
#![forbid(unsafe_code)]
#![warn(
    missing_docs,
    missing_debug_implementations,
    unreachable_pub,
    rust_2018_idioms
)]

pub mod cli;
pub mod config;
pub mod domain;
pub mod grpc;
pub mod sandbox;
pub mod signal;
pub mod startup;
pub mod telemetry;
pub mod wecom;
