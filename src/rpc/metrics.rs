//! The Prometheus endpoint (`GET /metrics` on its own HTTP listener): per-accelerator usage and
//! meter state, and the device's totals, rendered fresh from the accelerators at each scrape with
//! the `prometheus` crate's text encoder.

use prometheus::{Encoder, GaugeVec, IntGauge, Opts, Registry, TextEncoder};

use crate::accelerator::Usage;
use crate::error::{Error, Result};

/// One attached accelerator as the metrics see it.
pub struct Sample {
    pub owner: String,
    pub usage: Usage,
}

/// The exposition text for the attached accelerators and the device's memory in use.
pub fn render(samples: &[Sample], device_memory_in_use: u64) -> Result<String> {
    let registry = Registry::new();
    let fail = |e: prometheus::Error| Error::Backend {
        backend: "metrics",
        msg: e.to_string(),
    };
    let labels = ["accelerator", "tier", "owner"];
    let gauge = |name: &str, help: &str, extra: &[&str]| -> Result<GaugeVec> {
        let all: Vec<&str> = labels.iter().chain(extra).copied().collect();
        let g = GaugeVec::new(Opts::new(name, help), &all).map_err(fail)?;
        registry.register(Box::new(g.clone())).map_err(fail)?;
        Ok(g)
    };
    let flops = gauge(
        "eia_accelerator_flops_total",
        "FLOPs charged, per precision",
        &["dtype"],
    )?;
    let ops = gauge("eia_accelerator_ops_total", "Ops launched", &[])?;
    let charged = gauge(
        "eia_accelerator_charged_seconds_total",
        "Accelerator-seconds charged by the meter",
        &[],
    )?;
    let wait = gauge(
        "eia_accelerator_meter_wait_seconds_total",
        "Time ops waited on the meter",
        &[],
    )?;
    let busy = gauge(
        "eia_accelerator_busy_seconds_total",
        "Time in backend launches",
        &[],
    )?;
    let balance = gauge(
        "eia_accelerator_meter_balance_seconds",
        "Meter balance (negative: debt)",
        &[],
    )?;
    let attached = gauge("eia_accelerator_attached_seconds", "Seconds attached", &[])?;
    let memory = gauge("eia_accelerator_memory_bytes", "Bytes held", &[])?;
    let high = gauge(
        "eia_accelerator_memory_high_water_bytes",
        "Most bytes held at once",
        &[],
    )?;
    let quota = gauge(
        "eia_accelerator_memory_quota_bytes",
        "The tier's memory",
        &[],
    )?;
    let moved = gauge(
        "eia_accelerator_transfer_bytes_total",
        "Bytes copied, per direction",
        &["direction"],
    )?;
    for s in samples {
        let u = &s.usage;
        let id = u.accelerator.to_string();
        let base = [id.as_str(), u.tier.as_str(), s.owner.as_str()];
        let with = |extra: &'static str| [base[0], base[1], base[2], extra];
        flops
            .with_label_values(&with("FP32"))
            .set(u.flops_f32 as f64);
        flops
            .with_label_values(&with("FP16"))
            .set(u.flops_f16 as f64);
        ops.with_label_values(&base).set(u.ops as f64);
        charged.with_label_values(&base).set(u.charged);
        wait.with_label_values(&base)
            .set(u.meter_wait.as_secs_f64());
        busy.with_label_values(&base).set(u.busy.as_secs_f64());
        balance.with_label_values(&base).set(u.meter_balance);
        attached
            .with_label_values(&base)
            .set(u.attached.as_secs_f64());
        memory.with_label_values(&base).set(u.memory_used as f64);
        high.with_label_values(&base)
            .set(u.memory_high_water as f64);
        quota.with_label_values(&base).set(u.memory_quota as f64);
        moved
            .with_label_values(&with("upload"))
            .set(u.bytes_uploaded as f64);
        moved
            .with_label_values(&with("download"))
            .set(u.bytes_downloaded as f64);
    }
    let count =
        IntGauge::new("eia_accelerators_attached", "Accelerators attached").map_err(fail)?;
    count.set(samples.len() as i64);
    registry.register(Box::new(count)).map_err(fail)?;
    let device = IntGauge::new(
        "eia_device_memory_in_use_bytes",
        "Bytes held by all accelerators",
    )
    .map_err(fail)?;
    device.set(device_memory_in_use.min(i64::MAX as u64) as i64);
    registry.register(Box::new(device)).map_err(fail)?;
    let mut out = Vec::new();
    TextEncoder::new()
        .encode(&registry.gather(), &mut out)
        .map_err(fail)?;
    String::from_utf8(out).map_err(|e| Error::Backend {
        backend: "metrics",
        msg: e.to_string(),
    })
}
