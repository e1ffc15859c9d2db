//! One HTTP exchange with WeCom: bounded in time and in body size, with errors
//! that never carry the URL (its query holds the access token or the secret).

use std::time::Duration;

use serde::de::DeserializeOwned;
use tracing::Instrument;

use super::{Endpoint, Error, TransportKind, api::decode};

/// An HTTP client bound to one WeCom API base.
#[derive(Debug, Clone)]
pub(crate) struct Transport {
    http: reqwest::Client,
    base: String,
    max_body_bytes: usize,
}

/// A request to send: the query may carry secrets and is never logged.
pub(crate) struct Call<'a> {
    pub(crate) endpoint: Endpoint,
    pub(crate) query: &'a [(&'a str, &'a str)],
    /// JSON body for a POST; `None` for a GET.
    pub(crate) body: Option<&'a [u8]>,
}

impl Transport {
    /// Builds the shared HTTP client: rustls, bounded connect and request time, no redirects.
    pub(crate) fn client(
        connect_timeout: Duration,
        request_timeout: Duration,
    ) -> Result<reqwest::Client, reqwest::Error> {
        reqwest::Client::builder()
            .connect_timeout(connect_timeout)
            .timeout(request_timeout)
            // WeCom never redirects; following one would send the token elsewhere.
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("wecom-kf-upgrade/", env!("CARGO_PKG_VERSION")))
            .build()
    }

    pub(crate) fn new(http: reqwest::Client, base: &str, max_body_bytes: usize) -> Self {
        Self {
            http,
            base: base.trim_end_matches('/').to_owned(),
            max_body_bytes,
        }
    }

    /// Sends the call and decodes the answer as `T` (see [`decode`]).
    pub(crate) async fn send<T: DeserializeOwned>(&self, call: Call<'_>) -> Result<T, Error> {
        let endpoint = call.endpoint;
        let span = tracing::debug_span!(
            "wecom.http",
            http.method = if call.body.is_some() { "POST" } else { "GET" },
            url.path = endpoint.path(),
            http.status = tracing::field::Empty,
        );
        async move {
            let url = format!("{}{}", self.base, endpoint.path());
            let request = match call.body {
                Some(body) => self
                    .http
                    .post(url)
                    .header(reqwest::header::CONTENT_TYPE, "application/json")
                    .body(body.to_vec()),
                None => self.http.get(url),
            };
            let response = request
                .query(call.query)
                .send()
                .await
                .map_err(|e| transport_error(endpoint, e))?;
            let status = response.status();
            tracing::Span::current().record("http.status", status.as_u16());
            if status != reqwest::StatusCode::OK {
                return Err(Error::HttpStatus {
                    endpoint,
                    status: status.as_u16(),
                });
            }
            let body = self.read_bounded(endpoint, response).await?;
            decode(endpoint, &body)
        }
        .instrument(span)
        .await
    }

    /// Reads the body, refusing more than `max_body_bytes` without buffering them.
    async fn read_bounded(
        &self,
        endpoint: Endpoint,
        mut response: reqwest::Response,
    ) -> Result<Vec<u8>, Error> {
        let limit = self.max_body_bytes;
        let too_large = || Error::BodyTooLarge { endpoint, limit };
        if response.content_length().is_some_and(|n| n > limit as u64) {
            return Err(too_large());
        }
        let mut body = Vec::new();
        while let Some(chunk) = response
            .chunk()
            .await
            .map_err(|e| transport_error(endpoint, e))?
        {
            if body.len() + chunk.len() > limit {
                return Err(too_large());
            }
            body.extend_from_slice(&chunk);
        }
        Ok(body)
    }
}

/// Turns a reqwest error into [`Error::Transport`] without its URL.
fn transport_error(endpoint: Endpoint, error: reqwest::Error) -> Error {
    let kind = if error.is_timeout() {
        TransportKind::Timeout
    } else if error.is_connect() {
        TransportKind::Connect
    } else {
        TransportKind::Other
    };
    // reqwest's Display names the URL, query and all; the sources below it do not.
    let error = error.without_url();
    let mut detail = error.to_string();
    let mut source = std::error::Error::source(&error);
    while let Some(cause) = source {
        detail.push_str(": ");
        detail.push_str(&cause.to_string());
        source = cause.source();
    }
    Error::Transport {
        endpoint,
        kind,
        detail,
    }
}
