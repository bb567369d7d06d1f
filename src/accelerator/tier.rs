//! Tiers: how much compute (FP32 and FP16 TFLOPS) and memory one accelerator may use. The six
//! Elastic Inference tiers are built in; custom tiers come from a TOML file.
//!
//! ```toml
//! # One [[tier]] table per custom tier. Names must not clash with the built-in ones.
//! [[tier]]
//! name = "lab.small"
//! fp32_tflops = 0.05
//! fp16_tflops = 0.1
//! memory_mib = 256
//!
//! # A rate of 0 means the tier does not offer that precision: its ops are refused, and
//! # attaching it asks nothing of the device's capacity in that precision.
//! [[tier]]
//! name = "lab.fp32"
//! fp32_tflops = 0.05
//! fp16_tflops = 0
//! memory_mib = 256
//! ```

use std::fmt;
use std::path::Path;

use serde::Deserialize;

use crate::dtype::{DType, PerDType};
use crate::error::{Error, Result};

const GIB: u64 = 1 << 30;
const MIB: u64 = 1 << 20;

/// A tier: the rates an accelerator is metered at and the memory it may hold.
#[derive(Debug, Clone, PartialEq)]
pub struct Tier {
    name: String,
    tflops: PerDType<f64>,
    memory: u64,
}

impl Tier {
    /// A tier with rates in TFLOPS (10¹² FLOP/s) per dtype and memory in bytes; rates must be
    /// finite and positive, or 0 for a precision the tier does not offer (at least one
    /// positive), memory non-zero, the name non-empty ASCII letters, digits, `.`, `_` or `-`.
    pub fn new(name: &str, tflops: PerDType<f64>, memory: u64) -> Result<Tier> {
        let bad = |msg: String| Error::Config {
            source_name: format!("tier {name:?}"),
            msg,
        };
        let name_ok = !name.is_empty()
            && name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
        if !name_ok {
            return Err(bad(
                "a tier name is ASCII letters, digits, '.', '_' or '-'".into()
            ));
        }
        for (dtype, &rate) in tflops.iter() {
            if !(rate.is_finite() && rate >= 0.0) {
                return Err(bad(format!(
                    "{} must be a positive number (or 0: not offered), got {rate}",
                    rate_key(dtype)
                )));
            }
        }
        if tflops.iter().all(|(_, &rate)| rate == 0.0) {
            return Err(bad(
                "a tier must offer FP32 or FP16 (a positive rate)".into()
            ));
        }
        if memory == 0 {
            return Err(bad("memory must be at least 1 byte".into()));
        }
        Ok(Tier {
            name: name.to_string(),
            tflops,
            memory,
        })
    }

    /// The tier's name ("eia2.medium").
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The metered rate in TFLOPS for ops of `dtype`.
    pub fn tflops(&self, dtype: DType) -> f64 {
        self.tflops[dtype]
    }

    /// The metered rates in TFLOPS, per dtype.
    pub fn rates(&self) -> PerDType<f64> {
        self.tflops
    }

    /// Whether the tier runs ops of `dtype` (its rate is positive).
    pub fn offers(&self, dtype: DType) -> bool {
        self.tflops(dtype) > 0.0
    }

    /// Refuses ops of a precision the tier does not offer.
    pub fn check_offers(&self, dtype: DType) -> Result<()> {
        if self.offers(dtype) {
            return Ok(());
        }
        Err(Error::Capacity(format!(
            "tier {} does not offer {dtype} (its {dtype} rate is 0); convert to the other precision or resize to a tier that offers it",
            self.name
        )))
    }

    /// The metered rate in FLOP/s for ops of `dtype`.
    pub fn flops_per_second(&self, dtype: DType) -> f64 {
        self.tflops(dtype) * 1e12
    }

    /// The memory quota in bytes.
    pub fn memory(&self) -> u64 {
        self.memory
    }

    /// Accelerator-seconds an op of `flops` FLOPs in `dtype` costs on this tier.
    pub fn cost(&self, flops: u64, dtype: DType) -> f64 {
        flops as f64 / self.flops_per_second(dtype)
    }
}

impl fmt::Display for Tier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let rate = |r: f64| {
            if r > 0.0 {
                r.to_string()
            } else {
                "no".into()
            }
        };
        write!(f, "{} (", self.name)?;
        for (dtype, &r) in self.tflops.iter() {
            write!(f, "{} {dtype} TFLOPS, ", rate(r))?;
        }
        write!(f, "{})", crate::error::bytes(self.memory))
    }
}

/// The tiers a device offers: the built-in Elastic Inference tiers, then any custom ones.
#[derive(Debug, Clone, PartialEq)]
pub struct Tiers {
    tiers: Vec<Tier>,
}

impl Default for Tiers {
    fn default() -> Self {
        Tiers::builtin()
    }
}

/// One `[[tier]]` table of a tier file.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TierEntry {
    name: String,
    fp32_tflops: f64,
    fp16_tflops: f64,
    memory_mib: u64,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TierFile {
    #[serde(default)]
    tier: Vec<TierEntry>,
}

impl Tiers {
    /// The six Elastic Inference tiers (memory in GiB).
    pub fn builtin() -> Tiers {
        let table = [
            ("eia1.medium", 1.0, 8.0, 1),
            ("eia1.large", 2.0, 16.0, 2),
            ("eia1.xlarge", 4.0, 32.0, 4),
            ("eia2.medium", 1.0, 8.0, 2),
            ("eia2.large", 2.0, 16.0, 4),
            ("eia2.xlarge", 4.0, 32.0, 8),
        ];
        let tiers = table
            .iter()
            .map(|&(name, fp32, fp16, gib)| Tier {
                name: name.to_string(),
                tflops: PerDType::new(fp32, fp16),
                memory: gib * GIB,
            })
            .collect();
        Tiers { tiers }
    }

    /// The built-in tiers plus the custom tiers of a TOML document (see the module docs);
    /// `source_name` names the document in errors.
    pub fn with_toml(source_name: &str, text: &str) -> Result<Tiers> {
        let config_error = |msg: String| Error::Config {
            source_name: source_name.to_string(),
            msg,
        };
        let file: TierFile = toml::from_str(text).map_err(|e| config_error(e.to_string()))?;
        let mut tiers = Tiers::builtin();
        for entry in file.tier {
            let memory = entry.memory_mib.checked_mul(MIB).ok_or_else(|| {
                config_error(format!("tier {:?}: memory_mib too large", entry.name))
            })?;
            let tflops = PerDType::new(entry.fp32_tflops, entry.fp16_tflops);
            let tier =
                Tier::new(&entry.name, tflops, memory).map_err(|e| config_error(e.to_string()))?;
            tiers.add(tier).map_err(|e| config_error(e.to_string()))?;
        }
        Ok(tiers)
    }

    /// The built-in tiers plus the custom tiers of a TOML file.
    pub fn load(path: &Path) -> Result<Tiers> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::Config {
            source_name: path.display().to_string(),
            msg: format!("cannot read: {e}"),
        })?;
        Tiers::with_toml(&path.display().to_string(), &text)
    }

    /// Adds a custom tier; its name (with or without `ml.`) must be new.
    pub fn add(&mut self, tier: Tier) -> Result<()> {
        if self.find(&tier.name).is_some() {
            return Err(Error::Config {
                source_name: format!("tier {:?}", tier.name),
                msg: "a tier of that name already exists".into(),
            });
        }
        self.tiers.push(tier);
        Ok(())
    }

    /// The tier called `name`; `ml.eia2.medium` (SageMaker's spelling) finds `eia2.medium`.
    /// Names are case-insensitive.
    pub fn get(&self, name: &str) -> Result<&Tier> {
        self.find(name).ok_or_else(|| Error::UnknownTier {
            name: name.to_string(),
            valid: self.tiers.iter().map(|t| t.name.clone()).collect(),
        })
    }

    /// All tiers, built-in first.
    pub fn iter(&self) -> impl Iterator<Item = &Tier> {
        self.tiers.iter()
    }

    fn find(&self, name: &str) -> Option<&Tier> {
        let wanted = canonical(name);
        self.tiers.iter().find(|t| canonical(&t.name) == wanted)
    }
}

/// The tier-file key of the rate for `dtype` (`fp32_tflops`, `fp16_tflops`).
fn rate_key(dtype: DType) -> String {
    format!("{}_tflops", dtype.name().to_ascii_lowercase())
}

/// A tier name as compared: lower case, without SageMaker's `ml.` prefix.
pub fn canonical(name: &str) -> String {
    let lower = name.to_ascii_lowercase();
    match lower.strip_prefix("ml.") {
        Some(bare) => bare.to_string(),
        None => lower,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builtin_tiers_match_elastic_inference() {
        let tiers = Tiers::builtin();
        let t = tiers.get("eia2.medium").unwrap();
        assert_eq!((t.tflops(DType::F32), t.tflops(DType::F16)), (1.0, 8.0));
        assert_eq!(t.memory(), 2 * GIB);
        assert_eq!(tiers.get("ml.eia1.xlarge").unwrap().memory(), 4 * GIB);
        assert_eq!(tiers.get("EIA2.Large").unwrap().name(), "eia2.large");
        assert_eq!(tiers.iter().count(), 6);
        // 1 TFLOP of FP32 costs one second on a 1-TFLOPS tier, an eighth in FP16.
        assert_eq!(t.cost(1_000_000_000_000, DType::F32), 1.0);
        assert_eq!(t.cost(1_000_000_000_000, DType::F16), 0.125);
    }

    #[test]
    fn unknown_tier_lists_the_valid_ones() {
        let e = Tiers::builtin().get("eia3.huge").unwrap_err();
        let msg = e.to_string();
        assert!(matches!(e, Error::UnknownTier { ref valid, .. } if valid.len() == 6));
        assert!(msg.contains("eia3.huge") && msg.contains("eia1.medium, eia1.large"));
    }

    #[test]
    fn custom_tiers_from_toml() {
        let tiers = Tiers::with_toml(
            "test.toml",
            "[[tier]]\nname = \"lab.small\"\nfp32_tflops = 0.05\nfp16_tflops = 0.1\nmemory_mib = 256\n",
        )
        .unwrap();
        let t = tiers.get("ml.lab.small").unwrap();
        assert_eq!(t.flops_per_second(DType::F32), 0.05e12);
        assert_eq!(t.memory(), 256 * MIB);
        assert_eq!(tiers.iter().count(), 7);
        assert_eq!(
            Tiers::with_toml("empty.toml", "").unwrap(),
            Tiers::builtin()
        );
    }

    #[test]
    fn bad_tier_files_are_config_errors() {
        let cases = [
            ("[[tier]]\nname = \"x\"\nfp32_tflops = 1\n", "missing field"),
            (
                "[[tier]]\nname = \"x\"\nfp32_tflops = 1.0\nfp16_tflops = 1.0\nmemory_mib = 1\nspeed = 2\n",
                "unknown field",
            ),
            (
                "[[tier]]\nname = \"x\"\nfp32_tflops = -1.0\nfp16_tflops = 1.0\nmemory_mib = 1\n",
                "positive",
            ),
            (
                "[[tier]]\nname = \"x\"\nfp32_tflops = 0\nfp16_tflops = 0.0\nmemory_mib = 1\n",
                "must offer",
            ),
            (
                "[[tier]]\nname = \"x\"\nfp32_tflops = 1.0\nfp16_tflops = 1.0\nmemory_mib = 0\n",
                "memory",
            ),
            (
                "[[tier]]\nname = \"ml.eia2.medium\"\nfp32_tflops = 1.0\nfp16_tflops = 1.0\nmemory_mib = 1\n",
                "already exists",
            ),
            (
                "[[tier]]\nname = \"a b\"\nfp32_tflops = 1.0\nfp16_tflops = 1.0\nmemory_mib = 1\n",
                "ASCII",
            ),
            ("tier = 3", "invalid type"),
        ];
        for (text, expected) in cases {
            let e = Tiers::with_toml("bad.toml", text).unwrap_err();
            assert!(
                matches!(e, Error::Config { .. }) && e.to_string().contains(expected),
                "{text:?}: {e}"
            );
            assert!(e.to_string().contains("bad.toml"));
        }
        let e = Tiers::load(Path::new("/nonexistent/tiers.toml")).unwrap_err();
        assert!(e.to_string().contains("cannot read"), "{e}");
    }
}
