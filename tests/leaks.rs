//! Nothing leaks: 10,000 attach / upload / op / detach cycles leave the heap where it started.
//! A counting global allocator measures live heap bytes exactly; this binary holds one test so
//! nothing else allocates meanwhile. Anything leaked per cycle is at least one allocation (8
//! bytes or more) per cycle, so the bound is under one byte per cycle: that still catches every
//! per-cycle leak, and tolerates a one-time lazy allocation of the runtime landing inside the
//! window (seen once in seven runs under load: 900 bytes).

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicIsize, Ordering};

use eia::accelerator::{Capacity, Device, DeviceConfig};
use eia::ops::Softmax;
use eia::{Backend, CpuBackend, DType, HostTensor, PerDType};

struct Counting;

static LIVE: AtomicIsize = AtomicIsize::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LIVE.fetch_add(layout.size() as isize, Ordering::Relaxed);
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size() as isize, Ordering::Relaxed);
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

#[test]
fn attach_detach_cycles_leave_memory_where_it_started() {
    let config = DeviceConfig {
        capacity: Some(Capacity {
            tflops: PerDType::new(100.0, 800.0),
            memory: 64 << 30,
        }),
        ..DeviceConfig::default()
    };
    // One private thread: no pool grows or shrinks its bookkeeping between cycles.
    let device = Device::new(CpuBackend::with_threads(1).unwrap(), config).unwrap();
    let x_host = HostTensor::from_f32(DType::F32, &[8, 32], &[0.25; 256]).unwrap();
    let cycle = |i: usize| {
        let acc = device
            .attach(["eia1.medium", "eia2.large", "ml.eia2.xlarge"][i % 3])
            .unwrap();
        let x = acc.upload(&x_host).unwrap();
        let y = acc.softmax(&Softmax::default(), &x).unwrap();
        match i % 4 {
            0 => drop(acc.detach().unwrap()), // handles outlive the detach
            1 => drop((x, y)),                // handles freed before an implicit detach
            _ => {}                           // the accelerator dropped with its tensors
        }
    };
    // Every kind of cycle once (tier i % 3, way of ending i % 4) before counting.
    (0..12).for_each(cycle);
    const CYCLES: usize = 10_000;
    let before = LIVE.load(Ordering::Relaxed);
    for i in 0..CYCLES {
        cycle(i);
    }
    let after = LIVE.load(Ordering::Relaxed);
    assert!(device.attached().is_empty());
    assert_eq!(device.memory_in_use(), 0);
    let grown = after - before;
    assert!(
        grown < CYCLES as isize,
        "live heap bytes grew by {grown} over {CYCLES} cycles"
    );
}
