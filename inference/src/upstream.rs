//! An OpenAI-compatible upstream server inside the boundary.

use std::time::Duration;

use bytes::Bytes;
use futures_util::{Stream, StreamExt as _};
use reqwest::{StatusCode, Url};
use serde_json::Value;

use crate::{egress::EgressPolicy, Error, Result};

/// A pooled client for one upstream.
#[derive(Debug)]
pub struct Upstream {
    name: String,
    base: Url,
    api_key: Option<String>,
    client: reqwest::Client,
    retries: u32,
    egress: EgressPolicy,
}

/// Longest wait honoured from a `Retry-After` header.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(2);

impl Upstream {
    /// A client for `base` (e.g. `http://10.0.0.5:8000/v1`).
    pub fn new(
        name: &str,
        mut base: Url,
        api_key: Option<String>,
        connect_timeout: Duration,
        read_timeout: Duration,
        retries: u32,
    ) -> Result<Self> {
        if !base.path().ends_with('/') {
            base.set_path(&format!("{}/", base.path()));
        }
        let mut egress = EgressPolicy::deny_all();
        egress.allow(&base)?;
        let client = reqwest::Client::builder()
            .connect_timeout(connect_timeout)
            .read_timeout(read_timeout)
            .pool_idle_timeout(Duration::from_secs(90))
            .pool_max_idle_per_host(256)
            .tcp_nodelay(true)
            // A redirect could lead out of the boundary: never follow one.
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("isnad/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| Error::Invalid(format!("providers.{name}: {e}")))?;
        Ok(Self {
            name: name.to_owned(),
            base,
            api_key,
            client,
            retries,
            egress,
        })
    }

    /// Provider name.
    pub fn name(&self) -> &str {
        &self.name
    }

    fn url(&self, path: &str) -> Result<Url> {
        let url = self
            .base
            .join(path.trim_start_matches('/'))
            .map_err(|e| Error::Invalid(e.to_string()))?;
        self.egress.check(&url)?;
        Ok(url)
    }

    /// POSTs `body` to `path`, retrying connect errors, 429 and 5xx with backoff; returns a
    /// response with a success status.
    pub async fn send(&self, path: &str, body: &Value) -> Result<reqwest::Response> {
        let url = self.url(path)?;
        let mut attempt = 0u32;
        loop {
            let mut req = self.client.post(url.clone()).json(body);
            if let Some(k) = &self.api_key {
                req = req.bearer_auth(k);
            }
            let outcome = req.send().await;
            let retry_after = match outcome {
                Ok(resp) if resp.status().is_success() => return Ok(resp),
                Ok(resp) => {
                    let status = resp.status();
                    let retryable =
                        status == StatusCode::TOO_MANY_REQUESTS || status.is_server_error();
                    let wait = resp
                        .headers()
                        .get(reqwest::header::RETRY_AFTER)
                        .and_then(|v| v.to_str().ok())
                        .and_then(|v| v.parse::<u64>().ok())
                        .map(|s| Duration::from_secs(s).min(MAX_RETRY_AFTER));
                    if !retryable || attempt >= self.retries {
                        let body = resp.text().await.unwrap_or_default();
                        return Err(Error::Status {
                            status: status.as_u16(),
                            body: body.chars().take(2000).collect(),
                        });
                    }
                    tracing::debug!(upstream = %self.name, %status, attempt, "retrying upstream");
                    wait
                }
                Err(e) if e.is_connect() && attempt < self.retries => {
                    tracing::debug!(upstream = %self.name, error = %e, attempt, "retrying connect");
                    None
                }
                Err(e) if e.is_connect() => return Err(Error::Connect(e.to_string())),
                Err(e) if e.is_timeout() => return Err(Error::Timeout),
                Err(e) => return Err(Error::Connect(e.to_string())),
            };
            let backoff = Duration::from_millis(50 * (1 << attempt.min(6)));
            tokio::time::sleep(retry_after.unwrap_or(backoff)).await;
            attempt += 1;
        }
    }

    /// POSTs and parses a JSON answer.
    pub async fn json(&self, path: &str, body: &Value) -> Result<Value> {
        let resp = self.send(path, body).await?;
        resp.json().await.map_err(|e| {
            if e.is_timeout() {
                Error::Timeout
            } else {
                Error::Stream(e.to_string())
            }
        })
    }

    /// POSTs and returns the body as it arrives, chunk by chunk.
    pub async fn stream(
        &self,
        path: &str,
        body: &Value,
    ) -> Result<impl Stream<Item = Result<Bytes>> + Send + 'static> {
        let resp = self.send(path, body).await?;
        Ok(resp.bytes_stream().map(|r| {
            r.map_err(|e| {
                if e.is_timeout() {
                    Error::Timeout
                } else {
                    Error::Stream(e.to_string())
                }
            })
        }))
    }

    /// `GET models` of the upstream (health probes, discovery).
    pub async fn models(&self) -> Result<Value> {
        let url = self.url("models")?;
        let mut req = self.client.get(url);
        if let Some(k) = &self.api_key {
            req = req.bearer_auth(k);
        }
        let resp = req
            .send()
            .await
            .map_err(|e| Error::Connect(e.to_string()))?;
        if !resp.status().is_success() {
            return Err(Error::Status {
                status: resp.status().as_u16(),
                body: String::new(),
            });
        }
        resp.json().await.map_err(|e| Error::Stream(e.to_string()))
    }
}

/// Splits a Server-Sent Events byte stream into the `data:` payloads of complete events.
#[derive(Default)]
pub struct SseParser {
    buf: Vec<u8>,
}

impl SseParser {
    /// Feeds bytes; returns the data of every event completed by them.
    pub fn push(&mut self, chunk: &[u8]) -> Vec<String> {
        self.buf.extend_from_slice(chunk);
        let mut out = Vec::new();
        while let Some((event, sep)) = find_event_end(&self.buf) {
            let raw: Vec<u8> = self.buf.drain(..event + sep).collect();
            let text = String::from_utf8_lossy(&raw[..event]);
            let data: Vec<&str> = text
                .lines()
                .filter_map(|l| l.strip_prefix("data:"))
                .map(|d| d.strip_prefix(' ').unwrap_or(d))
                .collect();
            if !data.is_empty() {
                out.push(data.join("\n"));
            }
        }
        out
    }
}

fn find_event_end(buf: &[u8]) -> Option<(usize, usize)> {
    (0..buf.len()).find_map(|i| {
        if buf[i..].starts_with(b"\n\n") {
            Some((i, 2))
        } else if buf[i..].starts_with(b"\r\n\r\n") {
            Some((i, 4))
        } else {
            None
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sse_events_split_across_chunks() {
        let mut p = SseParser::default();
        assert!(p.push(b"data: {\"a\"").is_empty());
        assert_eq!(p.push(b":1}\n\ndata: [DONE]\n"), vec!["{\"a\":1}"]);
        assert_eq!(p.push(b"\n"), vec!["[DONE]"]);
        assert_eq!(p.push(b": comment\n\ndata: x\r\n\r\n"), vec!["x"]);
    }

    #[tokio::test]
    async fn a_host_outside_the_boundary_is_refused_before_connecting() {
        let up = Upstream::new(
            "u",
            Url::parse("http://127.0.0.1:9/v1").unwrap(),
            None,
            Duration::from_millis(50),
            Duration::from_millis(50),
            0,
        )
        .unwrap();
        let err = up
            .send(
                "http://example.com/v1/chat/completions",
                &serde_json::json!({}),
            )
            .await
            .unwrap_err();
        assert!(matches!(err, Error::Egress(_)), "{err}");
        // A protocol-relative path cannot switch hosts: it stays under the upstream's base.
        let url = up.url("//example.com/x").unwrap();
        assert_eq!(url.host_str(), Some("127.0.0.1"));
        assert_eq!(url.path(), "/v1/example.com/x");
    }
}
