//! End-to-end tests: the real server on port 0, called through the generated
//! tonic client, against the sandbox or a scripted fake upstream.

mod audit;
mod errors;
mod helpers;
mod http;
mod lifecycle;
mod observability;
mod token;
mod upgrade;
mod validation;
