//! Prometheus metrics through the kept `prometheus-client` crate, served as text on
//! `[supervisor] metrics_listen`.
//!
//! The responder is a minimal HTTP/1.0 one on a `TcpListener` (GET `/metrics` → 200, anything
//! else → 404, one request per connection): every light server crate would bring a second
//! HTTP stack and its dependencies for one read-only path. It is bounded like the control
//! socket: at most 16 connections, 8 KiB and 5 s to send the request head.
//!
//! Names (all prefixed `corral_`): `agents{state}`, `restarts_total{agent}`,
//! `exits_total{agent,reason}`, `spawn_ready_seconds` (histogram), `tool_calls_total{tool,status}`,
//! `breaker{agent,state}` (1 for the agent's current state), `runs_total{status}`,
//! `runs_active`, `journal_write_seconds` (histogram: how long each commit of a batch of the
//! journal's writes took, as the writer makes them).

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

type Labels = Vec<(String, String)>;

fn labels(pairs: &[(&str, &str)]) -> Labels {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// The daemon's metrics. Cheap to update from anywhere (atomics behind the families).
pub struct Metrics {
    registry: Registry,
    agents: Family<Labels, Gauge>,
    restarts: Family<Labels, Counter>,
    exits: Family<Labels, Counter>,
    spawn_ready: Histogram,
    tool_calls: Family<Labels, Counter>,
    breaker: Family<Labels, Gauge>,
    runs: Family<Labels, Counter>,
    runs_active: Gauge,
    journal_flush: Histogram,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// All families registered, empty.
    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix("corral");
        let agents = Family::<Labels, Gauge>::default();
        let restarts = Family::<Labels, Counter>::default();
        let exits = Family::<Labels, Counter>::default();
        let spawn_ready = Histogram::new(exponential_buckets(0.0005, 2.0, 16));
        let tool_calls = Family::<Labels, Counter>::default();
        let breaker = Family::<Labels, Gauge>::default();
        let runs = Family::<Labels, Counter>::default();
        let runs_active = Gauge::default();
        let journal_flush = Histogram::new(exponential_buckets(0.0001, 2.0, 16));
        registry.register("agents", "Agent processes by state", agents.clone());
        registry.register("restarts", "Restarts of service agents", restarts.clone());
        registry.register("exits", "Attempts ended, by reason", exits.clone());
        registry.register(
            "spawn_ready_seconds",
            "From spawn to the agent's Ready",
            spawn_ready.clone(),
        );
        registry.register(
            "tool_calls",
            "Tool calls by tool and status",
            tool_calls.clone(),
        );
        registry.register(
            "breaker",
            "Circuit breaker state per agent (1 = current)",
            breaker.clone(),
        );
        registry.register("runs", "Runs ended, by status", runs.clone());
        registry.register("runs_active", "Runs under way", runs_active.clone());
        registry.register(
            "journal_write_seconds",
            "Time of each commit of a batch of journal writes",
            journal_flush.clone(),
        );
        Metrics {
            registry,
            agents,
            restarts,
            exits,
            spawn_ready,
            tool_calls,
            breaker,
            runs,
            runs_active,
            journal_flush,
        }
    }

    /// Set the number of agent processes in `state`.
    pub fn set_agents(&self, state: &str, n: i64) {
        self.agents
            .get_or_create(&labels(&[("state", state)]))
            .set(n);
    }

    /// A service agent was restarted.
    pub fn restarted(&self, agent: &str) {
        self.restarts
            .get_or_create(&labels(&[("agent", agent)]))
            .inc();
    }

    /// An attempt ended, with its record.
    pub fn exited(&self, rec: &crate::ExitRecord) {
        let reason = rec.reason.as_str();
        self.exits
            .get_or_create(&labels(&[("agent", &rec.agent), ("reason", reason)]))
            .inc();
    }

    /// A tool call was answered (`ok`, or the error's kind), counted as it happens: a service
    /// agent's attempt may last for days, and its record keeps only the first and last calls.
    pub fn tool_call(&self, tool: &str, status: &str) {
        self.tool_calls
            .get_or_create(&labels(&[("tool", tool), ("status", status)]))
            .inc();
    }

    /// An agent got ready this long after its spawn.
    pub fn spawn_ready(&self, d: Duration) {
        self.spawn_ready.observe(d.as_secs_f64());
    }

    /// The breaker of `agent` is in `state` (`closed`, `open`, `half_open`).
    pub fn breaker(&self, agent: &str, state: &str) {
        for s in ["closed", "open", "half_open"] {
            let v = i64::from(s == state);
            self.breaker
                .get_or_create(&labels(&[("agent", agent), ("state", s)]))
                .set(v);
        }
    }

    /// A run ended with `status`.
    pub fn run_ended(&self, status: &str) {
        self.runs
            .get_or_create(&labels(&[("status", status)]))
            .inc();
    }

    /// Runs under way now.
    pub fn set_runs_active(&self, n: i64) {
        self.runs_active.set(n);
    }

    /// A commit of the journal's writes took `d`.
    pub fn journal_write(&self, d: Duration) {
        self.journal_flush.observe(d.as_secs_f64());
    }

    /// The text exposition.
    pub fn render(&self) -> String {
        let mut out = String::new();
        if encode(&mut out, &self.registry).is_err() {
            out.clear();
        }
        out
    }
}

/// Most metrics connections at once.
const MAX_CONNECTIONS: usize = 16;
/// Largest request head read.
const MAX_HEAD: usize = 8 * 1024;

/// Bind `addr` and serve `metrics` until the task is dropped.
pub async fn serve_metrics(
    addr: SocketAddr,
    metrics: Arc<Metrics>,
) -> std::io::Result<impl std::future::Future<Output = ()>> {
    let listener = TcpListener::bind(addr).await?;
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    Ok(async move {
        loop {
            let Ok((mut stream, _)) = listener.accept().await else {
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            };
            let Ok(permit) = slots.clone().try_acquire_owned() else {
                continue; // dropped: the connection closes
            };
            let metrics = metrics.clone();
            tokio::spawn(async move {
                let _ = tokio::time::timeout(Duration::from_secs(5), async {
                    let mut head = Vec::new();
                    let mut buf = [0u8; 1024];
                    while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < MAX_HEAD {
                        match stream.read(&mut buf).await {
                            Ok(0) | Err(_) => break,
                            Ok(n) => head.extend_from_slice(&buf[..n]),
                        }
                    }
                    let line = head.split(|b| *b == b'\n').next().unwrap_or_default();
                    let line = String::from_utf8_lossy(line);
                    let mut parts = line.split_whitespace();
                    let ok = parts.next() == Some("GET")
                        && parts
                            .next()
                            .is_some_and(|p| p == "/metrics" || p.starts_with("/metrics?"));
                    let (status, body) = if ok {
                        ("200 OK", metrics.render())
                    } else {
                        ("404 Not Found", "only GET /metrics is served\n".to_string())
                    };
                    let resp = format!(
                        "HTTP/1.0 {status}\r\nContent-Type: application/openmetrics-text; version=1.0.0; charset=utf-8\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                        body.len()
                    );
                    let _ = stream.write_all(resp.as_bytes()).await;
                })
                .await;
                drop(permit);
            });
        }
    })
}
