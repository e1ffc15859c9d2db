//! One HTTP exchange with WeCom, bounded in time and in body size. It returns the
//! status and the bytes; what they mean is [`super::api`]'s business.

use std::{fmt, time::Duration};

use tracing::Instrument;
use url::Url;

use super::{Endpoint, Error};
use crate::telemetry::redacted;

/// How the gateway's HTTP client talks to WeCom.
#[derive(Debug, Clone)]
pub struct HttpSettings {
    /// TCP + TLS connect timeout.
    pub connect_timeout: Duration,
    /// One request, from sending to the last body byte.
    pub request_timeout: Duration,
    /// Largest response body read; a larger one fails the call.
    pub max_body_bytes: usize,
    /// Most idle connections kept per WeCom host; a burst's extra ones close.
    pub max_idle_connections: usize,
    /// An idle connection is closed after this long.
    pub idle_timeout: Duration,
}

/// An HTTP client bound to one WeCom API base.
#[derive(Clone)]
pub(crate) struct Transport {
    http: reqwest::Client,
    /// Where WeCom is; its password (a proxy's) is never shown.
    base: Url,
    max_body_bytes: usize,
}

impl fmt::Debug for Transport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Transport")
            .field("base", &redacted(&self.base).as_str())
            .field("max_body_bytes", &self.max_body_bytes)
            .finish_non_exhaustive()
    }
}

/// A request to send: the query may carry secrets and is never logged.
pub(crate) struct Call<'a> {
    pub(crate) endpoint: Endpoint,
    pub(crate) query: &'a [(&'a str, &'a str)],
    /// JSON body for a POST; `None` for a GET.
    pub(crate) body: Option<&'a [u8]>,
}

/// What came back. WeCom answers every call with HTTP 200; another status comes
/// from a proxy or a broken front end, and its page is not read.
pub(crate) struct Reply {
    pub(crate) status: u16,
    /// The body of a 200 answer; empty otherwise.
    pub(crate) body: Vec<u8>,
}

impl Transport {
    /// Builds the shared HTTP client: rustls, bounded connect and request time, no redirects.
    pub(crate) fn client(settings: &HttpSettings) -> Result<reqwest::Client, reqwest::Error> {
        reqwest::Client::builder()
            .connect_timeout(settings.connect_timeout)
            .timeout(settings.request_timeout)
            .pool_max_idle_per_host(settings.max_idle_connections)
            .pool_idle_timeout(settings.idle_timeout)
            // WeCom never redirects; following one would send the token elsewhere.
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("wecom-kf-upgrade/", env!("CARGO_PKG_VERSION")))
            .build()
    }

    pub(crate) fn new(http: reqwest::Client, base: &Url, max_body_bytes: usize) -> Self {
        Self {
            http,
            base: base.clone(),
            max_body_bytes,
        }
    }

    /// Sends the call; the reply's body is read only for a 200.
    pub(crate) async fn send(&self, call: Call<'_>) -> Result<Reply, Error> {
        let endpoint = call.endpoint;
        let span = tracing::debug_span!(
            "wecom.http",
            http.method = if call.body.is_some() { "POST" } else { "GET" },
            url.path = endpoint.path(),
            http.status = tracing::field::Empty,
        );
        async move {
            // The endpoint's path follows the base's own path, if any.
            let base = self.base.as_str().trim_end_matches('/');
            let url = format!("{base}{}", endpoint.path());
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
                .map_err(|e| Error::transport(endpoint, e))?;
            let status = response.status().as_u16();
            tracing::Span::current().record("http.status", status);
            let body = if status == 200 {
                self.read_bounded(endpoint, response).await?
            } else {
                Vec::new()
            };
            Ok(Reply { status, body })
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
            .map_err(|e| Error::transport(endpoint, e))?
        {
            if body.len() + chunk.len() > limit {
                return Err(too_large());
            }
            body.extend_from_slice(&chunk);
        }
        Ok(body)
    }
}
