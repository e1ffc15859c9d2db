//! End-to-end tests: the real server on port 0, called through the generated
//! tonic client, against the sandbox or a scripted fake upstream.

mod audit;
mod auth;
mod errors;
mod fault_proxy;
mod faults;
mod fleet;
mod helpers;
mod http;
mod lifecycle;
mod observability;
mod process;
mod provider;
mod reliability;
mod tls;
mod token;
mod upgrade;
mod validation;
