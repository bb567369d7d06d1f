//! The Prometheus endpoint (`GET /metrics` on its own HTTP listener), rendered with the
//! `prometheus` crate's text encoder:
//!
//! - the server's own series, kept for its whole life: a latency histogram of every RPC by
//!   method and gRPC status (`eia_rpc_duration_seconds`), and detaches by reason
//!   (`eia_detached_total`);
//! - per attached accelerator (labels: accelerator, tier, owner, device index, and the row's
//!   own), read fresh from its usage at each scrape: one series per row of
//!   the usage table ([`Usage::fields`]) — counters (`_total`: FLOPs per precision, ops,
//!   charged / meter-wait / busy seconds, bytes moved and read by ops) and gauges (meter
//!   balance, seconds attached, memory held / high-water / quota);
//! - gauges for the device: accelerators attached, memory in use, connections open.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use prometheus::{
    CounterVec, Encoder, GaugeVec, HistogramOpts, HistogramVec, IntCounterVec, IntGauge, Opts,
    Registry, TextEncoder,
};

use crate::accelerator::{Kind, Usage};
use crate::error::{Error, Result};

/// One attached accelerator as the metrics see it.
pub struct Sample {
    pub owner: String,
    /// The index of the device it runs on.
    pub device: usize,
    pub usage: Usage,
}

fn fail(e: prometheus::Error) -> Error {
    Error::Backend {
        backend: "metrics",
        msg: e.to_string(),
    }
}

/// The server's persistent series.
pub struct ServerMetrics {
    registry: Registry,
    rpc: HistogramVec,
    detached: IntCounterVec,
}

impl ServerMetrics {
    /// Empty series.
    pub fn new() -> Result<Self> {
        let registry = Registry::new();
        // 100 µs to about 26 s, ×4 per bucket.
        let buckets = prometheus::exponential_buckets(1e-4, 4.0, 10).map_err(fail)?;
        let rpc = HistogramVec::new(
            HistogramOpts::new(
                "eia_rpc_duration_seconds",
                "Time from a call's start to its response (a download: to its first chunk), by method and gRPC status",
            )
            .buckets(buckets),
            &["method", "code"],
        )
        .map_err(fail)?;
        registry.register(Box::new(rpc.clone())).map_err(fail)?;
        let detached = IntCounterVec::new(
            Opts::new("eia_detached_total", "Accelerators detached, by reason"),
            &["why"],
        )
        .map_err(fail)?;
        registry
            .register(Box::new(detached.clone()))
            .map_err(fail)?;
        Ok(ServerMetrics {
            registry,
            rpc,
            detached,
        })
    }

    /// Starts timing a call of `method`; the call is observed when the timer is finished or,
    /// if the call is dropped first (the client went away), as CANCELLED.
    pub fn time(&self, method: &'static str) -> RpcTimer<'_> {
        RpcTimer {
            metrics: self,
            method,
            started: Instant::now(),
            code: None,
        }
    }

    fn observe(&self, method: &str, code: tonic::Code, took: Duration) {
        self.rpc
            .with_label_values(&[method, &code_name(code)])
            .observe(took.as_secs_f64());
    }

    /// Counts a detach for reason `why`.
    pub fn detached(&self, why: &str) {
        self.detached.with_label_values(&[why]).inc();
    }

    /// The exposition text: the server's series, the attached accelerators', the device's
    /// memory in use and the connections open.
    pub fn render(
        &self,
        samples: &[Sample],
        device_memory_in_use: u64,
        connections: usize,
    ) -> Result<String> {
        let mut families = self.registry.gather();
        families.extend(snapshot(samples, device_memory_in_use, connections)?.gather());
        let mut out = Vec::new();
        TextEncoder::new()
            .encode(&families, &mut out)
            .map_err(fail)?;
        String::from_utf8(out).map_err(|e| Error::Backend {
            backend: "metrics",
            msg: e.to_string(),
        })
    }
}

/// Times one call ([`ServerMetrics::time`]).
pub struct RpcTimer<'a> {
    metrics: &'a ServerMetrics,
    method: &'static str,
    started: Instant,
    code: Option<tonic::Code>,
}

impl RpcTimer<'_> {
    /// Observes the call as ending with `result`, which it returns.
    pub fn finish<T>(
        mut self,
        result: std::result::Result<T, tonic::Status>,
    ) -> std::result::Result<T, tonic::Status> {
        self.code = Some(match &result {
            Ok(_) => tonic::Code::Ok,
            Err(s) => s.code(),
        });
        result
    }
}

impl Drop for RpcTimer<'_> {
    fn drop(&mut self) {
        let code = self.code.unwrap_or(tonic::Code::Cancelled);
        self.metrics
            .observe(self.method, code, self.started.elapsed());
    }
}

/// A gRPC status code as the protocol spells it: `OK`, `NOT_FOUND`, ...
fn code_name(code: tonic::Code) -> String {
    let debug = format!("{code:?}");
    let mut name = String::with_capacity(debug.len() + 4);
    for (i, c) in debug.chars().enumerate() {
        if i > 0 && c.is_ascii_uppercase() {
            name.push('_');
        }
        name.push(c.to_ascii_uppercase());
    }
    name
}

/// A family of per-accelerator series.
enum Family {
    Counter(CounterVec),
    Gauge(GaugeVec),
}

/// The per-scrape series: each attached accelerator's usage and the device's gauges.
fn snapshot(samples: &[Sample], device_memory_in_use: u64, connections: usize) -> Result<Registry> {
    let registry = Registry::new();
    let labels = ["accelerator", "tier", "owner", "device"];
    let with_labels = |extra: &[&'static str]| -> Vec<&'static str> {
        labels.iter().chain(extra).copied().collect()
    };
    // One family per series of the usage table, made from the table so that it exists before
    // any accelerator attaches; each field is one series of its family.
    let mut families: HashMap<&'static str, Family> = HashMap::new();
    for field in Usage::default().fields() {
        if families.contains_key(field.series) {
            continue;
        }
        let name = format!("eia_accelerator_{}", field.series);
        let opts = Opts::new(name, field.help);
        let extra: Vec<&str> = field.label.iter().map(|(key, _)| *key).collect();
        let family = match field.kind {
            Kind::Counter => {
                Family::Counter(CounterVec::new(opts, &with_labels(&extra)).map_err(fail)?)
            }
            Kind::Gauge => Family::Gauge(GaugeVec::new(opts, &with_labels(&extra)).map_err(fail)?),
        };
        match &family {
            Family::Counter(c) => registry.register(Box::new(c.clone())),
            Family::Gauge(g) => registry.register(Box::new(g.clone())),
        }
        .map_err(fail)?;
        families.insert(field.series, family);
    }
    for s in samples {
        let u = &s.usage;
        let id = u.accelerator.to_string();
        let device = s.device.to_string();
        for field in u.fields() {
            let mut values = vec![id.as_str(), u.tier.as_str(), s.owner.as_str(), &device];
            values.extend(field.label.map(|(_, value)| value));
            let value = field.value.as_f64();
            match &families[field.series] {
                Family::Counter(c) => c.with_label_values(&values).inc_by(value.max(0.0)),
                Family::Gauge(g) => g.with_label_values(&values).set(value),
            }
        }
    }
    let int_gauge = |name: &str, help: &str, value: u64| -> Result<()> {
        let g = IntGauge::new(name, help).map_err(fail)?;
        g.set(value.min(i64::MAX as u64) as i64);
        registry.register(Box::new(g)).map_err(fail)
    };
    int_gauge(
        "eia_accelerators_attached",
        "Accelerators attached",
        samples.len() as u64,
    )?;
    int_gauge(
        "eia_device_memory_in_use_bytes",
        "Bytes held by all accelerators",
        device_memory_in_use,
    )?;
    int_gauge(
        "eia_connections_open",
        "gRPC connections open",
        connections as u64,
    )?;
    Ok(registry)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_series_per_usage_field() {
        let usage = crate::accelerator::usage::tests::fresh();
        let sample = Sample {
            owner: "alice".into(),
            device: 2,
            usage: usage.clone(),
        };
        let text = ServerMetrics::new()
            .unwrap()
            .render(&[sample], 1, 2)
            .unwrap();
        let series: Vec<&str> = text
            .lines()
            .filter(|l| l.starts_with("eia_accelerator_"))
            .collect();
        let fields = usage.fields();
        assert_eq!(series.len(), fields.len(), "{text}");
        for field in fields {
            let id = usage.accelerator.to_string();
            let mut labels = vec![
                ("accelerator", id.as_str()),
                ("owner", "alice"),
                ("device", "2"),
            ];
            labels.push(("tier", &usage.tier));
            labels.extend(field.label);
            labels.sort();
            let labels: Vec<String> = labels.iter().map(|(k, v)| format!("{k}=\"{v}\"")).collect();
            let start = format!("eia_accelerator_{}{{{}}} ", field.series, labels.join(","));
            let line: Vec<&&str> = series.iter().filter(|l| l.starts_with(&start)).collect();
            assert_eq!(line.len(), 1, "{start} in\n{text}");
            let value: f64 = line[0][start.len()..].parse().unwrap();
            let want = match field.kind {
                Kind::Counter => field.value.as_f64().max(0.0),
                Kind::Gauge => field.value.as_f64(),
            };
            assert_eq!(value, want, "{start}");
        }
    }
}
