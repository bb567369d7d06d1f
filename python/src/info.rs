//! Tiers and usage records as Python objects (read-only attributes, readable reprs).

use pyo3::prelude::*;

/// A tier: its FP32 and FP16 rates (TFLOPS; 0 where it offers none) and its memory (bytes).
#[pyclass(frozen, module = "eia", get_all)]
pub struct Tier {
    pub name: String,
    pub fp32_tflops: f64,
    pub fp16_tflops: f64,
    pub memory: u64,
}

impl From<eia::Tier> for Tier {
    fn from(t: eia::Tier) -> Tier {
        Tier {
            name: t.name().to_string(),
            fp32_tflops: t.tflops(eia::DType::F32),
            fp16_tflops: t.tflops(eia::DType::F16),
            memory: t.memory(),
        }
    }
}

#[pymethods]
impl Tier {
    fn __repr__(&self) -> String {
        format!(
            "Tier(name={:?}, fp32_tflops={}, fp16_tflops={}, memory={})",
            self.name, self.fp32_tflops, self.fp16_tflops, self.memory
        )
    }
}

/// The built-in tiers (the six Elastic Inference ones).
#[pyfunction]
pub fn tiers() -> Vec<Tier> {
    eia::Tiers::builtin()
        .iter()
        .cloned()
        .map(Tier::from)
        .collect()
}

/// A snapshot of one accelerator's usage; durations in seconds, sizes in bytes. `str()` is
/// the summary Rust prints (with advice when the meter held the work back).
#[pyclass(frozen, module = "eia", get_all)]
pub struct Usage {
    pub accelerator: u64,
    pub tier: String,
    pub attached: f64,
    pub ops: u64,
    pub flops_f32: u64,
    pub flops_f16: u64,
    pub charged: f64,
    pub meter_wait: f64,
    pub busy: f64,
    pub bytes_uploaded: u64,
    pub bytes_downloaded: u64,
    pub op_bytes: u64,
    pub memory_used: u64,
    pub memory_high_water: u64,
    pub memory_quota: u64,
    pub meter_balance: f64,
    summary: String,
}

impl From<eia::Usage> for Usage {
    fn from(u: eia::Usage) -> Usage {
        Usage {
            summary: u.to_string(),
            accelerator: u.accelerator,
            tier: u.tier,
            attached: u.attached.as_secs_f64(),
            ops: u.ops,
            flops_f32: u.flops_f32,
            flops_f16: u.flops_f16,
            charged: u.charged,
            meter_wait: u.meter_wait.as_secs_f64(),
            busy: u.busy.as_secs_f64(),
            bytes_uploaded: u.bytes_uploaded,
            bytes_downloaded: u.bytes_downloaded,
            op_bytes: u.op_bytes,
            memory_used: u.memory_used,
            memory_high_water: u.memory_high_water,
            memory_quota: u.memory_quota,
            meter_balance: u.meter_balance,
        }
    }
}

#[pymethods]
impl Usage {
    fn __repr__(&self) -> String {
        format!(
            "Usage(accelerator={}, tier={:?}, attached={:.3}, ops={}, flops_f32={}, flops_f16={}, \
             charged={:.3e}, meter_wait={:.6}, busy={:.6}, bytes_uploaded={}, \
             bytes_downloaded={}, op_bytes={}, memory_used={}, memory_high_water={}, \
             memory_quota={}, meter_balance={:.3e})",
            self.accelerator,
            self.tier,
            self.attached,
            self.ops,
            self.flops_f32,
            self.flops_f16,
            self.charged,
            self.meter_wait,
            self.busy,
            self.bytes_uploaded,
            self.bytes_downloaded,
            self.op_bytes,
            self.memory_used,
            self.memory_high_water,
            self.memory_quota,
            self.meter_balance
        )
    }

    fn __str__(&self) -> String {
        self.summary.clone()
    }
}
