//! An OpenAI-compatible upstream server inside the boundary.

use std::time::Duration;

use bytes::Bytes;
use futures_util::{Stream, StreamExt as _};
use isnad_schemas::openai::ChatCompletionChunk;
use reqwest::{StatusCode, Url};
use serde_json::Value;

use isnad_pipeline::egress::EgressPolicy;

use crate::{Error, Result};

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
            .map_err(|e| Error::Config(format!("providers.{name}: {e}")))?;
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
            .map_err(|e| Error::Config(e.to_string()))?;
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

    /// POSTs a streaming request and returns the answer as typed chunks, parsed from its SSE
    /// events as they arrive (see [`sse_chunks`]).
    pub async fn stream(
        &self,
        path: &str,
        body: &Value,
    ) -> Result<impl Stream<Item = Result<ChatCompletionChunk>> + Send + 'static> {
        let resp = self.send(path, body).await?;
        Ok(sse_chunks(resp.bytes_stream().map(|r| {
            r.map_err(|e| {
                if e.is_timeout() {
                    Error::Timeout
                } else {
                    Error::Stream(e.to_string())
                }
            })
        })))
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

/// The chunks of an OpenAI-compatible SSE answer: one per `data:` event, in order, ending at
/// `[DONE]`. A stream that ends without `[DONE]` ends with [`Error::Stream`] (the upstream went
/// away mid-answer); an event that is not a chunk is skipped with a warning.
pub fn sse_chunks(
    bytes: impl Stream<Item = Result<Bytes>> + Send + 'static,
) -> impl Stream<Item = Result<ChatCompletionChunk>> + Send + 'static {
    struct St<S> {
        bytes: std::pin::Pin<Box<S>>,
        parser: SseParser,
        pending: std::collections::VecDeque<String>,
        done: bool,
    }
    let st = St {
        bytes: Box::pin(bytes),
        parser: SseParser::default(),
        pending: Default::default(),
        done: false,
    };
    futures_util::stream::unfold(st, |mut st| async move {
        loop {
            if st.done {
                return None;
            }
            while let Some(data) = st.pending.pop_front() {
                if data == "[DONE]" {
                    return None;
                }
                let Ok(v) = serde_json::from_str::<serde_json::Value>(&data) else {
                    tracing::warn!("skipped an upstream event that is not JSON");
                    continue;
                };
                // An error in the stream (vLLM and others send one before `[DONE]`) ends it as
                // a failure, never as content; so does an event the chunk type cannot hold.
                let failed = match &v["error"] {
                    Value::Null => serde_json::from_value::<ChatCompletionChunk>(v).map_err(|e| {
                        format!("upstream sent an event that is not a chat chunk: {e}")
                    }),
                    err => Err(format!(
                        "upstream reported an error mid-stream: {}",
                        err["message"].as_str().unwrap_or("no message")
                    )),
                };
                st.done = failed.is_err();
                return Some((failed.map_err(Error::Stream), st));
            }
            match st.bytes.next().await {
                Some(Ok(b)) => st.pending.extend(st.parser.push(&b)),
                Some(Err(e)) => {
                    st.done = true;
                    return Some((Err(e), st));
                }
                None => {
                    st.done = true;
                    let e = Error::Stream("upstream closed the stream before [DONE]".into());
                    return Some((Err(e), st));
                }
            }
        }
    })
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

    async fn chunks_of(parts: &[&'static str]) -> Vec<Result<ChatCompletionChunk>> {
        let bytes = futures_util::stream::iter(
            parts
                .iter()
                .map(|p| Ok(Bytes::from_static(p.as_bytes())))
                .collect::<Vec<_>>(),
        );
        sse_chunks(bytes).collect::<Vec<_>>().await
    }

    #[tokio::test]
    async fn sse_answers_become_typed_chunks_and_a_cut_one_ends_in_an_error() {
        let out = chunks_of(&[
            "data: {\"id\":\"a\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"He",
            "llo\"},\"finish_reason\":null}],\"x_vendor\":1}\n\n",
            "data: not json\n\n",
            "data: {\"id\":\"a\",\"choices\":[],\"usage\":{\"prompt_tokens\":3,\"completion_tokens\":1}}\n\n",
            "data: [DONE]\n\ndata: {\"id\":\"after\"}\n\n",
        ])
        .await;
        assert_eq!(out.len(), 2, "the bad event skipped, nothing after [DONE]");
        let first = out[0].as_ref().unwrap();
        assert_eq!(first.choices[0].delta.content.as_deref(), Some("Hello"));
        assert_eq!(first.extra["x_vendor"], 1, "unknown fields are kept");
        assert!(out[1].as_ref().unwrap().is_usage_only());
        let cut = chunks_of(&["data: {\"id\":\"a\",\"choices\":[]}\n\n"]).await;
        assert!(matches!(cut.last(), Some(Err(Error::Stream(_)))), "{cut:?}");
        // An error event ends the stream as a failure, never as an empty chunk; so does an
        // event the chunk type cannot hold.
        for event in [
            "data: {\"error\":{\"message\":\"boom\"}}\n\ndata: [DONE]\n\n",
            "data: {\"id\":5,\"choices\":[]}\n\ndata: [DONE]\n\n",
        ] {
            let out = chunks_of(&[event]).await;
            assert_eq!(out.len(), 1, "{out:?}");
            assert!(matches!(&out[0], Err(Error::Stream(_))), "{out:?}");
        }
        let out = chunks_of(&["data: {\"error\":{\"message\":\"boom\"}}\n\n"]).await;
        assert!(format!("{:?}", out[0]).contains("boom"), "{out:?}");
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
