//! What each plugin instance's store holds: its WASI context (only what the manifest
//! grants), its limits, and the host functions every plugin may call.

use super::bindings::v0_1_0::transformer::weir::plugin::{host, types};
use super::manifest::Manifest;
use std::collections::BTreeMap;
use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;
use wasmtime::{StoreLimits, StoreLimitsBuilder};
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};
use wasmtime_wasi::{FsPerms, ResourceTable, WasiCtx, WasiCtxBuilder, WasiCtxView, WasiView};
use wasmtime_wasi_http::{WasiHttpCtx, WasiHttpCtxView, WasiHttpHooks, WasiHttpView};

/// Metrics a plugin reported through the host interface, by name and labels.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct PluginMetrics {
    pub counters: BTreeMap<String, u64>,
    pub gauges: BTreeMap<String, f64>,
    pub histograms: BTreeMap<String, Vec<f64>>,
}

/// The instance's memory cap: growing past it, or a growth the system refuses, traps
/// with [`MemoryExhausted`], which the host recognises by its type.
pub struct MemoryCap {
    limit: usize,
    /// Tables, instances and memories: wasmtime's defaults.
    others: StoreLimits,
}

impl MemoryCap {
    fn new(limit: usize) -> MemoryCap {
        MemoryCap {
            limit,
            others: StoreLimitsBuilder::new().trap_on_grow_failure(true).build(),
        }
    }
}

/// A plugin instance ran out of the memory it may use.
#[derive(Debug, Clone, Copy, thiserror::Error)]
#[error("memory exhausted (growing to {desired} bytes, cap {limit})")]
pub struct MemoryExhausted {
    pub desired: usize,
    pub limit: usize,
}

impl wasmtime::ResourceLimiter for MemoryCap {
    fn memory_growing(
        &mut self,
        _current: usize,
        desired: usize,
        maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        let limit = maximum.map_or(self.limit, |m| m.min(self.limit));
        match desired > limit {
            true => Err(MemoryExhausted { desired, limit }.into()),
            false => Ok(true),
        }
    }

    fn memory_grow_failed(&mut self, error: wasmtime::Error) -> wasmtime::Result<()> {
        tracing::debug!(error = %error, "A plugin's memory could not grow.");
        Err(MemoryExhausted {
            desired: 0,
            limit: self.limit,
        }
        .into())
    }

    fn table_growing(
        &mut self,
        current: usize,
        desired: usize,
        maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        self.others.table_growing(current, desired, maximum)
    }

    fn table_grow_failed(&mut self, error: wasmtime::Error) -> wasmtime::Result<()> {
        self.others.table_grow_failed(error)
    }

    fn instances(&self) -> usize {
        self.others.instances()
    }

    fn tables(&self) -> usize {
        self.others.tables()
    }

    fn memories(&self) -> usize {
        self.others.memories()
    }
}

/// The store data of one instance.
pub struct PluginState {
    wasi: WasiCtx,
    http: WasiHttpCtx,
    http_grant: HttpGrant,
    table: ResourceTable,
    pub limits: MemoryCap,
    label: Arc<str>,
    metrics: Arc<Mutex<PluginMetrics>>,
}

impl PluginState {
    /// A state granting exactly the manifest's capabilities.
    pub fn new(manifest: &Manifest, metrics: Arc<Mutex<PluginMetrics>>) -> io::Result<PluginState> {
        let label: Arc<str> = manifest.label().into();
        let caps = &manifest.capabilities;
        let mut wasi = WasiCtxBuilder::new();
        for name in &caps.env {
            if let Ok(value) = std::env::var(name) {
                wasi.env(name, value);
            }
        }
        for dir in &caps.dirs {
            let perms = if dir.writable {
                FsPerms::ReadWrite
            } else {
                FsPerms::ReadOnly
            };
            wasi.preopened_dir(&dir.host, &dir.guest, perms)
                .map_err(|e| io::Error::other(format!("granting {}: {e}", dir.host.display())))?;
        }
        if !caps.clock {
            wasi.wall_clock(StoppedClock).monotonic_clock(StoppedClock);
        }
        if !caps.random {
            wasi.secure_random(wasmtime_wasi::Deterministic::new(vec![0x5a]))
                .insecure_random(wasmtime_wasi::Deterministic::new(vec![0xa5]))
                .insecure_random_seed(0);
        }
        wasi.allow_tcp(false)
            .allow_udp(false)
            .allow_ip_name_lookup(false);
        wasi.stdout(GuestOutput::new(label.clone(), "stdout"));
        wasi.stderr(GuestOutput::new(label.clone(), "stderr"));
        Ok(PluginState {
            wasi: wasi.build(),
            http: WasiHttpCtx::new(),
            http_grant: HttpGrant {
                label: label.clone(),
                capabilities: caps.clone(),
                timeout: manifest.limits.call_timeout,
            },
            table: ResourceTable::new(),
            limits: MemoryCap::new(manifest.limits.memory as usize),
            label,
            metrics,
        })
    }
}

impl WasiView for PluginState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

impl WasiHttpView for PluginState {
    fn http(&mut self) -> WasiHttpCtxView<'_> {
        WasiHttpCtxView {
            ctx: &mut self.http,
            table: &mut self.table,
            hooks: &mut self.http_grant,
        }
    }
}

/// Outbound HTTP as the manifest grants it: only to the listed hosts, and never for
/// longer than one call may take.
struct HttpGrant {
    label: Arc<str>,
    capabilities: super::manifest::Capabilities,
    timeout: Duration,
}

type SendFuture = Box<
    dyn Future<
            Output = wasmtime_wasi_http::Result<(
                http::Response<wasmtime_wasi_http::WasiBody>,
                Box<dyn Future<Output = wasmtime_wasi_http::Result<()>> + Send>,
            )>,
        > + Send,
>;

impl WasiHttpHooks for HttpGrant {
    fn send_request(
        &mut self,
        request: http::Request<wasmtime_wasi_http::WasiBody>,
        options: Option<wasmtime_wasi_http::RequestOptions>,
        fut: Box<dyn Future<Output = wasmtime_wasi_http::Result<()>> + Send>,
    ) -> SendFuture {
        let uri = request.uri();
        let host = uri.host().unwrap_or_default().to_owned();
        let port = uri.port_u16().unwrap_or(match uri.scheme_str() {
            Some("http") => 80,
            _ => 443,
        });
        if !self.capabilities.allows_http(&host, port) {
            tracing::warn!(target: "weir::plugin", plugin = &*self.label, host, port, "Denied an HTTP request to a host the manifest does not grant (capabilities.http).");
            return Box::new(async { Err(wasmtime_wasi_http::Error::HttpRequestDenied) });
        }
        let cap = |t: Option<Duration>| Some(t.map_or(self.timeout, |t| t.min(self.timeout)));
        let options = options.unwrap_or_default();
        let options = wasmtime_wasi_http::RequestOptions {
            connect_timeout: cap(options.connect_timeout),
            first_byte_timeout: cap(options.first_byte_timeout),
            between_bytes_timeout: cap(options.between_bytes_timeout),
        };
        _ = fut;
        Box::new(async move {
            use http_body_util::BodyExt;
            let (response, io) =
                wasmtime_wasi_http::default_send_request(request, Some(options)).await?;
            Ok((
                response.map(BodyExt::boxed_unsync),
                Box::new(io) as Box<dyn Future<Output = _> + Send>,
            ))
        })
    }
}

fn labelled(name: &str, labels: &[(String, String)]) -> String {
    if labels.is_empty() {
        return name.to_owned();
    }
    let labels: Vec<String> = labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
    format!("{name}{{{}}}", labels.join(","))
}

impl host::Host for PluginState {
    fn log(&mut self, level: host::Level, message: String, fields: Vec<(String, String)>) {
        let fields: Vec<String> = fields.iter().map(|(k, v)| format!("{k}={v}")).collect();
        let fields = fields.join(" ");
        let plugin = &*self.label;
        match level {
            host::Level::Trace => {
                tracing::trace!(target: "weir::plugin", plugin, %fields, "{message}")
            }
            host::Level::Debug => {
                tracing::debug!(target: "weir::plugin", plugin, %fields, "{message}")
            }
            host::Level::Info => {
                tracing::info!(target: "weir::plugin", plugin, %fields, "{message}")
            }
            host::Level::Warn => {
                tracing::warn!(target: "weir::plugin", plugin, %fields, "{message}")
            }
            host::Level::Error => {
                tracing::error!(target: "weir::plugin", plugin, %fields, "{message}")
            }
        }
    }

    fn counter_add(&mut self, name: String, value: u64, labels: Vec<(String, String)>) {
        let mut m = self.metrics.lock().unwrap_or_else(|e| e.into_inner());
        *m.counters.entry(labelled(&name, &labels)).or_default() += value;
    }

    fn gauge_set(&mut self, name: String, value: f64, labels: Vec<(String, String)>) {
        let mut m = self.metrics.lock().unwrap_or_else(|e| e.into_inner());
        m.gauges.insert(labelled(&name, &labels), value);
    }

    fn histogram_record(&mut self, name: String, value: f64, labels: Vec<(String, String)>) {
        let mut m = self.metrics.lock().unwrap_or_else(|e| e.into_inner());
        let values = m.histograms.entry(labelled(&name, &labels)).or_default();
        // Keep the most recent observations only: a histogram must not grow without bound.
        if values.len() >= 1024 {
            values.remove(0);
        }
        values.push(value);
    }
}

impl types::Host for PluginState {}

/// A clock that reads zero: what a plugin without the `clock` capability sees.
struct StoppedClock;

impl wasmtime_wasi::HostWallClock for StoppedClock {
    fn resolution(&self) -> Duration {
        Duration::from_secs(1)
    }
    fn now(&self) -> Duration {
        Duration::ZERO
    }
}

impl wasmtime_wasi::HostMonotonicClock for StoppedClock {
    fn resolution(&self) -> u64 {
        1_000_000_000
    }
    fn now(&self) -> u64 {
        0
    }
}

/// Guest stdout or stderr: each line becomes a tracing record tagged with the plugin.
#[derive(Clone)]
struct GuestOutput(Arc<Mutex<LineBuffer>>);

struct LineBuffer {
    label: Arc<str>,
    stream: &'static str,
    line: Vec<u8>,
}

impl GuestOutput {
    fn new(label: Arc<str>, stream: &'static str) -> GuestOutput {
        GuestOutput(Arc::new(Mutex::new(LineBuffer {
            label,
            stream,
            line: Vec::new(),
        })))
    }
}

impl LineBuffer {
    fn push(&mut self, data: &[u8]) {
        for &b in data {
            if b == b'\n' || self.line.len() >= 4096 {
                self.emit();
            }
            if b != b'\n' {
                self.line.push(b);
            }
        }
    }

    fn emit(&mut self) {
        let text = String::from_utf8_lossy(&self.line);
        tracing::info!(target: "weir::plugin", plugin = &*self.label, stream = self.stream, "{}", text.trim_end());
        self.line.clear();
    }
}

impl tokio::io::AsyncWrite for GuestOutput {
    fn poll_write(
        self: Pin<&mut Self>,
        _: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).push(data);
        Poll::Ready(Ok(data.len()))
    }
    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

impl IsTerminal for GuestOutput {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl StdoutStream for GuestOutput {
    fn async_stream(&self) -> Box<dyn tokio::io::AsyncWrite + Send + Sync> {
        Box::new(self.clone())
    }
}
