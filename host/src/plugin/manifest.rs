//! `weir-plugin.toml`: what a plugin is, what it may do, and its defaults.

use serde::Deserialize;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The manifest file name, looked up when a pipeline names a plugin's directory.
pub const MANIFEST_FILE: &str = "weir-plugin.toml";

/// A plugin manifest.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    /// Plugin name, in logs and errors.
    pub name: String,
    /// Plugin version.
    pub version: String,
    /// `transform` or `sink`.
    pub kind: PluginKind,
    /// The component, relative to the manifest.
    pub wasm: PathBuf,
    /// SHA-256 of the component (hex); checked when given.
    #[serde(default)]
    pub sha256: Option<String>,
    /// The `weir:plugin` API version the component was built for.
    pub api: String,
    /// Whether the plugin takes arrays, composites, ranges, multiranges and intervals as
    /// lists and structs (`Value::List`, `Value::Struct`, which the weir-sdk of this release reads);
    /// false (the default, what plugins built before could read): PostgreSQL's text.
    #[serde(default)]
    pub nested_types: bool,
    /// What to do when a call fails: `fail` (default), `skip` or `dead-letter`.
    #[serde(default)]
    pub on_error: OnError,
    /// Default configuration, overlaid by the pipeline's `config`.
    #[serde(default)]
    pub config: toml::Table,
    #[serde(default)]
    pub limits: Limits,
    #[serde(default)]
    pub capabilities: Capabilities,
}

/// What the plugin does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PluginKind {
    Transform,
    Sink,
}

/// Failure policy.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum OnError {
    /// Stop the pipeline without advancing the checkpoint.
    #[default]
    Fail,
    /// Drop the failing events (isolated by splitting the batch), count and log them.
    Skip,
    /// Write the failing events, with the error and their position, to the pipeline's
    /// dead-letter location, where `weir dead-letter` lists and replays them.
    DeadLetter,
}

impl OnError {
    /// As written in a manifest.
    pub fn as_str(self) -> &'static str {
        match self {
            OnError::Fail => "fail",
            OnError::Skip => "skip",
            OnError::DeadLetter => "dead-letter",
        }
    }
}

/// Resource limits of one instance.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    /// Linear memory cap. Default `64MiB`.
    #[serde(deserialize_with = "de_size")]
    pub memory: u64,
    /// Longest one call may run. Default `5s`.
    #[serde(deserialize_with = "de_duration")]
    pub call_timeout: Duration,
    /// How often a call that returned `transient` is retried (with a doubling backoff
    /// from 100 ms, at most 10 s apart) before `on_error` applies. Default 3.
    pub transient_retries: u32,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            memory: 64 << 20,
            call_timeout: Duration::from_secs(5),
            transient_retries: 3,
        }
    }
}

/// What the plugin may reach. Nothing by default.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Capabilities {
    /// Environment variables the plugin may read, by name.
    pub env: Vec<String>,
    /// Host directories the plugin may open.
    pub dirs: Vec<DirGrant>,
    /// The real wall and monotonic clocks (otherwise both read zero).
    pub clock: bool,
    /// Real randomness (otherwise a fixed sequence).
    pub random: bool,
    /// Hosts a sink may send HTTP requests to (through `wasi:http`): `host` (any port)
    /// or `host:port`. Every other destination is refused.
    pub http: Vec<String>,
}

impl Capabilities {
    /// Whether `http` grants `host` on `port`.
    pub fn allows_http(&self, host: &str, port: u16) -> bool {
        let host = host.trim_start_matches('[').trim_end_matches(']');
        self.http.iter().any(|grant| {
            let (h, p) = match grant.rsplit_once(':') {
                Some((h, p)) if !h.contains(':') || h.ends_with(']') => (h, Some(p)),
                _ => (grant.as_str(), None),
            };
            let h = h.trim_start_matches('[').trim_end_matches(']');
            h.eq_ignore_ascii_case(host) && p.is_none_or(|p| p.parse() == Ok(port))
        })
    }
}

/// A directory granted to a plugin.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DirGrant {
    /// Path on the host.
    pub host: PathBuf,
    /// Path the plugin sees.
    pub guest: String,
    /// `false` (default): read-only.
    #[serde(default)]
    pub writable: bool,
}

fn de_size<'de, D: serde::Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
    let s = String::deserialize(d)?;
    s.parse::<bytesize::ByteSize>()
        .map(|b| b.as_u64())
        .map_err(|_| {
            serde::de::Error::custom(format!("`{s}` is not a size; write for example \"64MiB\""))
        })
}

fn de_duration<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    let s = String::deserialize(d)?;
    humantime::parse_duration(&s)
        .map_err(|e| serde::de::Error::custom(format!("`{s}` is not a duration ({e})")))
}

/// A manifest that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    #[error("cannot read plugin manifest {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("plugin manifest {path}: {message}")]
    Invalid { path: PathBuf, message: String },
}

impl Manifest {
    /// Reads the manifest at `path`, or `path/weir-plugin.toml` for a directory.
    pub fn load(path: &Path) -> Result<(Manifest, PathBuf), ManifestError> {
        let file = if path.is_dir() {
            path.join(MANIFEST_FILE)
        } else {
            path.to_path_buf()
        };
        let text = std::fs::read_to_string(&file).map_err(|source| ManifestError::Read {
            path: file.clone(),
            source,
        })?;
        let invalid = |message: String| ManifestError::Invalid {
            path: file.clone(),
            message,
        };
        let mut table: toml::Table = text
            .parse()
            .map_err(|e: toml::de::Error| invalid(format!("not valid TOML: {}", e.message())))?;
        crate::config::interpolate_env(&mut table, &file).map_err(|e| {
            // The error starts with the file's path, which `invalid` adds already.
            let message = e.to_string();
            let prefix = format!("{}: ", file.display());
            invalid(message.strip_prefix(&prefix).unwrap_or(&message).to_owned())
        })?;
        let manifest: Manifest = serde_path_to_error::deserialize(toml::Value::Table(table))
            .map_err(|e| invalid(format!("`{}`: {}", e.path(), e.inner())))?;
        if manifest.kind == PluginKind::Transform && !manifest.capabilities.http.is_empty() {
            return Err(invalid(
                "capabilities.http is for sinks: a transform never reaches the network".into(),
            ));
        }
        Ok((manifest, file))
    }

    /// The component's path: `wasm`, relative to the manifest's directory.
    pub fn wasm_path(&self, manifest_file: &Path) -> PathBuf {
        manifest_file
            .parent()
            .unwrap_or(Path::new("."))
            .join(&self.wasm)
    }

    /// `name@version`.
    pub fn label(&self) -> String {
        format!("{}@{}", self.name, self.version)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_minimal_manifest_grants_nothing() {
        let m: Manifest =
            toml::from_str("name = \"mask\"\nversion = \"0.1.0\"\nkind = \"transform\"\nwasm = \"mask.wasm\"\napi = \"0.1.0\"\n")
                .unwrap();
        assert_eq!(m.on_error, OnError::Fail);
        assert!(m.capabilities.env.is_empty() && m.capabilities.dirs.is_empty());
        assert!(!m.capabilities.clock && !m.capabilities.random);
        assert_eq!(m.limits.memory, 64 << 20);
        assert_eq!(m.label(), "mask@0.1.0");
    }

    #[test]
    fn http_grants_match_host_and_port() {
        let caps = Capabilities {
            http: vec![
                "hooks.example.com".into(),
                "127.0.0.1:8080".into(),
                "[::1]:9000".into(),
            ],
            ..Capabilities::default()
        };
        assert!(caps.allows_http("hooks.example.com", 443));
        assert!(caps.allows_http("HOOKS.example.com", 80));
        assert!(caps.allows_http("127.0.0.1", 8080));
        assert!(!caps.allows_http("127.0.0.1", 8081));
        assert!(caps.allows_http("[::1]", 9000));
        assert!(!caps.allows_http("::1", 9001));
        assert!(!caps.allows_http("evil.example.com", 443));
        assert!(!Capabilities::default().allows_http("localhost", 80));
    }

    #[test]
    fn unknown_keys_are_refused() {
        let err = toml::from_str::<Manifest>(
            "name = \"x\"\nversion = \"1\"\nkind = \"transform\"\nwasm = \"x.wasm\"\napi = \"0.1.0\"\nnetwork = true\n",
        )
        .unwrap_err();
        assert!(err.to_string().contains("unknown field `network`"), "{err}");
    }
}
