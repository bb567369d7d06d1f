//! The op conformance suite on the CPU backend (rayon's global pool), and on a one-thread pool
//! so that the sequential paths are covered too.

mod common;

backend_suite!(eia::CpuBackend::new());

mod single_thread {
    use super::common;
    use crate::backend_suite;
    backend_suite!(eia::CpuBackend::with_threads(1).unwrap());
}
