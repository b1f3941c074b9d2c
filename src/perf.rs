//! CPU settings for fast training: flush-to-zero / denormals-are-zero on every thread that does
//! math (subnormal gradients made the backward pass 3–18× slower, measured).

/// candle's CPU element-wise ops hand work to a pool whose idle workers spin (25,000 pause
/// instructions by default, about a millisecond) before parking. On a 2-core machine that spin
/// takes a core away from the matrix multiplies that follow; `ldviz` sets this limit before
/// candle starts (unless the user set it). Training steps measured 5–15% faster.
pub const SPIN_ENV: &str = "CANDLE_BARRIER_POOL_SPIN_LIMIT";
/// The spin limit `ldviz` uses: a few microseconds of spinning, then park.
pub const SPIN_DEFAULT: &str = "1000";

/// Sets FTZ/DAZ on the calling thread (x86-64; a no-op elsewhere).
pub fn init_thread() {
    #[cfg(target_arch = "x86_64")]
    {
        // SAFETY: only changes how the current thread treats subnormal floats (MXCSR bits
        // FTZ 0x8000 and DAZ 0x0040); no memory is touched.
        #[allow(deprecated)]
        unsafe {
            use std::arch::x86_64::{_mm_getcsr, _mm_setcsr};
            _mm_setcsr(_mm_getcsr() | 0x8040);
        }
    }
}

/// Sets FTZ/DAZ on this thread and builds rayon's global pool so its threads do the same.
/// Safe to call more than once.
pub fn init() {
    init_thread();
    let _ = rayon::ThreadPoolBuilder::new()
        .start_handler(|_| init_thread())
        .build_global();
}
