//! The C ABI from Rust: the header matches the library, every op matches the Rust API exactly
//! on local and remote accelerators, and every bad call gives its error code with out-parameters
//! untouched. (`examples/c` drives the same ABI from C.)

use std::ffi::{c_char, c_void, CStr, CString};
use std::ptr;

use eia::backend::cpu::CpuData;
use eia::ffi::accelerator::*;
use eia::ffi::error::*;
use eia::ffi::ops::*;
use eia::ffi::tensor::*;
use eia::ffi::{EIA_F16, EIA_F32};
use eia::ops::{Add, BatchNorm, Clip, Conv, Gemm, Op, Softmax};
use eia::{Backend, CpuBackend, DType, HostTensor, Tensor};

const TIERS: &str =
    "[[tier]]\nname = \"tiny\"\nfp32_tflops = 1.0\nfp16_tflops = 2.0\nmemory_mib = 1\n";

/// The code and message of a call's result, freeing the error.
fn outcome(e: Option<Box<eia_error>>) -> (u32, String) {
    let code = eia_error_code(e.as_deref());
    // SAFETY: eia_error_message returns a NUL-terminated string valid until the error is freed.
    let msg = unsafe { CStr::from_ptr(eia_error_message(e.as_deref())) }
        .to_str()
        .unwrap()
        .to_string();
    eia_error_free(e);
    (code, msg)
}

#[track_caller]
fn ok(e: Option<Box<eia_error>>) {
    let (code, msg) = outcome(e);
    assert_eq!(code, EIA_OK, "unexpected error: {msg}");
}

#[track_caller]
fn fails(e: Option<Box<eia_error>>, expected: u32, words: &str) {
    let (code, msg) = outcome(e);
    assert_eq!(code, expected, "wrong code for error {msg:?}");
    assert!(msg.contains(words), "{msg:?} should mention {words:?}");
}

fn cstr(s: &str) -> CString {
    CString::new(s).unwrap()
}

fn device() -> *mut eia_device {
    let toml = cstr(TIERS);
    let mut d = ptr::null_mut();
    ok(unsafe { eia_device_new(toml.as_ptr(), true, Some(&mut d)) });
    d
}

fn attach(d: *mut eia_device, tier: &str) -> *mut eia_accelerator {
    let tier = cstr(tier);
    let mut a = ptr::null_mut();
    ok(unsafe { eia_device_attach(d.as_ref(), tier.as_ptr(), Some(&mut a)) });
    a
}

fn tensor(a: *mut eia_accelerator, host: &HostTensor) -> *mut eia_tensor {
    let dtype = match host.dtype() {
        DType::F32 => EIA_F32,
        DType::F16 => EIA_F16,
    };
    let bytes = host.as_bytes();
    let mut t = ptr::null_mut();
    ok(unsafe {
        eia_tensor_new(
            a.as_ref(),
            dtype,
            host.shape().as_ptr(),
            host.shape().len(),
            bytes.as_ptr().cast(),
            bytes.len(),
            Some(&mut t),
        )
    });
    t
}

fn read(t: *mut eia_tensor) -> Vec<u8> {
    let mut n = 0;
    ok(eia_tensor_bytes(unsafe { t.as_ref() }, Some(&mut n)));
    let mut out = vec![0xA5u8; n];
    ok(unsafe { eia_tensor_read(t.as_ref(), out.as_mut_ptr().cast(), n) });
    out
}

/// Random values in [-1, 1), never all zero, from a fixed seed per call site.
fn random(dtype: DType, shape: &[usize], seed: u64) -> HostTensor {
    let len: usize = shape.iter().product();
    let mut s = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    let v: Vec<f32> = (0..len)
        .map(|_| {
            s = s
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((s >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
        })
        .collect();
    HostTensor::from_f32(dtype, shape, &v).unwrap()
}

#[test]
fn header_matches_the_library() {
    let root = env!("CARGO_MANIFEST_DIR");
    let config = cbindgen::Config::from_file(format!("{root}/cbindgen.toml")).unwrap();
    let mut generated = Vec::new();
    cbindgen::Builder::new()
        .with_config(config)
        .with_src(format!("{root}/src/ffi/mod.rs"))
        .generate()
        .expect("cbindgen reads src/ffi")
        .write(&mut generated);
    let path = format!("{root}/include/eia.h");
    if std::env::var_os("EIA_BLESS").is_some() {
        std::fs::write(&path, &generated).unwrap();
    }
    let checked_in = std::fs::read(&path).unwrap_or_default();
    assert!(
        checked_in == generated,
        "include/eia.h differs from what src/ffi declares: run \
         `EIA_BLESS=1 cargo test --release --test ffi header` and commit the header"
    );
    let header = String::from_utf8(generated).unwrap();
    for f in [
        "eia_device_new",
        "eia_connection_attach",
        "eia_tensor_new",
        "eia_tensor_read",
        "eia_gemm",
        "eia_matmul",
        "eia_conv",
        "eia_conv_sum",
        "eia_batch_norm",
        "eia_softmax",
        "eia_relu",
        "eia_clip",
        "eia_leaky_relu",
        "eia_sigmoid",
        "eia_tanh",
        "eia_add",
        "eia_sub",
        "eia_mul",
        "eia_div",
        "eia_sum",
        "eia_accelerator_usage",
        "eia_accelerator_resize",
        "eia_accelerator_detach",
    ] {
        assert!(header.contains(&format!(" *{f}(")), "header declares {f}");
    }
}

/// Runs each op through the ABI on `a` and checks it bit for bit against the Rust API on the CPU
/// backend, in both dtypes.
fn ops_match_the_rust_api(a: *mut eia_accelerator) {
    let cpu = CpuBackend::new();
    let same = |t: *mut eia_tensor, expected: Tensor<CpuData>| {
        assert_eq!(read(t), expected.as_bytes(), "{:?}", expected.shape());
        eia_tensor_free(unsafe { Box::from_raw(t) }.into());
    };
    for dtype in DType::ALL {
        // Gemm with transposes, C broadcast and alpha/beta.
        let (ha, hb, hc) = (
            random(dtype, &[7, 5], 1),
            random(dtype, &[3, 7], 2),
            random(dtype, &[3], 3),
        );
        let gemm = Gemm {
            alpha: 0.5,
            beta: -2.0,
            trans_a: true,
            trans_b: true,
            relu: false,
            clip: Some(Clip {
                min: Some(-0.5),
                max: None,
            }),
        };
        let attrs = eia_gemm_attrs {
            alpha: 0.5,
            beta: -2.0,
            trans_a: true,
            trans_b: true,
            relu: false,
            clip_min: -0.5,
            clip_max: f32::INFINITY,
        };
        let (ta, tb, tc) = (tensor(a, &ha), tensor(a, &hb), tensor(a, &hc));
        let mut y = ptr::null_mut();
        ok(unsafe {
            eia_gemm(
                a.as_ref(),
                Some(&attrs),
                ta.as_ref(),
                tb.as_ref(),
                tc.as_ref(),
                Some(&mut y),
            )
        });
        let (ca, cb, cc) = (
            cpu.upload(&ha).unwrap(),
            cpu.upload(&hb).unwrap(),
            cpu.upload(&hc).unwrap(),
        );
        same(y, cpu.gemm(&gemm, &ca, &cb, Some(&cc)).unwrap());

        // MatMul with batch broadcasting.
        let hm = random(dtype, &[2, 1, 5, 3], 4);
        let tm = tensor(a, &hm);
        ok(unsafe { eia_matmul(a.as_ref(), ta.as_ref(), tm.as_ref(), Some(&mut y)) });
        let expected = cpu.matmul(&ca, &cpu.upload(&hm).unwrap()).unwrap();
        same(y, expected);

        // Conv: groups, strides, asymmetric pads, dilation, bias, fused ReLU.
        let (hx, hw, hbias) = (
            random(dtype, &[2, 4, 9, 7], 5),
            random(dtype, &[6, 2, 3, 2], 6),
            random(dtype, &[6], 7),
        );
        let conv = Conv {
            strides: [2, 1],
            pads: [1, 0, 2, 1],
            dilations: [1, 2],
            group: 2,
            relu: true,
            clip: Some(Clip {
                min: None,
                max: Some(0.5),
            }),
            ..Conv::default()
        };
        let mut cattrs = eia_conv_attrs_default();
        cattrs.clip_max = 0.5;
        cattrs.strides = [2, 1];
        cattrs.pads = [1, 0, 2, 1];
        cattrs.dilations = [1, 2];
        cattrs.group = 2;
        cattrs.relu = true;
        let (tx, tw, tbias) = (tensor(a, &hx), tensor(a, &hw), tensor(a, &hbias));
        ok(unsafe {
            eia_conv(
                a.as_ref(),
                Some(&cattrs),
                tx.as_ref(),
                tw.as_ref(),
                tbias.as_ref(),
                Some(&mut y),
            )
        });
        let cx = cpu.upload(&hx).unwrap();
        let expected = cpu
            .conv(
                &conv,
                &cx,
                &cpu.upload(&hw).unwrap(),
                Some(&cpu.upload(&hbias).unwrap()),
            )
            .unwrap();
        let out_shape = expected.shape().to_vec();
        same(y, expected);

        // The same with a residual sum (eia_conv_sum), added before the ReLU and Clip.
        let hs = random(dtype, &out_shape, 8);
        let tsum = tensor(a, &hs);
        ok(unsafe {
            eia_conv_sum(
                a.as_ref(),
                Some(&cattrs),
                tx.as_ref(),
                tw.as_ref(),
                tbias.as_ref(),
                tsum.as_ref(),
                Some(&mut y),
            )
        });
        let summed = Op::Conv(Conv { sum: true, ..conv });
        let operands = [&hx, &hw, &hs, &hbias].map(|t| cpu.upload(t).unwrap());
        let expected = cpu.apply(&summed, &operands.each_ref()).unwrap();
        same(y, expected);

        // BatchNormalization (variance kept positive).
        let params: Vec<HostTensor> = (0..4)
            .map(|i| {
                let p = random(dtype, &[4], 10 + i);
                if i == 3 {
                    let v: Vec<f32> = p
                        .data()
                        .to_f32_vec()
                        .iter()
                        .map(|x| x.abs() + 0.5)
                        .collect();
                    HostTensor::from_f32(dtype, &[4], &v).unwrap()
                } else {
                    p
                }
            })
            .collect();
        let tp: Vec<_> = params.iter().map(|p| tensor(a, p)).collect();
        let battrs = eia_batch_norm_attrs { epsilon: 1e-3 };
        ok(unsafe {
            eia_batch_norm(
                a.as_ref(),
                Some(&battrs),
                tx.as_ref(),
                tp[0].as_ref(),
                tp[1].as_ref(),
                tp[2].as_ref(),
                tp[3].as_ref(),
                Some(&mut y),
            )
        });
        let cp: Vec<_> = params.iter().map(|p| cpu.upload(p).unwrap()).collect();
        let expected = cpu
            .batch_norm(
                &BatchNorm { epsilon: 1e-3 },
                &cx,
                [&cp[0], &cp[1], &cp[2], &cp[3]],
            )
            .unwrap();
        same(y, expected);

        // Softmax along a middle axis.
        let sattrs = eia_softmax_attrs { axis: -3 };
        ok(unsafe { eia_softmax(a.as_ref(), Some(&sattrs), tx.as_ref(), Some(&mut y)) });
        same(y, cpu.softmax(&Softmax { axis: -3 }, &cx).unwrap());

        // Add + ReLU of X and a per-channel [4, 1, 1]; Sub, Mul, Div; Sum of three.
        let hs = random(dtype, &[4, 1, 1], 20);
        let ts = tensor(a, &hs);
        let cs = cpu.upload(&hs).unwrap();
        let add = eia_add_attrs { relu: true };
        ok(unsafe {
            eia_add(
                a.as_ref(),
                Some(&add),
                tx.as_ref(),
                ts.as_ref(),
                Some(&mut y),
            )
        });
        let relu = Op::Add(Add { relu: true });
        same(y, cpu.apply(&relu, &[&cx, &cs]).unwrap());
        type Binary = extern "C" fn(
            Option<&eia_accelerator>,
            Option<&eia_tensor>,
            Option<&eia_tensor>,
            Option<&mut *mut eia_tensor>,
        ) -> Option<Box<eia_error>>;
        let binaries: [(Binary, Op); 3] =
            [(eia_sub, Op::Sub), (eia_mul, Op::Mul), (eia_div, Op::Div)];
        for (f, op) in binaries {
            ok(f(
                unsafe { a.as_ref() },
                unsafe { ts.as_ref() },
                unsafe { tx.as_ref() },
                Some(&mut y),
            ));
            same(y, cpu.apply(&op, &[&cs, &cx]).unwrap());
        }
        let inputs = unsafe { [tx.as_ref(), ts.as_ref(), tx.as_ref()] };
        ok(unsafe { eia_sum(a.as_ref(), inputs.as_ptr(), 3, Some(&mut y)) });
        same(y, cpu.apply(&Op::Sum, &[&cx, &cs, &cx]).unwrap());
        eia_tensor_free(unsafe { Box::from_raw(ts) }.into());

        for t in [ta, tb, tc, tm, tx, tw, tbias, tsum].into_iter().chain(tp) {
            eia_tensor_free(unsafe { Box::from_raw(t) }.into());
        }
    }
}

#[test]
fn local_ops_match_the_rust_api_and_usage_counts_them() {
    let d = device();
    let a = attach(d, "tiny");
    ops_match_the_rust_api(a);
    let mut u = eia_usage::default();
    ok(eia_accelerator_usage(unsafe { a.as_ref() }, Some(&mut u)));
    assert_eq!(u.ops, 22); // 11 ops per dtype
    assert!(u.flops_f32 > 0 && u.flops_f16 > 0);
    assert_eq!(u.memory_used, 0, "every tensor was freed");
    assert_eq!(u.memory_quota, 1 << 20);
    let mut tier = eia_tier_info::default();
    ok(eia_accelerator_tier(unsafe { a.as_ref() }, Some(&mut tier)));
    assert_eq!((tier.fp32_tflops, tier.fp16_tflops), (1.0, 2.0));
    let mut summary: *mut c_char = ptr::null_mut();
    ok(eia_accelerator_summary(
        unsafe { a.as_ref() },
        Some(&mut summary),
    ));
    let text = unsafe { CStr::from_ptr(summary) }
        .to_str()
        .unwrap()
        .to_string();
    unsafe { eia_string_free(summary) };
    assert!(text.contains("bound"), "{text}");
    let mut last = eia_usage::default();
    ok(eia_accelerator_detach(
        unsafe { a.as_ref() },
        Some(&mut last),
    ));
    assert_eq!(last.ops, 22);
    eia_accelerator_free(unsafe { Box::from_raw(a) }.into());
    eia_device_free(unsafe { Box::from_raw(d) }.into());
}

/// A server on loopback offering the test tiers (overcommitted), and a C connection to it.
fn serve() -> (eia::rpc::ServerHandle, *mut eia_connection) {
    let server = eia::rpc::spawn(
        "127.0.0.1:0".parse().unwrap(),
        CpuBackend::new(),
        eia::rpc::ServerConfig {
            device: eia::DeviceConfig {
                tiers: eia::Tiers::with_toml("test", TIERS).unwrap(),
                overcommit: true,
                ..Default::default()
            },
            ..Default::default()
        },
    )
    .unwrap();
    let url = cstr(&server.url(false));
    let mut conn = ptr::null_mut();
    ok(unsafe { eia_connection_new(url.as_ptr(), ptr::null(), ptr::null(), Some(&mut conn)) });
    (server, conn)
}

#[test]
fn remote_ops_match_the_rust_api() {
    let (_server, conn) = serve();
    let tier = cstr("tiny");
    let mut a = ptr::null_mut();
    ok(unsafe { eia_connection_attach(conn.as_ref(), tier.as_ptr(), Some(&mut a)) });
    // Freeing the connection first is allowed: the accelerator keeps it open.
    eia_connection_free(unsafe { Box::from_raw(conn) }.into());
    ops_match_the_rust_api(a);
    let mut u = eia_usage::default();
    ok(eia_accelerator_usage(unsafe { a.as_ref() }, Some(&mut u)));
    assert_eq!(u.ops, 22); // 11 ops per dtype
    eia_accelerator_free(unsafe { Box::from_raw(a) }.into());

    // Nothing listens on port 1: a network error, not a crash.
    let nowhere = cstr("http://127.0.0.1:1");
    let mut unused = ptr::null_mut();
    let e = unsafe {
        eia_connection_new(
            nowhere.as_ptr(),
            ptr::null(),
            ptr::null(),
            Some(&mut unused),
        )
    };
    fails(e, EIA_ERR_NETWORK, "cannot connect");
    assert!(unused.is_null());
}

#[test]
fn bad_calls_give_their_codes_and_leave_outputs_alone() {
    let d = device();
    let a = attach(d, "tiny");
    let acc = unsafe { a.as_ref() };
    let x = tensor(a, &random(DType::F32, &[2, 3], 1));
    let sentinel = ptr::dangling_mut::<eia_tensor>();
    let mut y = sentinel;
    let shape = [2usize, 3];
    let data = [1.0f32; 6];
    let gemm = eia_gemm_attrs_default();

    // NULL handles, strings and out-parameters.
    fails(
        unsafe { eia_device_attach(None, c"tiny".as_ptr(), Some(&mut ptr::null_mut())) },
        EIA_ERR_NULL_ARGUMENT,
        "`device`",
    );
    fails(
        unsafe { eia_device_attach(d.as_ref(), ptr::null(), Some(&mut ptr::null_mut())) },
        EIA_ERR_NULL_ARGUMENT,
        "`tier`",
    );
    fails(
        unsafe { eia_device_new(ptr::null(), false, None) },
        EIA_ERR_NULL_ARGUMENT,
        "`out`",
    );
    fails(
        unsafe { eia_gemm(acc, None, x.as_ref(), x.as_ref(), None, Some(&mut y)) },
        EIA_ERR_NULL_ARGUMENT,
        "`attrs`",
    );
    fails(
        unsafe { eia_gemm(acc, Some(&gemm), x.as_ref(), None, None, Some(&mut y)) },
        EIA_ERR_NULL_ARGUMENT,
        "`b`",
    );
    fails(
        unsafe { eia_softmax(acc, Some(&eia_softmax_attrs_default()), x.as_ref(), None) },
        EIA_ERR_NULL_ARGUMENT,
        "`y`",
    );
    let e = unsafe {
        eia_tensor_new(
            acc,
            EIA_F32,
            ptr::null(),
            2,
            data.as_ptr().cast(),
            24,
            Some(&mut y),
        )
    };
    fails(e, EIA_ERR_NULL_ARGUMENT, "`shape`");
    let e = unsafe {
        eia_tensor_new(
            acc,
            EIA_F32,
            shape.as_ptr(),
            2,
            ptr::null(),
            24,
            Some(&mut y),
        )
    };
    fails(e, EIA_ERR_NULL_ARGUMENT, "`data`");
    fails(
        eia_tensor_bytes(None, Some(&mut 0)),
        EIA_ERR_NULL_ARGUMENT,
        "`tensor`",
    );
    let conv = eia_conv_attrs_default();
    fails(
        unsafe {
            eia_conv_sum(
                acc,
                Some(&conv),
                x.as_ref(),
                x.as_ref(),
                None,
                None,
                Some(&mut y),
            )
        },
        EIA_ERR_NULL_ARGUMENT,
        "`sum`",
    );

    // Values out of range.
    let e = unsafe {
        eia_tensor_new(
            acc,
            7,
            shape.as_ptr(),
            2,
            data.as_ptr().cast(),
            24,
            Some(&mut y),
        )
    };
    fails(e, EIA_ERR_INVALID_ARGUMENT, "dtype 7");
    let e = unsafe {
        eia_tensor_new(
            acc,
            EIA_F32,
            shape.as_ptr(),
            2,
            data.as_ptr().cast(),
            20,
            Some(&mut y),
        )
    };
    fails(e, EIA_ERR_DATA_LENGTH, "20 bytes");
    let bad_utf8 = [0xFFu8, 0];
    fails(
        unsafe {
            eia_device_attach(
                d.as_ref(),
                bad_utf8.as_ptr().cast(),
                Some(&mut ptr::null_mut()),
            )
        },
        EIA_ERR_INVALID_ARGUMENT,
        "UTF-8",
    );
    let mut conv = eia_conv_attrs_default();
    conv.auto_pad = 9;
    fails(
        unsafe { eia_conv(acc, Some(&conv), x.as_ref(), x.as_ref(), None, Some(&mut y)) },
        EIA_ERR_INVALID_ARGUMENT,
        "auto_pad 9",
    );
    let mut small = [0u8; 8];
    fails(
        unsafe { eia_tensor_read(x.as_ref(), small.as_mut_ptr().cast::<c_void>(), 8) },
        EIA_ERR_DATA_LENGTH,
        "needs 24",
    );
    fails(
        unsafe { eia_tensor_write(x.as_mut(), data.as_ptr().cast(), 23) },
        EIA_ERR_DATA_LENGTH,
        "23 bytes",
    );

    // The op contracts: shape, dtype, attribute errors.
    fails(
        unsafe { eia_gemm(acc, Some(&gemm), x.as_ref(), x.as_ref(), None, Some(&mut y)) },
        EIA_ERR_SHAPE,
        "Gemm",
    );
    let h = tensor(a, &random(DType::F16, &[3, 2], 2));
    fails(
        unsafe { eia_gemm(acc, Some(&gemm), x.as_ref(), h.as_ref(), None, Some(&mut y)) },
        EIA_ERR_DTYPE,
        "FP16",
    );
    fails(
        unsafe {
            eia_softmax(
                acc,
                Some(&eia_softmax_attrs { axis: 2 }),
                x.as_ref(),
                Some(&mut y),
            )
        },
        EIA_ERR_ATTRIBUTE,
        "axis",
    );

    // Tiers, quotas, ownership, detach.
    fails(
        unsafe {
            eia_device_attach(
                d.as_ref(),
                c"eia9.huge".as_ptr(),
                Some(&mut ptr::null_mut()),
            )
        },
        EIA_ERR_UNKNOWN_TIER,
        "eia2.medium",
    );
    let big = [1usize << 20];
    let e = unsafe {
        eia_tensor_new(
            acc,
            EIA_F32,
            big.as_ptr(),
            1,
            vec![0u8; 4 << 20].as_ptr().cast(),
            4 << 20,
            Some(&mut y),
        )
    };
    fails(e, EIA_ERR_MEMORY_QUOTA, "quota");
    let other = attach(d, "tiny");
    fails(
        unsafe {
            eia_softmax(
                other.as_ref(),
                Some(&eia_softmax_attrs_default()),
                x.as_ref(),
                Some(&mut y),
            )
        },
        EIA_ERR_INVALID_ARGUMENT,
        "belongs to accelerator",
    );
    fails(
        unsafe {
            eia_device_new(
                c"[[tier]]\nname = 3".as_ptr(),
                true,
                Some(&mut ptr::null_mut()),
            )
        },
        EIA_ERR_CONFIG,
        "tiers_toml",
    );
    ok(eia_accelerator_detach(acc, None));
    fails(
        eia_accelerator_detach(acc, None),
        EIA_ERR_DETACHED,
        "detached",
    );
    let mut back = [0u8; 24];
    fails(
        unsafe { eia_tensor_read(x.as_ref(), back.as_mut_ptr().cast::<c_void>(), 24) },
        EIA_ERR_DETACHED,
        "detached",
    );
    assert_eq!(y, sentinel, "no failed call wrote its out-parameter");

    // Free in any order: accelerators before their tensors, NULL everywhere.
    eia_accelerator_free(unsafe { Box::from_raw(a) }.into());
    eia_accelerator_free(unsafe { Box::from_raw(other) }.into());
    eia_device_free(unsafe { Box::from_raw(d) }.into());
    eia_tensor_free(unsafe { Box::from_raw(x) }.into());
    eia_tensor_free(unsafe { Box::from_raw(h) }.into());
    eia_tensor_free(None);
    eia_accelerator_free(None);
    eia_error_free(None);
    unsafe { eia_string_free(ptr::null_mut()) };
    assert_eq!(eia_error_code(None), EIA_OK);
}

#[test]
fn resize_moves_tiers_and_refuses_below_usage() {
    let d = device();
    let a = attach(d, "eia2.large");
    let acc = unsafe { a.as_ref() };
    let t = tensor(a, &random(DType::F16, &[1 << 20], 3));
    fails(
        unsafe { eia_accelerator_resize(acc, c"tiny".as_ptr()) },
        EIA_ERR_MEMORY_QUOTA,
        "free tensors first",
    );
    eia_tensor_free(unsafe { Box::from_raw(t) }.into());
    ok(unsafe { eia_accelerator_resize(acc, c"ml.TINY".as_ptr()) });
    let mut name: *mut c_char = ptr::null_mut();
    ok(eia_accelerator_tier_name(acc, Some(&mut name)));
    assert_eq!(unsafe { CStr::from_ptr(name) }.to_str().unwrap(), "tiny");
    unsafe { eia_string_free(name) };
    let version = unsafe { CStr::from_ptr(eia_version()) }.to_str().unwrap();
    assert_eq!(version, env!("CARGO_PKG_VERSION"));
    eia_accelerator_free(unsafe { Box::from_raw(a) }.into());
    eia_device_free(unsafe { Box::from_raw(d) }.into());
}

#[test]
fn many_threads_share_one_accelerator_and_its_tensors() {
    let d = device();
    let a = attach(d, "eia2.medium");
    let (ha, hb) = (
        random(DType::F32, &[33, 17], 8),
        random(DType::F32, &[17, 9], 9),
    );
    let (ta, tb) = (tensor(a, &ha), tensor(a, &hb));
    let cpu = CpuBackend::new();
    let expected = cpu
        .matmul(&cpu.upload(&ha).unwrap(), &cpu.upload(&hb).unwrap())
        .unwrap();
    // The handles are shared by reference, as C threads would share the pointers.
    let (acc, ta, tb) = unsafe { (&*a, &*ta, &*tb) };
    std::thread::scope(|s| {
        for _ in 0..4 {
            s.spawn(|| {
                for _ in 0..50 {
                    let mut y = ptr::null_mut();
                    ok(eia_matmul(Some(acc), Some(ta), Some(tb), Some(&mut y)));
                    assert_eq!(read(y), expected.as_bytes());
                    eia_tensor_free(unsafe { Box::from_raw(y) }.into());
                }
            });
        }
    });
    let mut u = eia_usage::default();
    ok(eia_accelerator_usage(Some(acc), Some(&mut u)));
    assert_eq!(u.ops, 200);
    let (ta, tb) = (
        ta as *const eia_tensor as *mut eia_tensor,
        tb as *const _ as *mut eia_tensor,
    );
    eia_tensor_free(unsafe { Box::from_raw(ta) }.into());
    eia_tensor_free(unsafe { Box::from_raw(tb) }.into());
    eia_accelerator_free(unsafe { Box::from_raw(a) }.into());
    eia_device_free(unsafe { Box::from_raw(d) }.into());
}

/// The unary activations through the ABI, bit for bit against the Rust API on the CPU backend,
/// their attribute defaults, and Clip's bad bounds as attribute errors.
#[test]
fn unary_ops_match_the_rust_api() {
    use eia::ops::{Clip, LeakyRelu, Op};
    let d = device();
    let a = attach(d, "tiny");
    let acc = unsafe { a.as_ref() };
    let cpu = CpuBackend::new();
    let d_clip = eia_clip_attrs_default();
    assert_eq!((d_clip.min, d_clip.max), (f32::NEG_INFINITY, f32::INFINITY));
    assert_eq!(eia_leaky_relu_attrs_default().alpha, 0.01);
    for dtype in DType::ALL {
        let hx = random(dtype, &[2, 3, 5], 7);
        let (tx, cx) = (tensor(a, &hx), cpu.upload(&hx).unwrap());
        let check = |y: *mut eia_tensor, op: Op| {
            let expected = cpu.download(&cpu.apply(&op, &[&cx]).unwrap()).unwrap();
            assert_eq!(read(y), expected.as_bytes(), "{op:?}");
            eia_tensor_free(unsafe { Box::from_raw(y) }.into());
        };
        let x = unsafe { tx.as_ref() };
        let mut y = ptr::null_mut();
        ok(eia_relu(acc, x, Some(&mut y)));
        check(y, Op::Relu);
        let relu6 = eia_clip_attrs { min: 0.0, max: 6.0 };
        ok(eia_clip(acc, Some(&relu6), x, Some(&mut y)));
        check(y, Op::Clip(Clip::RELU6));
        let upper = eia_clip_attrs {
            max: 0.25,
            ..eia_clip_attrs_default()
        };
        ok(eia_clip(acc, Some(&upper), x, Some(&mut y)));
        check(
            y,
            Op::Clip(Clip {
                min: None,
                max: Some(0.25),
            }),
        );
        let leaky = eia_leaky_relu_attrs { alpha: 0.2 };
        ok(eia_leaky_relu(acc, Some(&leaky), x, Some(&mut y)));
        check(y, Op::LeakyRelu(LeakyRelu { alpha: 0.2 }));
        ok(eia_sigmoid(acc, x, Some(&mut y)));
        check(y, Op::Sigmoid);
        ok(eia_tanh(acc, x, Some(&mut y)));
        check(y, Op::Tanh);
        let bad = eia_clip_attrs { min: 1.0, max: 0.0 };
        fails(
            eia_clip(acc, Some(&bad), x, Some(&mut y)),
            EIA_ERR_ATTRIBUTE,
            "min",
        );
        fails(
            eia_relu(acc, None, Some(&mut y)),
            EIA_ERR_NULL_ARGUMENT,
            "`x`",
        );
        eia_tensor_free(unsafe { Box::from_raw(tx) }.into());
    }
    eia_accelerator_free(unsafe { Box::from_raw(a) }.into());
    eia_device_free(unsafe { Box::from_raw(d) }.into());
}

/// The pools through the ABI match the Rust API bit for bit, and a MaxPool without its
/// kernel_shape (the default) is an invalid-argument error that leaves `y` alone.
#[test]
fn pool_ops_match_the_rust_api() {
    use eia::ops::{AutoPad, AveragePool, MaxPool, Op};
    let d = device();
    let a = attach(d, "tiny");
    let cpu = CpuBackend::new();
    for dtype in DType::ALL {
        let hx = random(dtype, &[2, 3, 7, 6], 11);
        let tx = tensor(a, &hx);
        let cx = cpu.upload(&hx).unwrap();
        let same = |t: *mut eia_tensor, op: Op| {
            let expected = cpu.apply(&op, &[&cx]).unwrap();
            assert_eq!(read(t), expected.as_bytes(), "{op:?}");
            eia_tensor_free(unsafe { Box::from_raw(t) }.into());
        };
        let mut y = ptr::null_mut();
        let mut m = eia_max_pool_attrs_default();
        m.kernel_shape = [3, 2];
        m.strides = [2, 1];
        m.pads = [1, 0, 2, 1];
        m.dilations = [1, 2];
        m.ceil_mode = true;
        ok(unsafe { eia_max_pool(a.as_ref(), Some(&m), tx.as_ref(), Some(&mut y)) });
        let op = MaxPool {
            kernel_shape: [3, 2],
            strides: [2, 1],
            pads: [1, 0, 2, 1],
            dilations: [1, 2],
            ceil_mode: true,
            ..MaxPool::default()
        };
        same(y, Op::MaxPool(op));
        let mut v = eia_average_pool_attrs_default();
        v.kernel_shape = [2, 3];
        v.strides = [2, 2];
        v.count_include_pad = true;
        v.auto_pad = EIA_AUTO_PAD_SAME_LOWER;
        ok(unsafe { eia_average_pool(a.as_ref(), Some(&v), tx.as_ref(), Some(&mut y)) });
        let op = AveragePool {
            kernel_shape: [2, 3],
            strides: [2, 2],
            count_include_pad: true,
            auto_pad: AutoPad::SameLower,
            ..AveragePool::default()
        };
        same(y, Op::AveragePool(op));
        ok(unsafe { eia_global_average_pool(a.as_ref(), tx.as_ref(), Some(&mut y)) });
        same(y, Op::GlobalAveragePool);
        ok(unsafe { eia_global_max_pool(a.as_ref(), tx.as_ref(), Some(&mut y)) });
        same(y, Op::GlobalMaxPool);
        // Errors: no kernel_shape; an unknown auto_pad; both leave y alone.
        let mut y = ptr::null_mut();
        let bad = eia_max_pool_attrs_default();
        fails(
            unsafe { eia_max_pool(a.as_ref(), Some(&bad), tx.as_ref(), Some(&mut y)) },
            EIA_ERR_ATTRIBUTE,
            "kernel_shape",
        );
        v.auto_pad = 9;
        fails(
            unsafe { eia_average_pool(a.as_ref(), Some(&v), tx.as_ref(), Some(&mut y)) },
            EIA_ERR_INVALID_ARGUMENT,
            "auto_pad",
        );
        assert!(y.is_null());
        eia_tensor_free(unsafe { Box::from_raw(tx) }.into());
    }
    eia_accelerator_free(unsafe { Box::from_raw(a) }.into());
    eia_device_free(unsafe { Box::from_raw(d) }.into());
}

/// LRN through the ABI matches the Rust API bit for bit; the default attrs (no size) and a
/// zero bias are attribute errors that leave `y` alone.
#[test]
fn lrn_matches_the_rust_api() {
    use eia::ops::{Lrn, Op};
    let d = device();
    let a = attach(d, "tiny");
    let cpu = CpuBackend::new();
    for dtype in DType::ALL {
        let hx = random(dtype, &[2, 5, 3, 4], 13);
        let tx = tensor(a, &hx);
        let mut attrs = eia_lrn_attrs_default();
        let onnx = Lrn::default();
        let got = (attrs.size, attrs.alpha, attrs.beta, attrs.bias);
        assert_eq!(got, (0, onnx.alpha, onnx.beta, onnx.bias));
        let mut y = ptr::null_mut();
        fails(
            unsafe { eia_lrn(a.as_ref(), Some(&attrs), tx.as_ref(), Some(&mut y)) },
            EIA_ERR_ATTRIBUTE,
            "size",
        );
        attrs.size = 4;
        attrs.alpha = 0.5;
        attrs.bias = 0.0;
        fails(
            unsafe { eia_lrn(a.as_ref(), Some(&attrs), tx.as_ref(), Some(&mut y)) },
            EIA_ERR_ATTRIBUTE,
            "bias",
        );
        assert!(y.is_null());
        attrs.bias = 2.0;
        ok(unsafe { eia_lrn(a.as_ref(), Some(&attrs), tx.as_ref(), Some(&mut y)) });
        let op = Op::Lrn(Lrn {
            size: 4,
            alpha: 0.5,
            beta: 0.75,
            bias: 2.0,
        });
        let expected = cpu.apply(&op, &[&cpu.upload(&hx).unwrap()]).unwrap();
        assert_eq!(read(y), expected.as_bytes());
        eia_tensor_free(unsafe { Box::from_raw(y) }.into());
        eia_tensor_free(unsafe { Box::from_raw(tx) }.into());
    }
    eia_accelerator_free(unsafe { Box::from_raw(a) }.into());
    eia_device_free(unsafe { Box::from_raw(d) }.into());
}

/// A small CNN (Conv → Relu → GlobalAveragePool → Flatten → Gemm) on `[N, 3, 12, 12]`, with
/// `c` channels: about `4·(27c + 10c)` bytes of weights.
fn small_cnn(c: usize) -> Vec<u8> {
    let mut g = eia::model::zoo::GraphBuilder::new(7);
    let x = g.conv("image", 3, c, 3, 1, 1, 1);
    let x = g.relu(&x);
    let x = g.global_average_pool(&x);
    let x = g.flatten(&x);
    let y = g.linear(&x, c, 10);
    g.finish("small_cnn", ("image", &[3, 12, 12]), &y)
}

fn load_model(
    a: *mut eia_accelerator,
    bytes: &[u8],
    options: &eia::ffi::model::eia_model_options,
) -> *mut eia::ffi::model::eia_model {
    let mut m = ptr::null_mut();
    ok(unsafe {
        eia::ffi::model::eia_model_load_bytes(
            a.as_ref(),
            bytes.as_ptr(),
            bytes.len(),
            Some(options),
            Some(&mut m),
        )
    });
    m
}

/// Runs `m` on `inputs` through `eia_model_run`; outputs are poisoned (NaN) first.
fn run_model(
    m: *mut eia::ffi::model::eia_model,
    inputs: &[Vec<f32>],
    outs: &[usize],
) -> Vec<Vec<f32>> {
    let mut outputs: Vec<Vec<f32>> = outs.iter().map(|&n| vec![f32::NAN; n]).collect();
    let in_ptrs: Vec<*const f32> = inputs.iter().map(|v| v.as_ptr()).collect();
    let in_lens: Vec<usize> = inputs.iter().map(Vec::len).collect();
    let out_ptrs: Vec<*mut f32> = outputs.iter_mut().map(|v| v.as_mut_ptr()).collect();
    ok(unsafe {
        eia::ffi::model::eia_model_run(
            m.as_ref(),
            in_ptrs.as_ptr(),
            in_lens.as_ptr(),
            in_ptrs.len(),
            out_ptrs.as_ptr(),
            outs.as_ptr(),
            out_ptrs.len(),
        )
    });
    outputs
}

/// A model loaded and run through the C ABI, on a local and on a remote accelerator, in FP32
/// and FP16, gives what the Rust API gives on the CPU backend; its ports and info describe it.
#[test]
fn models_run_through_the_c_abi_like_the_rust_api() {
    use eia::ffi::model::*;
    let bytes = small_cnn(16);
    let (_server, conn) = serve();
    let tier = cstr("tiny");
    let mut remote = ptr::null_mut();
    ok(unsafe { eia_connection_attach(conn.as_ref(), tier.as_ptr(), Some(&mut remote)) });
    let d = device();
    let local = attach(d, "tiny");

    for (fp16, batch) in [(false, 1), (false, 3), (true, 2)] {
        let options = eia_model_options { batch, fp16 };
        let expected_model = eia::Model::from_bytes(&bytes, (&options).into()).unwrap();
        let cpu = CpuBackend::new();
        let x = random(DType::F32, &[batch, 3, 12, 12], 40 + batch as u64);
        let expected = expected_model
            .session(&cpu)
            .unwrap()
            .run(std::slice::from_ref(&x))
            .unwrap();
        let expected = expected[0].data().to_f32_vec();
        for a in [local, remote] {
            let m = load_model(a, &bytes, &options);
            let mut info = eia_model_info::default();
            ok(eia_model_describe(unsafe { m.as_ref() }, Some(&mut info)));
            assert_eq!((info.inputs, info.outputs, info.ops), (1, 1, 4));
            assert_eq!(info.flops, expected_model.flops());
            assert_eq!(info.memory_bytes, expected_model.peak_bytes());
            let mut port = std::mem::MaybeUninit::<eia_model_port>::uninit();
            ok(eia_model_input(
                unsafe { m.as_ref() },
                0,
                Some(unsafe { &mut *port.as_mut_ptr() }),
            ));
            let port = unsafe { port.assume_init() };
            let name = unsafe { CStr::from_ptr(port.name) }.to_str().unwrap();
            let dims = unsafe { std::slice::from_raw_parts(port.dims, port.rank) };
            assert_eq!(
                (name, dims, port.elements),
                ("image", &[batch, 3, 12, 12][..], x.desc().len())
            );
            assert_eq!(port.dtype, if fp16 { EIA_F16 } else { EIA_F32 });
            let mut out_port = port;
            ok(eia_model_output(
                unsafe { m.as_ref() },
                0,
                Some(&mut out_port),
            ));
            assert_eq!(out_port.elements, batch * 10);

            let got = run_model(m, &[x.data().to_f32_vec()], &[batch * 10]);
            // The same kernels on the same inputs: equal up to the threads' summation order.
            for (g, e) in got[0].iter().zip(&expected) {
                assert!(
                    (g - e).abs() <= 1e-5 * e.abs().max(1.0),
                    "{g} vs {e} (fp16 {fp16})"
                );
            }
            // A second inference on the same model gives the same answer.
            assert_eq!(run_model(m, &[x.data().to_f32_vec()], &[batch * 10]), got);
            eia_model_free(unsafe { Box::from_raw(m) }.into());
        }
    }
    // A model that does not fit is refused before anything is uploaded, remotely too.
    let mut u = eia_usage::default();
    ok(eia_accelerator_usage(
        unsafe { remote.as_ref() },
        Some(&mut u),
    ));
    let uploaded = u.bytes_uploaded;
    let big = small_cnn(256);
    let mut m = ptr::null_mut();
    let options = eia_model_options {
        batch: 8,
        fp16: false,
    };
    let e = unsafe {
        eia_model_load_bytes(
            remote.as_ref(),
            big.as_ptr(),
            big.len(),
            Some(&options),
            Some(&mut m),
        )
    };
    fails(e, EIA_ERR_MEMORY_QUOTA, "would exceed its memory quota");
    assert!(m.is_null());
    ok(eia_accelerator_usage(
        unsafe { remote.as_ref() },
        Some(&mut u),
    ));
    assert_eq!(u.bytes_uploaded, uploaded);
    // Freeing a model frees its memory on the accelerator.
    let mut u = eia_usage::default();
    ok(eia_accelerator_usage(
        unsafe { local.as_ref() },
        Some(&mut u),
    ));
    assert_eq!(u.memory_used, 0);
    ok(eia_accelerator_usage(
        unsafe { remote.as_ref() },
        Some(&mut u),
    ));
    assert_eq!(u.memory_used, 0);
    eia_accelerator_free(unsafe { Box::from_raw(local) }.into());
    eia_accelerator_free(unsafe { Box::from_raw(remote) }.into());
    eia_connection_free(unsafe { Box::from_raw(conn) }.into());
    eia_device_free(unsafe { Box::from_raw(d) }.into());
}

/// Every bad model call gets its code and a readable message, writes no output, and a model
/// larger than the tier is refused before anything is uploaded.
#[test]
fn bad_model_calls_give_their_codes_and_upload_nothing() {
    use eia::ffi::model::*;
    let d = device();
    let a = attach(d, "tiny");
    let bytes = small_cnn(4);
    let defaults = eia_model_options_default();
    assert_eq!((defaults.batch, defaults.fp16), (1, false));
    let load = |bytes: &[u8], options: &eia_model_options| {
        let mut m = ptr::null_mut();
        let e = unsafe {
            eia_model_load_bytes(
                a.as_ref(),
                bytes.as_ptr(),
                bytes.len(),
                Some(options),
                Some(&mut m),
            )
        };
        (e, m)
    };
    let usage = || {
        let mut u = eia_usage::default();
        ok(eia_accelerator_usage(unsafe { a.as_ref() }, Some(&mut u)));
        u
    };

    let (e, m) = load(b"not a model", &defaults);
    fails(e, EIA_ERR_MODEL, "not an ONNX model");
    assert!(m.is_null());
    let (e, m) = load(
        &bytes,
        &eia_model_options {
            batch: 0,
            fp16: false,
        },
    );
    fails(e, EIA_ERR_MODEL, "batch must be at least 1");
    assert!(m.is_null());
    // The tiny tier has 1 MiB: 256 channels is over 1 MiB of buffers at batch 8.
    let (e, m) = load(
        &small_cnn(256),
        &eia_model_options {
            batch: 8,
            fp16: false,
        },
    );
    fails(e, EIA_ERR_MEMORY_QUOTA, "would exceed its memory quota");
    assert!(m.is_null());
    assert_eq!((usage().memory_used, usage().bytes_uploaded), (0, 0));
    let missing = cstr("/nonexistent/model.onnx");
    let mut m = ptr::null_mut();
    fails(
        unsafe { eia_model_load(a.as_ref(), missing.as_ptr(), None, Some(&mut m)) },
        EIA_ERR_MODEL,
        "cannot read /nonexistent/model.onnx",
    );
    fails(
        unsafe { eia_model_load(a.as_ref(), ptr::null(), None, Some(&mut m)) },
        EIA_ERR_NULL_ARGUMENT,
        "path",
    );
    fails(
        unsafe { eia_model_load_bytes(None, bytes.as_ptr(), bytes.len(), None, Some(&mut m)) },
        EIA_ERR_NULL_ARGUMENT,
        "accelerator",
    );
    assert!(m.is_null());

    let m = load_model(a, &bytes, &defaults);
    let mut port = eia_model_output(unsafe { m.as_ref() }, 0, None);
    fails(port.take(), EIA_ERR_NULL_ARGUMENT, "out");
    let mut p = std::mem::MaybeUninit::<eia_model_port>::uninit();
    fails(
        eia_model_input(
            unsafe { m.as_ref() },
            1,
            Some(unsafe { &mut *p.as_mut_ptr() }),
        ),
        EIA_ERR_INVALID_ARGUMENT,
        "input 1 does not exist: the model has 1 inputs",
    );
    let x = vec![0.5f32; 3 * 12 * 12];
    let mut y = vec![f32::NAN; 10];
    let run = |inputs: &[*const f32],
               in_lens: &[usize],
               outputs: &[*mut f32],
               out_lens: &[usize]| unsafe {
        eia_model_run(
            m.as_ref(),
            inputs.as_ptr(),
            in_lens.as_ptr(),
            inputs.len(),
            outputs.as_ptr(),
            out_lens.as_ptr(),
            outputs.len(),
        )
    };
    let yp = y.as_mut_ptr();
    fails(
        run(&[], &[], &[yp], &[10]),
        EIA_ERR_INVALID_ARGUMENT,
        "the model has 1 inputs, 0 were given",
    );
    fails(
        run(&[x.as_ptr()], &[432], &[], &[]),
        EIA_ERR_INVALID_ARGUMENT,
        "1 outputs, 0 were given",
    );
    fails(
        run(&[x.as_ptr()], &[431], &[yp], &[10]),
        EIA_ERR_INVALID_ARGUMENT,
        "input image is [1, 3, 12, 12] (432 values), 431 were given",
    );
    fails(
        run(&[x.as_ptr()], &[432], &[yp], &[9]),
        EIA_ERR_INVALID_ARGUMENT,
        "(10 values), 9 were given",
    );
    fails(
        run(&[ptr::null()], &[432], &[yp], &[10]),
        EIA_ERR_NULL_ARGUMENT,
        "image",
    );
    fails(
        run(&[x.as_ptr()], &[432], &[ptr::null_mut()], &[10]),
        EIA_ERR_NULL_ARGUMENT,
        "outputs[0]",
    );
    fails(
        unsafe {
            eia_model_run(
                None,
                ptr::null(),
                ptr::null(),
                0,
                ptr::null(),
                ptr::null(),
                0,
            )
        },
        EIA_ERR_NULL_ARGUMENT,
        "model",
    );
    assert!(y.iter().all(|v| v.is_nan()), "a failed run wrote an output");
    ok(run(&[x.as_ptr()], &[432], &[yp], &[10]));
    assert!(y.iter().all(|v| v.is_finite()));
    eia_model_free(unsafe { Box::from_raw(m) }.into());
    eia_model_free(None);
    assert_eq!(usage().memory_used, 0);
    eia_accelerator_free(unsafe { Box::from_raw(a) }.into());
    eia_device_free(unsafe { Box::from_raw(d) }.into());
}
