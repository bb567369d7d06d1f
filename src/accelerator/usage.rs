//! Usage records: what one accelerator did — seconds attached (what Elastic Inference billed),
//! FLOPs per precision, ops, bytes moved, time spent waiting on the meter, memory high-water —
//! and a summary that tells a user whether their work is meter-bound and what would help. One
//! table (`usage_table!`) lists the measurements; the proto message, the C struct, the metrics
//! and the summary are each filled by a loop or macro over it.

use std::fmt;
use std::time::Duration;

use crate::dtype::{DType, PerDType};
use crate::error::bytes;

/// A snapshot of one accelerator's usage.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Usage {
    /// The accelerator's id on its device.
    pub accelerator: u64,
    /// The tier it is attached as now.
    pub tier: String,
    /// Time since attach (until detach, for the final record).
    pub attached: Duration,
    /// Ops launched.
    pub ops: u64,
    /// FLOPs charged, per precision of the ops.
    pub flops: PerDType<u64>,
    /// Accelerator-seconds charged (FLOPs / the tier's rate, summed per op).
    pub charged: f64,
    /// Time ops waited on the meter before launching.
    pub meter_wait: Duration,
    /// Time spent in the backend's launches (on the CPU: computing; on a GPU: enqueueing).
    pub busy: Duration,
    /// Bytes copied onto the accelerator.
    pub bytes_uploaded: u64,
    /// Bytes copied back to the host.
    pub bytes_downloaded: u64,
    /// Bytes ops read and wrote (operands plus outputs).
    pub op_bytes: u64,
    /// Bytes held now.
    pub memory_used: u64,
    /// Most bytes ever held at once.
    pub memory_high_water: u64,
    /// The tier's memory quota.
    pub memory_quota: u64,
    /// The meter's balance in accelerator-seconds (negative: debt).
    pub meter_balance: f64,
}

impl Usage {
    /// The fraction of op time (meter wait + launch) spent waiting on the meter.
    pub fn meter_bound_fraction(&self) -> f64 {
        let total = (self.meter_wait + self.busy).as_secs_f64();
        if total == 0.0 {
            0.0
        } else {
            self.meter_wait.as_secs_f64() / total
        }
    }

    /// Whether the meter, not the device, limited this accelerator (over half its op time was
    /// spent waiting on it).
    pub fn meter_bound(&self) -> bool {
        self.meter_bound_fraction() > 0.5
    }
}

/// The table of a [`Usage`]'s measurements, each listed once: its name in the proto message
/// `Usage` and the usage log, where it lives in a `Usage`, its name in the C struct `eia_usage`,
/// its unit, its Prometheus series (under `eia_accelerator_`, with a label where one family holds
/// several fields) and its help text. `usage_table!(site)` hands the whole table to the macro
/// `site!`; each place that carries a usage is written once over it — [`Usage::fields`] (the
/// metrics and the display), the proto conversion ([`crate::rpc::convert`]) and the C struct
/// fill ([`crate::ffi`]) — so a measurement added here reaches all of them.
macro_rules! usage_table {
    ($site:ident) => {
        $site! {
            attached_seconds (attached) c attached_seconds: Seconds Gauge "attached_seconds", None,
                "Seconds attached (until detach, for the final record)";
            ops (ops) c ops: Count Counter "ops_total", None,
                "Ops launched";
            flops_fp32 (flops[$crate::DType::F32]) c flops_f32: Flops Counter "flops_total",
                Some(("dtype", $crate::DType::F32.name())),
                "FLOPs charged, per precision of the ops";
            flops_fp16 (flops[$crate::DType::F16]) c flops_f16: Flops Counter "flops_total",
                Some(("dtype", $crate::DType::F16.name())),
                "FLOPs charged, per precision of the ops";
            charged_seconds (charged) c charged_seconds: Seconds Counter "charged_seconds_total", None,
                "Accelerator-seconds charged by the meter (FLOPs / the tier's rate, summed per op)";
            meter_wait_seconds (meter_wait) c meter_wait_seconds: Seconds Counter
                "meter_wait_seconds_total", None,
                "Time ops waited on the meter before launching";
            busy_seconds (busy) c busy_seconds: Seconds Counter "busy_seconds_total", None,
                "Time in the backend's launches (on the CPU: computing; on a GPU: enqueueing)";
            bytes_uploaded (bytes_uploaded) c bytes_uploaded: Bytes Counter "transfer_bytes_total",
                Some(("direction", "upload")),
                "Bytes copied, per direction (upload: onto the accelerator, download: back)";
            bytes_downloaded (bytes_downloaded) c bytes_downloaded: Bytes Counter
                "transfer_bytes_total", Some(("direction", "download")),
                "Bytes copied, per direction (upload: onto the accelerator, download: back)";
            op_bytes (op_bytes) c op_bytes: Bytes Counter "op_bytes_total", None,
                "Bytes ops read and wrote (operands plus outputs)";
            memory_used (memory_used) c memory_used: Bytes Gauge "memory_bytes", None,
                "Bytes held now";
            memory_high_water (memory_high_water) c memory_high_water: Bytes Gauge
                "memory_high_water_bytes", None,
                "Most bytes held at once";
            memory_quota (memory_quota) c memory_quota: Bytes Gauge "memory_quota_bytes", None,
                "The tier's memory quota";
            meter_balance_seconds (meter_balance) c meter_balance_seconds: Seconds Gauge
                "meter_balance_seconds", None,
                "The meter's balance in accelerator-seconds (negative: debt)";
        }
    };
}
pub(crate) use usage_table;

/// What a measurement counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unit {
    Count,
    Flops,
    Seconds,
    Bytes,
}

/// How the metrics export a measurement.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Only ever grows while the accelerator is attached.
    Counter,
    /// Goes up and down.
    Gauge,
}

/// A measurement's value: whole (counts, FLOPs, bytes) or real (seconds).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Value {
    Whole(u64),
    Real(f64),
}

impl Value {
    /// The value as a float (what Prometheus carries).
    pub fn as_f64(self) -> f64 {
        match self {
            Value::Whole(n) => n as f64,
            Value::Real(x) => x,
        }
    }
}

/// One measurement of a [`Usage`], as its table row describes it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Field {
    /// Its name in the proto message and the usage log (`flops_fp32`).
    pub name: &'static str,
    pub unit: Unit,
    pub kind: Kind,
    /// Its Prometheus series, without the `eia_accelerator_` prefix.
    pub series: &'static str,
    /// The label that tells it apart from the other fields of its series, if any.
    pub label: Option<(&'static str, &'static str)>,
    pub help: &'static str,
    pub value: Value,
}

/// A measurement as the proto message and the C struct carry it: counts as themselves,
/// durations as seconds.
pub trait Wire: Sized {
    type Repr;
    fn to_wire(self) -> Self::Repr;
    /// The measurement from its wire form (a negative or non-finite duration is zero).
    fn from_wire(repr: Self::Repr) -> Self;
}

/// Counts and reals travel as themselves.
macro_rules! wire_as_is {
    ($($t:ty),*) => {$(
        impl Wire for $t {
            type Repr = $t;
            fn to_wire(self) -> $t {
                self
            }
            fn from_wire(repr: $t) -> Self {
                repr
            }
        }
    )*};
}
wire_as_is!(u64, f64);

impl Wire for Duration {
    type Repr = f64;
    fn to_wire(self) -> f64 {
        self.as_secs_f64()
    }
    fn from_wire(repr: f64) -> Self {
        Duration::try_from_secs_f64(repr).unwrap_or_default()
    }
}

impl From<u64> for Value {
    fn from(n: u64) -> Self {
        Value::Whole(n)
    }
}

impl From<f64> for Value {
    fn from(x: f64) -> Self {
        Value::Real(x)
    }
}

impl From<Duration> for Value {
    fn from(d: Duration) -> Self {
        Value::Real(d.as_secs_f64())
    }
}

macro_rules! fields {
    ($($name:ident ($($at:tt)+) c $c:ident: $unit:ident $kind:ident $series:literal, $label:expr,
        $help:literal;)*) => {
        impl Usage {
            /// Every measurement, in the order of the table in this module.
            pub fn fields(&self) -> Vec<Field> {
                vec![$(Field {
                    name: stringify!($name),
                    unit: Unit::$unit,
                    kind: Kind::$kind,
                    series: $series,
                    label: $label,
                    help: $help,
                    value: Value::from(self.$($at)+),
                }),*]
            }
        }
    };
}
usage_table!(fields);

impl fmt::Display for Field {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.unit, self.value) {
            (Unit::Bytes, Value::Whole(n)) => write!(f, "{}", bytes(n)),
            (Unit::Flops, v) => write!(f, "{:.3} GFLOP", v.as_f64() / 1e9),
            (Unit::Seconds, v) => write!(f, "{:.4} s", v.as_f64()),
            (_, Value::Whole(n)) => write!(f, "{n}"),
            (_, Value::Real(x)) => write!(f, "{x}"),
        }
    }
}

impl fmt::Display for Usage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "accelerator {} ({}):", self.accelerator, self.tier)?;
        for field in self.fields() {
            write!(f, "\n  {:<22} {field}", field.name)?;
        }
        if self.ops > 0 {
            let waiting = 100.0 * self.meter_bound_fraction();
            let fp16 = if self.flops[DType::F32] > self.flops[DType::F16] {
                " (or FP16, metered at its higher rate)"
            } else {
                ""
            };
            if self.meter_bound() {
                write!(
                    f,
                    "\n  meter-bound: {waiting:.0}% of op time waited on the tier's rate; a larger tier{fp16} would run these ops faster"
                )?;
            } else if waiting >= 10.0 {
                write!(
                    f,
                    "\n  partly meter-bound: {waiting:.0}% of op time waited on the tier's rate; a larger tier{fp16} would save at most that share"
                )?;
            } else {
                write!(
                    f,
                    "\n  device-bound: {waiting:.0}% of op time waited on the meter; the device set the pace, a larger tier would not help"
                )?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A usage with fresh non-zero values in every field (durations in 1/512 s steps, which
    /// seconds as f64 carry exactly).
    pub(crate) fn fresh() -> Usage {
        let n = || rand::random::<u64>() % 1_000_000_000 + 1;
        let d = || Duration::from_nanos((rand::random::<u64>() % 1_000_000 + 1) * 1_953_125);
        let x = || (rand::random::<u64>() % 1_000_000 + 1) as f64 / 7.0;
        Usage {
            accelerator: rand::random::<u64>() | 1,
            tier: format!("t{}", n()),
            attached: d(),
            ops: n(),
            flops: PerDType::from_fn(|_| n()),
            charged: x(),
            meter_wait: d(),
            busy: d(),
            bytes_uploaded: n(),
            bytes_downloaded: n(),
            op_bytes: n(),
            memory_used: n(),
            memory_high_water: n(),
            memory_quota: n(),
            meter_balance: -x(),
        }
    }

    #[test]
    fn the_summary_shows_every_field_once() {
        let usage = fresh();
        let text = usage.to_string();
        for field in usage.fields() {
            let line = format!("  {:<22} {field}", field.name);
            assert_eq!(text.matches(&line).count(), 1, "{line:?} in\n{text}");
        }
        assert!(
            text.contains("meter-bound") || text.contains("device-bound"),
            "{text}"
        );
    }
}
