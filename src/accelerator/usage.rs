//! Usage records: what one accelerator did — seconds attached (what Elastic Inference billed),
//! FLOPs per precision, ops, bytes moved, time spent waiting on the meter, memory high-water —
//! and a summary that tells a user whether their work is meter-bound and what would help.

use std::fmt;
use std::time::Duration;

use crate::dtype::DType;
use crate::error::bytes;

/// A snapshot of one accelerator's usage.
#[derive(Debug, Clone, PartialEq)]
pub struct Usage {
    /// The accelerator's id on its device.
    pub accelerator: u64,
    /// The tier it is attached as now.
    pub tier: String,
    /// Time since attach (until detach, for the final record).
    pub attached: Duration,
    /// Ops launched.
    pub ops: u64,
    /// FLOPs charged for FP32 ops.
    pub flops_f32: u64,
    /// FLOPs charged for FP16 ops.
    pub flops_f16: u64,
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
    /// FLOPs charged for ops of `dtype`.
    pub fn flops(&self, dtype: DType) -> u64 {
        match dtype {
            DType::F32 => self.flops_f32,
            DType::F16 => self.flops_f16,
        }
    }

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

impl fmt::Display for Usage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let secs = self.attached.as_secs_f64();
        writeln!(
            f,
            "accelerator {} ({}): attached {secs:.3} s, {} ops",
            self.accelerator, self.tier, self.ops
        )?;
        writeln!(
            f,
            "  FLOPs: {:.3} GFLOP FP32, {:.3} GFLOP FP16; charged {:.3} accelerator-s (meter balance {:+.4} s)",
            self.flops_f32 as f64 / 1e9,
            self.flops_f16 as f64 / 1e9,
            self.charged,
            self.meter_balance
        )?;
        writeln!(
            f,
            "  time: {:.3} s computing/launching, {:.3} s waiting on the meter ({:.0}% of op time)",
            self.busy.as_secs_f64(),
            self.meter_wait.as_secs_f64(),
            100.0 * self.meter_bound_fraction()
        )?;
        writeln!(
            f,
            "  bytes: {} uploaded, {} downloaded, {} read+written by ops",
            bytes(self.bytes_uploaded),
            bytes(self.bytes_downloaded),
            bytes(self.op_bytes)
        )?;
        write!(
            f,
            "  memory: {} held, high-water {} of {} quota",
            bytes(self.memory_used),
            bytes(self.memory_high_water),
            bytes(self.memory_quota)
        )?;
        if self.ops > 0 {
            let waiting = 100.0 * self.meter_bound_fraction();
            let fp16 = if self.flops_f32 > self.flops_f16 {
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
