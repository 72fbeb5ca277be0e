//! The `webhook` sink: POSTs each batch as JSON to one URL, through `wasi:http`.
//!
//! The component reaches the network only where its manifest's `capabilities.http`
//! allows: weir refuses every other destination. A 2xx answer makes the batch durable;
//! 408, 429, 5xx and connection failures are transient (weir retries them with backoff,
//! `limits.transient_retries` times); any other status is a failure for `on_error`.
//!
//! Body: `{"events": [...]}`, each event
//! `{"op", "schema", "table", "commit_lsn", "seq", "xid", "commit_ts", "before", "after"}`
//! with `commit_lsn` in PostgreSQL's `X/X` form, `commit_ts` in microseconds since the
//! Unix epoch (UTC), rows as objects by column name (`bytea` as `\x` hex, NaN and
//! infinities as strings), and `"unchanged": [names]` for unchanged TOAST columns.
//! Delivery is at least once: the `Idempotency-Key` header (first and last event's
//! `commit_lsn` and `seq`) is the same when a batch is sent again after a restart, and
//! `(commit_lsn, seq)` identifies each event.

use serde::Deserialize;
use serde_json::{Value as Json, json};
use std::collections::BTreeMap;
use weir_sdk::{Batch, PluginError, Sink};

/// `config` of the webhook sink.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// `http://host:port/path` or `https://...`: the host must be granted in the
    /// manifest's `capabilities.http`.
    pub url: String,
    /// Extra request headers (for example an authorization token from `${VAR}`).
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// Longest wait to connect and for the first byte of the answer, in seconds.
    /// Default 10 (weir's per-call deadline in the manifest caps it).
    #[serde(default = "default_timeout")]
    pub timeout_secs: u64,
}

fn default_timeout() -> u64 {
    10
}

/// A parsed `http(s)://authority/path?query`.
#[derive(Debug, Clone, PartialEq)]
pub struct Target {
    pub https: bool,
    pub authority: String,
    pub path: String,
}

impl Target {
    pub fn parse(url: &str) -> Result<Target, String> {
        let (https, rest) = if let Some(rest) = url.strip_prefix("https://") {
            (true, rest)
        } else if let Some(rest) = url.strip_prefix("http://") {
            (false, rest)
        } else {
            return Err(format!("`{url}` is not an http:// or https:// URL"));
        };
        let (authority, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, "/"),
        };
        if authority.is_empty() || authority.contains('@') {
            return Err(format!(
                "`{url}` has no host (or has credentials in it: use `headers`)"
            ));
        }
        Ok(Target {
            https,
            authority: authority.to_owned(),
            path: path.to_owned(),
        })
    }
}

/// The sink.
pub struct Webhook {
    target: Target,
    headers: Vec<(String, Vec<u8>)>,
    timeout_secs: u64,
    /// Every event up to here has been accepted by the receiver.
    durable: u64,
}

impl Sink for Webhook {
    type Config = Config;

    fn init(config: Config) -> Result<Self, PluginError> {
        let target = Target::parse(&config.url).map_err(PluginError::BadConfig)?;
        let mut headers = vec![("content-type".to_owned(), b"application/json".to_vec())];
        for (k, v) in config.headers {
            headers.push((k.to_ascii_lowercase(), v.into_bytes()));
        }
        Ok(Webhook {
            target,
            headers,
            timeout_secs: config.timeout_secs.max(1),
            durable: 0,
        })
    }

    fn write(&mut self, batch: Batch) -> Result<u64, PluginError> {
        let (Some(first), Some(last)) = (batch.events.first(), batch.events.last()) else {
            return Ok(self.durable);
        };
        let key = format!(
            "{}:{}-{}:{}",
            weir_sdk::json::lsn(first.commit_lsn),
            first.seq,
            weir_sdk::json::lsn(last.commit_lsn),
            last.seq
        );
        let body = serde_json::to_vec(&to_json(&batch)).expect("JSON values serialize");
        let mut headers = self.headers.clone();
        headers.push(("idempotency-key".to_owned(), key.into_bytes()));
        let (status, answer) = http::post(&self.target, &headers, &body, self.timeout_secs)?;
        match status {
            200..=299 => {
                self.durable = self.durable.max(last.commit_lsn);
                #[cfg(target_arch = "wasm32")]
                weir_sdk::guest::counter_add("webhook_batches", 1, &[]);
                Ok(self.durable)
            }
            408 | 429 | 500..=599 => Err(PluginError::Transient(format!(
                "{} answered {status}: {answer}",
                self.target.authority
            ))),
            _ => Err(PluginError::Fatal(format!(
                "{} answered {status}: {answer}",
                self.target.authority
            ))),
        }
    }

    fn flush(&mut self) -> Result<u64, PluginError> {
        // Every accepted POST is already durable at the receiver.
        Ok(self.durable)
    }
}

/// The request body for a batch: `{"events": [...]}`, each event as
/// [`weir_sdk::json::event`] writes it.
pub fn to_json(batch: &Batch) -> Json {
    let events: Vec<Json> = batch
        .events()
        .map(|(rel, e)| weir_sdk::json::event(rel, e))
        .collect();
    json!({ "events": events })
}

#[cfg(target_arch = "wasm32")]
mod http {
    //! One POST through `wasi:http/outgoing-handler`.
    use super::Target;
    use wasi::http::outgoing_handler;
    use wasi::http::types::{
        ErrorCode, Fields, Method, OutgoingBody, OutgoingRequest, RequestOptions, Scheme,
    };
    use wasi::io::streams::StreamError;
    use weir_sdk::PluginError;

    /// Sends `body`; returns the status and up to 1 KiB of the answer.
    pub fn post(
        target: &Target,
        headers: &[(String, Vec<u8>)],
        body: &[u8],
        timeout_secs: u64,
    ) -> Result<(u16, String), PluginError> {
        let mut headers = headers.to_vec();
        headers.push(("content-length".into(), body.len().to_string().into_bytes()));
        let fields = Fields::from_list(&headers)
            .map_err(|e| PluginError::BadConfig(format!("invalid header: {e:?}")))?;
        let request = OutgoingRequest::new(fields);
        let scheme = if target.https {
            Scheme::Https
        } else {
            Scheme::Http
        };
        let bad = |what: &str| PluginError::BadConfig(format!("invalid URL {what}"));
        request
            .set_method(&Method::Post)
            .map_err(|_| bad("method"))?;
        request
            .set_scheme(Some(&scheme))
            .map_err(|_| bad("scheme"))?;
        request
            .set_authority(Some(&target.authority))
            .map_err(|_| bad("host"))?;
        request
            .set_path_with_query(Some(&target.path))
            .map_err(|_| bad("path"))?;
        let options = RequestOptions::new();
        let timeout = timeout_secs * 1_000_000_000;
        let _ = options.set_connect_timeout(Some(timeout));
        let _ = options.set_first_byte_timeout(Some(timeout));
        let _ = options.set_between_bytes_timeout(Some(timeout));
        let outgoing = request.body().expect("a new request has a body");
        let pending = outgoing_handler::handle(request, Some(options)).map_err(refused)?;
        let mut sent = Ok(());
        {
            let stream = outgoing.write().expect("the body is written once");
            for chunk in body.chunks(4096) {
                if let Err(e) = stream.blocking_write_and_flush(chunk) {
                    sent = Err(PluginError::Transient(format!("sending the body: {e:?}")));
                    break;
                }
            }
        }
        if sent.is_ok() {
            OutgoingBody::finish(outgoing, None).map_err(refused)?;
        }
        // A refused request shows as a closed body stream; the response says why.
        pending.subscribe().block();
        let response = match pending.get() {
            Some(Ok(Ok(response))) => response,
            Some(Ok(Err(e))) => return Err(refused(e)),
            _ => return Err(PluginError::Transient("no response".into())),
        };
        sent?;
        let status = response.status();
        let mut answer = Vec::new();
        if let Ok(incoming) = response.consume()
            && let Ok(stream) = incoming.stream()
        {
            loop {
                match stream.blocking_read(1024) {
                    Ok(bytes) if answer.len() < 1024 => answer.extend(bytes),
                    Ok(_) => {}
                    Err(StreamError::Closed) | Err(_) => break,
                }
            }
        }
        answer.truncate(1024);
        Ok((status, String::from_utf8_lossy(&answer).trim().to_owned()))
    }

    /// A denied destination is the operator's to fix; anything else may pass.
    fn refused(e: ErrorCode) -> PluginError {
        match e {
            ErrorCode::HttpRequestDenied => PluginError::Fatal(
                "the request was denied: grant the host in the manifest's capabilities.http".into(),
            ),
            ErrorCode::HttpRequestUriInvalid => PluginError::BadConfig(format!("{e:?}")),
            other => PluginError::Transient(format!("{other:?}")),
        }
    }
}

#[cfg(not(target_arch = "wasm32"))]
mod http {
    //! Outside WebAssembly there is no `wasi:http`: native tests cover the body only.
    use super::Target;
    use weir_sdk::PluginError;

    pub fn post(
        _: &Target,
        _: &[(String, Vec<u8>)],
        _: &[u8],
        _: u64,
    ) -> Result<(u16, String), PluginError> {
        Err(PluginError::Fatal(
            "the webhook sink sends through wasi:http: run it as a component".into(),
        ))
    }
}

#[cfg(target_arch = "wasm32")]
weir_sdk::export_sink!(Webhook);

#[cfg(test)]
mod tests {
    use super::*;
    use weir_sdk::plugin::testing::{event, relation};
    use weir_sdk::{Op, Value};

    #[test]
    fn urls_are_parsed_and_credentials_refused() {
        assert_eq!(
            Target::parse("http://127.0.0.1:8080/hook?x=1").unwrap(),
            Target {
                https: false,
                authority: "127.0.0.1:8080".into(),
                path: "/hook?x=1".into()
            }
        );
        assert_eq!(Target::parse("https://h.example").unwrap().path, "/");
        assert!(Target::parse("ftp://h/").is_err());
        assert!(Target::parse("https://user:pw@h/").is_err());
    }

    #[test]
    fn events_become_json_objects_by_column_name() {
        let mut batch = Batch::default();
        let rel = batch.push_relation(relation(
            "public",
            "t",
            &[
                ("id", "int4", true),
                ("b", "bytea", false),
                ("f", "float8", false),
            ],
        ));
        let mut e = event(
            Op::Update,
            rel,
            0,
            None,
            Some(vec![
                Value::Int(1),
                Value::Bytes(vec![0xde, 0xad]),
                Value::Float(f64::NAN),
            ]),
        );
        e.commit_lsn = 0x1_0000_0010;
        batch.events.push(e);
        let json = to_json(&batch);
        let e = &json["events"][0];
        assert_eq!(e["op"], "u");
        assert_eq!(e["commit_lsn"], "1/10");
        assert_eq!(e["after"]["id"], 1);
        assert_eq!(e["after"]["b"], "\\xdead");
        assert_eq!(e["after"]["f"], "NaN");
    }
}
