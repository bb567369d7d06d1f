//! The op conformance suite on the CUDA kernel sources themselves, run on the CPU by the
//! emulator (`cargo test --release --features emu --test emu`), and the emulator's self-test
//! (`selftest_*`, kernels in `kernels/emu/selftest.cu`): the mma.m16n8k16 and ldmatrix fragment
//! layouts against those `kernels/common.cuh` documents, warp shuffles against CUDA's
//! semantics, cp.async zero-fill, barriers over shared memory, thread and block indices, half
//! conversions against the `half` crate, and the detection of divergent code, invalid launches,
//! stores outside a buffer and what the sanitizer checks (races, unwritten shared memory,
//! misaligned accesses); and bugs planted in the kernels (`planted`), each of which a check must
//! flag.
#![cfg(feature = "emu")]

mod common;

backend_suite!(eia::backend::EmuBackend::new());

mod selftest {
    use std::time::Instant;

    use eia::backend::emu::EmuBuffer;
    use eia::backend::EmuBackend;
    use eia::{f16, Backend, DType, HostTensor, Tensor};

    type Buf = Tensor<EmuBuffer>;

    fn up(emu: &EmuBackend, dtype: DType, values: &[f32]) -> Buf {
        emu.upload(&HostTensor::from_f32(dtype, &[values.len()], values).unwrap())
            .unwrap()
    }

    fn up_bits16(emu: &EmuBackend, bits: &[u16]) -> Buf {
        let bytes: Vec<u8> = bits.iter().flat_map(|b| b.to_le_bytes()).collect();
        emu.upload(&HostTensor::from_bytes(DType::F16, &[bits.len()], &bytes).unwrap())
            .unwrap()
    }

    fn alloc(emu: &EmuBackend, dtype: DType, len: usize) -> Buf {
        emu.alloc(&eia::TensorDesc::new(dtype, &[len]).unwrap())
            .unwrap()
    }

    fn read(emu: &EmuBackend, t: &Buf) -> Vec<f32> {
        emu.download(t).unwrap().data().to_f32_vec()
    }

    fn read_bits(emu: &EmuBackend, t: &Buf) -> Vec<u32> {
        read(emu, t).iter().map(|v| v.to_bits()).collect()
    }

    fn addr(t: &Buf) -> u64 {
        t.storage().addr()
    }

    /// Launches a self-test kernel whose params address `buffers`.
    fn launch<P: Copy>(
        emu: &EmuBackend,
        kernel: &str,
        grid: [u32; 3],
        block: [u32; 3],
        params: &P,
        buffers: &[&Buf],
    ) -> eia::Result<()> {
        let storages: Vec<&EmuBuffer> = buffers.iter().map(|t| t.storage()).collect();
        // SAFETY: each params struct below mirrors its C struct in selftest.cu, and its
        // addresses are those of `buffers`, sized for what the kernel touches at this geometry.
        unsafe { emu.launch_kernel(kernel, grid, block, params, &storages) }
    }

    /// The same f32, or both NaN.
    fn same(a: f32, b: f32) -> bool {
        a.to_bits() == b.to_bits() || (a.is_nan() && b.is_nan())
    }

    /// binary16 bits of `x` as the GPU rounds: to nearest even, NaN to the canonical 0x7fff.
    fn gpu_f16(x: f32) -> u16 {
        if x.is_nan() {
            0x7fff
        } else {
            f16::from_f32(x).to_bits()
        }
    }

    #[repr(C)]
    #[derive(Clone, Copy)]
    struct MmaParams {
        a: u64,
        b: u64,
        c: u64,
        d: u64,
        regs: u64,
    }

    /// mma with fragments built per lane from the documented layout, and with fragments loaded
    /// by every ldmatrix form: registers bit for bit as documented, D = C + A·B exactly (the
    /// values are dyadic, so every product and sum is exact in f32).
    #[test]
    fn selftest_mma_ldmatrix() {
        let emu = EmuBackend::new();
        let a: Vec<f32> = (0..256)
            .map(|i| ((i * 7919) % 61 - 30) as f32 / 16.0)
            .collect();
        let b: Vec<f32> = (0..128)
            .map(|i| ((i * 104729) % 53 - 26) as f32 / 16.0)
            .collect();
        let c: Vec<f32> = (0..128).map(|i| (i % 13 - 6) as f32 / 4.0).collect();
        let (da, db, dc) = (
            up(&emu, DType::F16, &a),
            up(&emu, DType::F16, &b),
            up(&emu, DType::F32, &c),
        );
        let (dd, regs) = (
            alloc(&emu, DType::F32, 5 * 128),
            alloc(&emu, DType::F32, 32 * 18),
        );
        let params = MmaParams {
            a: addr(&da),
            b: addr(&db),
            c: addr(&dc),
            d: addr(&dd),
            regs: addr(&regs),
        };
        let bufs = [&da, &db, &dc, &dd, &regs];
        launch(&emu, "selftest_mma_f16", [1; 3], [32, 1, 1], &params, &bufs).unwrap();

        let bits = |v: f32| f16::from_f32(v).to_bits() as u32;
        let pack = |lo: f32, hi: f32| bits(lo) | bits(hi) << 16;
        let (am, bm) = (
            |r: usize, k: usize| a[r * 16 + k],
            |k: usize, n: usize| b[k * 8 + n],
        );
        let regs = read_bits(&emu, &regs);
        for lane in 0..32 {
            let (g, t) = (lane / 4, lane % 4);
            let want_a = [
                pack(am(g, 2 * t), am(g, 2 * t + 1)),
                pack(am(g + 8, 2 * t), am(g + 8, 2 * t + 1)),
                pack(am(g, 2 * t + 8), am(g, 2 * t + 9)),
                pack(am(g + 8, 2 * t + 8), am(g + 8, 2 * t + 9)),
            ];
            let want_b = [
                pack(bm(2 * t, g), bm(2 * t + 1, g)),
                pack(bm(2 * t + 8, g), bm(2 * t + 9, g)),
            ];
            let r = &regs[lane * 18..lane * 18 + 18];
            assert_eq!(r[0..4], want_a, "lane {lane}: A fragment by layout");
            assert_eq!(r[4..6], want_b, "lane {lane}: B fragment by layout");
            assert_eq!(r[6..10], want_a, "lane {lane}: ldmatrix_x4 of A");
            assert_eq!(r[10..14], want_a, "lane {lane}: ldmatrix_x4_trans of Aᵀ");
            assert_eq!(r[14..16], want_b, "lane {lane}: ldmatrix_x2 of Bᵀ");
            assert_eq!(r[16..18], want_b, "lane {lane}: ldmatrix_x2_trans of B");
        }
        let d = read(&emu, &dd);
        let names = [
            "layout",
            "x4 + x2",
            "x4 + x2_trans",
            "x4_trans + x2",
            "x4_trans + x2_trans",
        ];
        for (v, name) in names.iter().enumerate() {
            for m in 0..16 {
                for n in 0..8 {
                    let want = c[m * 8 + n] as f64
                        + (0..16)
                            .map(|k| am(m, k) as f64 * bm(k, n) as f64)
                            .sum::<f64>();
                    let got = d[v * 128 + m * 8 + n];
                    assert_eq!(got as f64, want, "mma ({name}) D[{m}][{n}]");
                }
            }
        }
    }

    #[repr(C)]
    #[derive(Clone, Copy)]
    struct ShflParams {
        x: u64,
        out: u64,
    }

    /// Every shuffle form, with and without widths, against CUDA's documented semantics: a
    /// source lane outside the caller's `width` segment (later segments for xor and down, lanes
    /// before the segment for up) yields the caller's own value.
    #[test]
    fn selftest_shuffles() {
        let emu = EmuBackend::new();
        let n = 64usize;
        let x: Vec<f32> = (0..n).map(|i| ((i * 37) % 64) as f32 * 0.5 - 7.0).collect();
        let dx = up(&emu, DType::F32, &x);
        let out = alloc(&emu, DType::F32, 12 * n);
        let params = ShflParams {
            x: addr(&dx),
            out: addr(&out),
        };
        launch(
            &emu,
            "selftest_shfl_f32",
            [1; 3],
            [64, 1, 1],
            &params,
            &[&dx, &out],
        )
        .unwrap();
        let got = read(&emu, &out);
        for i in 0..n {
            let (lane, wo) = (i % 32, i - i % 32);
            let seg = |w: usize| lane & !(w - 1);
            let xs = |src: usize| x[wo + src];
            let up_src = |d: usize, w: usize| if lane >= seg(w) + d { lane - d } else { lane };
            let down_src = |d: usize, w: usize| {
                if lane + d < seg(w) + w {
                    lane + d
                } else {
                    lane
                }
            };
            let xor_src = |m: usize, w: usize| {
                if lane ^ m < seg(w) + w {
                    lane ^ m
                } else {
                    lane
                }
            };
            let sum: f32 = x[wo..wo + 32].iter().sum();
            let max = x[wo..wo + 32].iter().cloned().fold(f32::MIN, f32::max);
            let want = [
                xs(xor_src(5, 32)),
                ((wo + (lane * 3) % 32) * 7) as f32,
                (wo + down_src(3, 32) + 100) as f32,
                xs(up_src(2, 32)),
                xs(xor_src(9, 8)),
                xs(seg(16) + 5),
                xs(down_src(3, 8)),
                (wo + up_src(3, 8)) as f32,
                xs((lane + 35) % 32),
                sum,
                max,
                -((wo + (lane ^ 31)) as f32),
            ];
            for (k, w) in want.iter().enumerate() {
                assert_eq!(got[k * n + i], *w, "shuffle {k} of thread {i}");
            }
        }
    }

    #[repr(C)]
    #[derive(Clone, Copy)]
    struct CopyParams {
        src: u64,
        out: u64,
    }

    /// cp.async copies 16 bytes, or zero-fills them when not valid; shared memory written by
    /// one warp is read by the other after the barrier.
    #[test]
    fn selftest_cp_async_zero_fill() {
        let emu = EmuBackend::new();
        let src: Vec<f32> = (0..256).map(|i| i as f32 + 1.0).collect();
        let dsrc = up(&emu, DType::F32, &src);
        let out = alloc(&emu, DType::F32, 256);
        let params = CopyParams {
            src: addr(&dsrc),
            out: addr(&out),
        };
        launch(
            &emu,
            "selftest_cp_async_f32",
            [1; 3],
            [64, 1, 1],
            &params,
            &[&dsrc, &out],
        )
        .unwrap();
        let got = read(&emu, &out);
        for t in 0..64 {
            let chunk = (t + 32) % 64;
            for e in 0..4 {
                let want = if chunk % 3 == 0 {
                    0.0
                } else {
                    src[chunk * 4 + e]
                };
                assert_eq!(got[t * 4 + e], want, "thread {t} element {e}");
            }
        }
    }

    #[repr(C)]
    #[derive(Clone, Copy)]
    struct BlockParams {
        out: u64,
    }

    /// Barriers over shared memory in 3-D blocks of a 2-D grid, the index built-ins, and
    /// blocks that run one after another reusing the same shared memory, refilled with the NaN
    /// pattern before each.
    #[test]
    fn selftest_block_barriers_indices() {
        let emu = EmuBackend::new();
        let out = alloc(&emu, DType::F32, 6 * 128 * 5);
        let params = BlockParams { out: addr(&out) };
        launch(
            &emu,
            "selftest_block_f32",
            [3, 2, 1],
            [32, 2, 2],
            &params,
            &[&out],
        )
        .unwrap();
        let got = read(&emu, &out);
        let code = |t: usize| (t % 32 + 100 * ((t / 32) % 2) + 10000 * (t / 64)) as f32;
        for b in 0..6 {
            for t in 0..128 {
                let o = &got[(b * 128 + t) * 5..][..5];
                let want = [
                    (b * 1000 + 127 - t) as f32,
                    code(t ^ 1),
                    (b % 3 + 10 * (b / 3)) as f32,
                    (32 + 100 * 2 + 10000 * 3 + 1000000 * 2) as f32,
                ];
                assert_eq!(o[..4], want, "block {b} thread {t}");
                assert_eq!(o[4], b as f32, "block {b} thread {t}: its own write");
            }
        }
    }

    #[repr(C)]
    #[derive(Clone, Copy)]
    struct HalfParams {
        x: u64,
        y: u64,
        h: u64,
        w: u64,
        pairs: u64,
        packed: u64,
        n: i64,
    }

    /// __float2half_rn against the `half` crate (round to nearest even) on edge cases and
    /// pseudo-random bit patterns; __half2float on every binary16 value; the half2 helpers.
    #[test]
    fn selftest_half_conversions() {
        let emu = EmuBackend::new();
        let n = 65536usize;
        let p = |e: i32| 2f32.powi(e);
        let mut x = vec![
            0.0,
            -0.0,
            1.0,
            -1.0,
            65504.0,
            65519.99,
            65520.0,
            -65520.0,
            65536.0,
            1e10,
            f32::INFINITY,
            f32::NEG_INFINITY,
            f32::NAN,
            p(-24),
            p(-25),
            p(-25) * 1.0001,
            3.0 * p(-26),
            p(-26),
            p(-14),
            p(-14) - p(-25),
            p(-14) - p(-24),
            1.0 + p(-11),
            1.0 + 3.0 * p(-11),
            -(1.0 + p(-11)),
            f32::MIN_POSITIVE,
            f32::MAX,
        ];
        let mut s = 0x9e3779b97f4a7c15u64;
        while x.len() < n {
            s = s
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            x.push(f32::from_bits((s >> 32) as u32));
        }
        let all: Vec<u16> = (0..=u16::MAX).collect();
        let dx = up(&emu, DType::F32, &x);
        let dh = up_bits16(&emu, &all);
        let y = alloc(&emu, DType::F16, n);
        let w = alloc(&emu, DType::F32, n);
        let pairs = alloc(&emu, DType::F32, 3 * n);
        let packed = alloc(&emu, DType::F32, n);
        let params = HalfParams {
            x: addr(&dx),
            y: addr(&y),
            h: addr(&dh),
            w: addr(&w),
            pairs: addr(&pairs),
            packed: addr(&packed),
            n: n as i64,
        };
        let bufs = [&dx, &y, &dh, &w, &pairs, &packed];
        launch(
            &emu,
            "selftest_half_f16",
            [256, 1, 1],
            [256, 1, 1],
            &params,
            &bufs,
        )
        .unwrap();

        let y = emu.download(&y).unwrap();
        let eia::HostData::F16(y) = y.data() else {
            panic!("f16 output")
        };
        let (w, pairs, packed) = (read(&emu, &w), read(&emu, &pairs), read_bits(&emu, &packed));
        for i in 0..n {
            let xi = x[i];
            assert_eq!(
                y[i].to_bits(),
                gpu_f16(xi),
                "__float2half_rn({xi:e}) [{:#x}]",
                xi.to_bits()
            );
            let h = f16::from_bits(all[i]).to_f32();
            assert!(same(w[i], h), "__half2float({:#06x})", all[i]);
            let (lo, hi) = (
                f16::from_bits(gpu_f16(xi)).to_f32(),
                f16::from_bits(gpu_f16(-xi)).to_f32(),
            );
            assert!(
                same(pairs[3 * i], lo) && same(pairs[3 * i + 1], hi),
                "half2 of {xi:e}"
            );
            assert!(same(pairs[3 * i + 2], lo + hi), "low + high of {xi:e}");
            let want = gpu_f16(xi) as u32 | (gpu_f16(-xi) as u32) << 16;
            assert_eq!(packed[i], want, "eia_pack_half2({xi:e})");
        }
    }

    #[repr(C)]
    #[derive(Clone, Copy)]
    struct DivergeParams {
        out: u64,
        mode: i32,
    }

    /// Divergent barriers and warp operations, partial masks, misaligned addresses (predicated-off
    /// copies included), shared-memory races, reads of unwritten shared memory (also a cp.async
    /// read before its wait_group), global bytes written by two blocks and invalid launches end
    /// the launch with an error (no hang, no crash); the emulator runs on after.
    #[test]
    fn selftest_detects_divergence_and_bad_launches() {
        let emu = EmuBackend::new();
        let out = alloc(&emu, DType::F32, 128);
        let run = |mode: i32, grid: [u32; 3], block: [u32; 3]| {
            let params = DivergeParams {
                out: addr(&out),
                mode,
            };
            launch(&emu, "selftest_diverge_f32", grid, block, &params, &[&out])
        };
        let expect = |mode: i32, grid, block, what: &str| {
            let err = run(mode, grid, block).expect_err(what).to_string();
            assert!(
                err.contains(what),
                "mode {mode}: {err:?} does not say {what:?}"
            );
            assert!(
                err.contains("selftest_diverge_f32"),
                "{err:?} names no kernel"
            );
        };
        let (grid, block) = ([2, 1, 1], [64, 1, 1]);
        run(0, grid, block).unwrap();
        expect(1, grid, block, "thread (5,0,0) exited while");
        expect(
            2,
            grid,
            block,
            "lanes 0-15 at __shfl_xor_sync, lanes 16-31 exited",
        );
        expect(
            3,
            grid,
            block,
            "lanes 0-15 at __shfl_xor_sync, lanes 16-31 at __syncthreads",
        );
        expect(4, grid, block, "lanes at different warp operations");
        expect(5, grid, block, "mask 0x0000ffff");
        expect(
            6,
            grid,
            block,
            "eia_cp_async_16: the shared-memory address is not 16-byte",
        );
        expect(7, grid, block, "eia_ldmatrix_x2: row address");
        expect(8, grid, block, "wait at __syncthreads");
        expect(9, grid, block, "synccheck: divergent __syncthreads");
        expect(
            10,
            grid,
            block,
            "racecheck: write/write hazard on shared memory",
        );
        expect(11, grid, block, "initcheck: block (0,0,0)");
        expect(12, grid, block, "is not 16-byte aligned (a zero-fill copy");
        expect(
            13,
            grid,
            block,
            "memcheck: misaligned 16-byte read of global memory",
        );
        expect(
            14,
            grid,
            block,
            "racecheck: blocks (0,0,0) and (1,0,0) both write global",
        );
        expect(15, grid, block, "initcheck: block (0,0,0)");
        expect(0, grid, [48, 1, 1], "block (48,1,1) is invalid");
        expect(0, grid, [2048, 1, 1], "is invalid");
        expect(0, [0, 1, 1], block, "grid (0,1,1) is invalid");
        expect(0, [1, 65536, 1], block, "is invalid");
        run(0, grid, block).unwrap();
        let want: Vec<f32> = (0..128).map(|t| ((t % 64) ^ 1) as f32).collect();
        assert_eq!(
            read(&emu, &out),
            want,
            "every thread writes its partner's index"
        );

        let params = ShflParams {
            x: addr(&out),
            out: addr(&out),
        };
        let err = launch(&emu, "selftest_shfl_f32", [1; 3], [128, 1, 1], &params, &[]);
        assert!(err.unwrap_err().to_string().contains("launch bounds (64)"));
        let err = launch(&emu, "no_such_kernel_f32", [1; 3], [32, 1, 1], &params, &[]);
        assert!(err
            .unwrap_err()
            .to_string()
            .contains("unknown kernel no_such_kernel_f32"));
    }

    #[repr(C)]
    #[derive(Clone, Copy)]
    struct StoreParams {
        y: u64,
        index: i64,
    }

    /// A store just past either end of a buffer is caught by its guard bands.
    #[test]
    fn selftest_guard_bands() {
        let emu = EmuBackend::new();
        let store = |index: i64| {
            let y = alloc(&emu, DType::F32, 5);
            let params = StoreParams { y: addr(&y), index };
            launch(
                &emu,
                "selftest_store_f32",
                [1; 3],
                [32, 1, 1],
                &params,
                &[&y],
            )
        };
        store(0).unwrap();
        store(4).unwrap();
        for (index, offset) in [(5, 20), (7, 28), (-1, -4), (-16, -64)] {
            let err = store(index).unwrap_err().to_string();
            let want = format!("wrote outside buffer 0 (20 bytes): at byte offset {offset}");
            assert!(err.contains(&want), "{err}");
        }
    }

    #[repr(C)]
    #[derive(Clone, Copy)]
    struct LoopParams {
        out: u64,
        iters: i32,
        mode: i32,
    }

    /// How fast the emulator switches: a 256-thread block waiting at __syncthreads, and at a
    /// warp shuffle, `iters` times (printed; run with --nocapture).
    #[test]
    fn selftest_speed() {
        let emu = EmuBackend::new();
        let out = alloc(&emu, DType::F32, 256);
        let iters = 2000;
        for (mode, what) in [(0, "__syncthreads"), (1, "__shfl_xor_sync")] {
            let params = LoopParams {
                out: addr(&out),
                iters,
                mode,
            };
            let start = Instant::now();
            launch(
                &emu,
                "selftest_loop_f32",
                [1; 3],
                [256, 1, 1],
                &params,
                &[&out],
            )
            .unwrap();
            let s = start.elapsed().as_secs_f64();
            let waits = 256.0 * iters as f64;
            println!(
                "{what}: 256 threads x {iters} rounds in {:.1} ms: {:.1} ns per thread and round \
                 ({:.1} M fiber resumptions/s, two context switches each)",
                s * 1e3,
                s * 1e9 / waits,
                waits / s / 1e6
            );
        }
    }
}

/// Bugs planted in the kernels (`EIA_PLANT` in `kernels/*.cu`, compiled only into the emulator):
/// each must end its launch with the sanitizer check named here, so that the checks are known
/// to work on the real kernels (issue 20).
mod planted {
    use std::ffi::CStr;

    use eia::backend::EmuBackend;
    use eia::ops::{BatchNorm, Conv, Gemm, Softmax};
    use eia::{Backend, DType, HostTensor};

    /// A deterministic tensor of `shape` with values in [-1, 1).
    fn tensor(
        emu: &EmuBackend,
        dtype: DType,
        shape: &[usize],
    ) -> eia::Tensor<eia::backend::emu::EmuBuffer> {
        let n: usize = shape.iter().product();
        let v: Vec<f32> = (0..n)
            .map(|i| ((i * 7919) % 211) as f32 / 105.5 - 1.0)
            .collect();
        emu.upload(&HostTensor::from_f32(dtype, shape, &v).unwrap())
            .unwrap()
    }

    /// A missing or misplaced barrier or wait: a race, or a read of shared memory before any
    /// write (which of the two comes first depends on the schedule).
    const SYNC: &[&str] = &["racecheck: ", "initcheck: "];

    /// One op on one shape, run by `emu`.
    type Case = fn(&EmuBackend) -> eia::Result<()>;

    fn conv(
        emu: &EmuBackend,
        dtype: DType,
        x: [usize; 4],
        w: [usize; 4],
        pad: usize,
        group: usize,
    ) -> eia::Result<()> {
        let op = Conv {
            pads: [pad; 4],
            group,
            ..Conv::default()
        };
        emu.conv(&op, &tensor(emu, dtype, &x), &tensor(emu, dtype, &w), None)
            .map(drop)
    }

    fn gemm(emu: &EmuBackend, dtype: DType, m: usize, k: usize, n: usize) -> eia::Result<()> {
        let (a, b) = (tensor(emu, dtype, &[m, k]), tensor(emu, dtype, &[k, n]));
        emu.gemm(&Gemm::default(), &a, &b, None).map(drop)
    }

    fn softmax(emu: &EmuBackend, shape: &[usize], axis: i64) -> eia::Result<()> {
        emu.softmax(&Softmax { axis }, &tensor(emu, DType::F32, shape))
            .map(drop)
    }

    const CASES: [(&CStr, &[&str], Case); 16] = [
        (c"gemm_tc_nosync", SYNC, |e| {
            gemm(e, DType::F16, 130, 96, 136)
        }),
        (c"gemm_tc_early_wait", SYNC, |e| {
            gemm(e, DType::F16, 130, 96, 136)
        }),
        (c"gemm_tc_wrong_stage", SYNC, |e| {
            gemm(e, DType::F16, 130, 96, 136)
        }),
        (c"gemm_tc_misaligned_fallback", &["memcheck"], |e| {
            gemm(e, DType::F16, 130, 96, 136)
        }),
        (c"gemm_simt_nosync", SYNC, |e| {
            gemm(e, DType::F32, 70, 40, 70)
        }),
        (c"conv_tc_nosync", SYNC, |e| {
            conv(e, DType::F16, [1, 16, 10, 10], [20, 16, 3, 3], 1, 1)
        }),
        (c"conv_tc_early_wait", SYNC, |e| {
            conv(e, DType::F16, [1, 16, 10, 10], [20, 16, 3, 3], 1, 1)
        }),
        (c"conv_tc_wrong_stage", SYNC, |e| {
            conv(e, DType::F16, [1, 16, 10, 10], [20, 16, 3, 3], 1, 1)
        }),
        (c"conv_tc_misaligned_fallback", &["memcheck"], |e| {
            conv(e, DType::F16, [1, 24, 8, 8], [24, 3, 1, 1], 0, 8)
        }),
        (c"conv_simt_nosync", SYNC, |e| {
            conv(e, DType::F32, [1, 16, 10, 10], [20, 16, 3, 3], 1, 1)
        }),
        (c"softmax_block_nosync", SYNC, |e| {
            softmax(e, &[2, 3000], -1)
        }),
        (c"softmax_long_divergent_sync", &["synccheck"], |e| {
            softmax(e, &[1, 20000], -1)
        }),
        (c"softmax_strided_nosync", SYNC, |e| {
            softmax(e, &[64, 40], 0)
        }),
        (
            c"softmax_warp_lane_exit",
            &["lanes 0-30 at __shfl_xor_sync, lane 31 exited"],
            |e| softmax(e, &[4, 100], -1),
        ),
        (
            c"batchnorm_plane_peel_every_chunk",
            &["racecheck: blocks"],
            |e| {
                let x = tensor(e, DType::F32, &[1, 2, 5001]);
                let p: Vec<_> = (0..4).map(|_| tensor(e, DType::F32, &[2])).collect();
                e.batch_norm(&BatchNorm::default(), &x, [&p[0], &p[1], &p[2], &p[3]])
                    .map(drop)
            },
        ),
        (c"none", &[], |e| {
            conv(e, DType::F16, [2, 40, 8, 8], [136, 40, 1, 1], 0, 1)
        }),
    ];

    /// Every case runs clean as written, and fails with one of its checks when its bug is
    /// planted (`none`: a pointwise FP16 convolution on the a_async path, unplanted only).
    #[test]
    fn planted_bugs_are_flagged() {
        let emu = EmuBackend::new();
        for (bug, checks, case) in CASES {
            case(&emu).unwrap_or_else(|e| panic!("{bug:?} unplanted: {e}"));
            if checks.is_empty() {
                continue;
            }
            let err = case(&emu.with_plant(bug))
                .expect_err(bug.to_str().unwrap())
                .to_string();
            println!("{bug:?}: {err}");
            assert!(
                checks.iter().any(|c| err.contains(c)),
                "{bug:?}: {err:?} says none of {checks:?}"
            );
        }
    }
}
