//! Tiers and usage records as Python objects (read-only attributes, readable reprs).

use eia::accelerator::usage::Value;
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

/// A snapshot of one accelerator's usage: `accelerator`, `tier`, and one attribute per row of
/// the crate's usage table (`eia::Usage::fields`, the names the proto message and the usage log
/// use: `ops`, `flops_fp32`, `memory_used`, `attached_seconds`, …; seconds as floats, counts
/// and bytes as ints). `str()` is the summary Rust prints (with advice when the meter held the
/// work back).
#[pyclass(frozen, module = "eia")]
pub struct Usage {
    #[pyo3(get)]
    pub accelerator: u64,
    #[pyo3(get)]
    pub tier: String,
    fields: Vec<eia::accelerator::usage::Field>,
    summary: String,
}

impl From<eia::Usage> for Usage {
    fn from(u: eia::Usage) -> Usage {
        Usage {
            summary: u.to_string(),
            fields: u.fields(),
            accelerator: u.accelerator,
            tier: u.tier,
        }
    }
}

fn value(py: Python<'_>, v: Value) -> PyResult<Py<PyAny>> {
    Ok(match v {
        Value::Whole(n) => n.into_pyobject(py)?.into_any().unbind(),
        Value::Real(x) => x.into_pyobject(py)?.into_any().unbind(),
    })
}

#[pymethods]
impl Usage {
    fn __getattr__(&self, py: Python<'_>, name: &str) -> PyResult<Py<PyAny>> {
        match self.fields.iter().find(|f| f.name == name) {
            Some(f) => value(py, f.value),
            None => Err(pyo3::exceptions::PyAttributeError::new_err(format!(
                "'Usage' object has no attribute '{name}'"
            ))),
        }
    }

    fn __dir__(&self) -> Vec<&'static str> {
        let mut names = vec!["accelerator", "tier"];
        names.extend(self.fields.iter().map(|f| f.name));
        names
    }

    fn __repr__(&self) -> String {
        let fields: Vec<String> = self
            .fields
            .iter()
            .map(|f| match f.value {
                Value::Whole(n) => format!("{}={n}", f.name),
                Value::Real(x) => format!("{}={x:.6}", f.name),
            })
            .collect();
        format!(
            "Usage(accelerator={}, tier={:?}, {})",
            self.accelerator,
            self.tier,
            fields.join(", ")
        )
    }

    fn __str__(&self) -> String {
        self.summary.clone()
    }
}
