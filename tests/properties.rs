//! Property tests on the CPU backend: random Conv attributes and random Gemm/MatMul shapes,
//! each checked against the float64 reference with poisoned outputs.

mod common;

use common::{abs, assert_close_scaled, f64s, poisoned, reference};
use eia::ops::{AutoPad, Conv, Gemm};
use eia::{Backend, CpuBackend, DType, HostTensor};
use proptest::prelude::*;

fn dtype() -> impl Strategy<Value = DType> {
    prop_oneof![Just(DType::F32), Just(DType::F16)]
}

fn auto_pad() -> impl Strategy<Value = AutoPad> {
    prop_oneof![
        Just(AutoPad::NotSet),
        Just(AutoPad::SameUpper),
        Just(AutoPad::SameLower),
        Just(AutoPad::Valid)
    ]
}

/// Deterministic non-zero values for a property case (proptest owns the randomness).
fn values(seed: u64, dtype: DType, shape: &[usize]) -> HostTensor {
    let len: usize = shape.iter().product();
    let v: Vec<f32> = (0..len)
        .map(|i| {
            let h = (i as u64 ^ seed)
                .wrapping_mul(0x9E37_79B9_7F4A_7C15)
                .rotate_left(17);
            (h >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0
        })
        .collect();
    HostTensor::from_f32(dtype, shape, &v).unwrap()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 96, ..ProptestConfig::default() })]

    #[test]
    fn conv_random_attributes(
        dtype in dtype(), n in 1usize..3, group in 1usize..4, cg in 1usize..4, kg in 1usize..4,
        h in 1usize..12, w in 1usize..12, r in 1usize..5, s in 1usize..5,
        strides in (1usize..4, 1usize..4), dilations in (1usize..3, 1usize..3),
        pads in (0usize..3, 0usize..3, 0usize..3, 0usize..3), auto_pad in auto_pad(),
        bias in any::<bool>(), relu in any::<bool>(), seed in any::<u64>(),
    ) {
        let op = Conv {
            strides: [strides.0, strides.1],
            pads: [pads.0, pads.1, pads.2, pads.3],
            dilations: [dilations.0, dilations.1],
            group,
            auto_pad,
            kernel_shape: None,
            sum: false,
            relu,
            clip: None,
        };
        let x_shape = [n, group * cg, h, w];
        let w_shape = [group * kg, cg, r, s];
        let x = values(seed, dtype, &x_shape);
        let wt = values(seed ^ 1, dtype, &w_shape);
        let b = bias.then(|| values(seed ^ 2, dtype, &[group * kg]));
        let cpu = CpuBackend::new();
        let up = |t: &HostTensor| cpu.upload(t).unwrap();
        let plan = op.plan(x.desc(), wt.desc(), b.as_ref().map(|b| b.desc()), None);
        // Kernels that do not fit the padded input must be refused, never computed.
        let extent_h = dilations.0 * (r - 1) + 1;
        let extent_w = dilations.1 * (s - 1) + 1;
        if auto_pad == AutoPad::Valid && (h < extent_h || w < extent_w) {
            prop_assert!(plan.is_err());
            return Ok(());
        }
        if auto_pad == AutoPad::NotSet && (h + pads.0 + pads.2 < extent_h || w + pads.1 + pads.3 < extent_w) {
            prop_assert!(plan.is_err());
            return Ok(());
        }
        let b64 = b.as_ref().map(f64s);
        let (want, shape) = reference::conv(&op, &f64s(&x), &x_shape, &f64s(&wt), &w_shape, b64.as_deref());
        // The same on absolute values (no ReLU) bounds what rounding may cost where the bias and
        // the terms cancel, as in the conformance suite: a sum of a few terms near zero is
        // judged by the size of its terms, not by itself.
        let b_abs = b.as_ref().map(abs);
        let linear = Conv { relu: false, ..op.clone() };
        let (scale, _) = reference::conv(&linear, &abs(&x), &x_shape, &abs(&wt), &w_shape, b_abs.as_deref());
        let mut y = poisoned(&cpu, dtype, &shape);
        cpu.conv_into(&op, &up(&x), &up(&wt), b.as_ref().map(up).as_ref(), &mut y).unwrap();
        assert_close_scaled(&format!("{dtype} {op:?} X{x_shape:?} W{w_shape:?}"), &cpu.download(&y).unwrap(), &want, &scale, &shape);
    }

    #[test]
    fn gemm_random_shapes(
        dtype in dtype(), m in 1usize..70, n in 1usize..70, k in 1usize..300,
        trans_a in any::<bool>(), trans_b in any::<bool>(), seed in any::<u64>(),
    ) {
        let a_shape = if trans_a { [k, m] } else { [m, k] };
        let b_shape = if trans_b { [n, k] } else { [k, n] };
        let (a, b) = (values(seed, dtype, &a_shape), values(seed ^ 1, dtype, &b_shape));
        let op = Gemm { alpha: 0.75, beta: 0.0, trans_a, trans_b, relu: false, clip: None };
        let (want, shape) = reference::gemm(&f64s(&a), &a_shape, &f64s(&b), &b_shape, None, 0.75, 0.0, trans_a, trans_b, false);
        // Judged against |A|·|B| (a single output of a few cancelling products is judged by
        // the size of its terms, as for Conv above).
        let (scale, _) = reference::gemm(&abs(&a), &a_shape, &abs(&b), &b_shape, None, 0.75, 0.0, trans_a, trans_b, false);
        let cpu = CpuBackend::new();
        let mut y = poisoned(&cpu, dtype, &shape);
        cpu.gemm_into(&op, &cpu.upload(&a).unwrap(), &cpu.upload(&b).unwrap(), None, &mut y).unwrap();
        assert_close_scaled(&format!("{dtype} Gemm {m}x{n}x{k} tA={trans_a} tB={trans_b}"), &cpu.download(&y).unwrap(), &want, &scale, &shape);
    }
}
