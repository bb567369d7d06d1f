//! The Prometheus endpoint (`GET /metrics` on its own HTTP listener), rendered with the
//! `prometheus` crate's text encoder:
//!
//! - the server's own series, kept for its whole life: a latency histogram of every RPC by
//!   method and gRPC status (`eia_rpc_duration_seconds`), and detaches by reason
//!   (`eia_detached_total`);
//! - per attached accelerator (labels: accelerator, tier, owner, device index), read fresh
//!   from its usage at each scrape: counters (`_total`:
//!   FLOPs per precision, ops, charged / meter-wait / busy seconds, bytes moved) and gauges
//!   (meter balance, seconds attached, memory held / high-water / quota);
//! - gauges for the device: accelerators attached, memory in use, connections open.

use std::time::{Duration, Instant};

use prometheus::{
    CounterVec, Encoder, GaugeVec, HistogramOpts, HistogramVec, IntCounterVec, IntGauge, Opts,
    Registry, TextEncoder,
};

use crate::accelerator::Usage;
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

/// The per-scrape series: each attached accelerator's usage and the device's gauges.
fn snapshot(samples: &[Sample], device_memory_in_use: u64, connections: usize) -> Result<Registry> {
    let registry = Registry::new();
    let labels = ["accelerator", "tier", "owner", "device"];
    let with_labels = |extra: &[&'static str]| -> Vec<&'static str> {
        labels.iter().chain(extra).copied().collect()
    };
    let counter = |name: &str, help: &str, extra: &[&'static str]| -> Result<CounterVec> {
        let c = CounterVec::new(Opts::new(name, help), &with_labels(extra)).map_err(fail)?;
        registry.register(Box::new(c.clone())).map_err(fail)?;
        Ok(c)
    };
    let gauge = |name: &str, help: &str| -> Result<GaugeVec> {
        let g = GaugeVec::new(Opts::new(name, help), &labels).map_err(fail)?;
        registry.register(Box::new(g.clone())).map_err(fail)?;
        Ok(g)
    };
    let flops = counter(
        "eia_accelerator_flops_total",
        "FLOPs charged, per precision",
        &["dtype"],
    )?;
    let ops = counter("eia_accelerator_ops_total", "Ops launched", &[])?;
    let charged = counter(
        "eia_accelerator_charged_seconds_total",
        "Accelerator-seconds charged by the meter",
        &[],
    )?;
    let wait = counter(
        "eia_accelerator_meter_wait_seconds_total",
        "Time ops waited on the meter",
        &[],
    )?;
    let busy = counter(
        "eia_accelerator_busy_seconds_total",
        "Time in backend launches",
        &[],
    )?;
    let moved = counter(
        "eia_accelerator_transfer_bytes_total",
        "Bytes copied, per direction",
        &["direction"],
    )?;
    let balance = gauge(
        "eia_accelerator_meter_balance_seconds",
        "Meter balance (negative: debt)",
    )?;
    let attached = gauge("eia_accelerator_attached_seconds", "Seconds attached")?;
    let memory = gauge("eia_accelerator_memory_bytes", "Bytes held")?;
    let high = gauge(
        "eia_accelerator_memory_high_water_bytes",
        "Most bytes held at once",
    )?;
    let quota = gauge("eia_accelerator_memory_quota_bytes", "The tier's memory")?;
    for s in samples {
        let u = &s.usage;
        let id = u.accelerator.to_string();
        let device = s.device.to_string();
        let base = [
            id.as_str(),
            u.tier.as_str(),
            s.owner.as_str(),
            device.as_str(),
        ];
        let with = |extra: &'static str| [base[0], base[1], base[2], base[3], extra];
        flops
            .with_label_values(&with("FP32"))
            .inc_by(u.flops_f32 as f64);
        flops
            .with_label_values(&with("FP16"))
            .inc_by(u.flops_f16 as f64);
        ops.with_label_values(&base).inc_by(u.ops as f64);
        charged.with_label_values(&base).inc_by(u.charged.max(0.0));
        wait.with_label_values(&base)
            .inc_by(u.meter_wait.as_secs_f64());
        busy.with_label_values(&base).inc_by(u.busy.as_secs_f64());
        moved
            .with_label_values(&with("upload"))
            .inc_by(u.bytes_uploaded as f64);
        moved
            .with_label_values(&with("download"))
            .inc_by(u.bytes_downloaded as f64);
        balance.with_label_values(&base).set(u.meter_balance);
        attached
            .with_label_values(&base)
            .set(u.attached.as_secs_f64());
        memory.with_label_values(&base).set(u.memory_used as f64);
        high.with_label_values(&base)
            .set(u.memory_high_water as f64);
        quota.with_label_values(&base).set(u.memory_quota as f64);
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
