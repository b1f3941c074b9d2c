//! CPU settings for fast training: flush-to-zero / denormals-are-zero on every thread that does
//! math (subnormal gradients made the backward pass 3–18× slower, measured), and an allocator
//! that keeps freed activation buffers for reuse.

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

/// glibc serves every allocation above its mmap threshold (128 KiB, raised dynamically only
/// after such a block is freed) with a fresh mapping and gives it back on free, and trims the
/// heap's free top: a training step's activation buffers (hundreds of KiB to MiB each, made and
/// dropped every step) then cost a page fault per 4 KiB touched and a TLB shootdown per free.
/// `perf` showed 21% of a gpt_neox step in page faults; with the threshold at its maximum
/// (32 MiB) and trimming off, freed buffers are reused: bench steps measured 12% (gpt_neox)
/// to 16% (gpt2) faster, llama 3%. Memory freed stays with the process for the next step.
fn keep_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes glibc's allocation thresholds; called before any other
    // thread allocates (at startup), and valid for any value (an out-of-range one is refused
    // with a 0 return, which leaves the default).
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 32 << 20);
        libc::mallopt(libc::M_TRIM_THRESHOLD, libc::c_int::MAX);
    }
}

/// Sets FTZ/DAZ on this thread, keeps freed buffers for reuse ([`keep_freed_memory`]) and
/// builds rayon's global pool so its threads set FTZ/DAZ too. Safe to call more than once.
pub fn init() {
    init_thread();
    keep_freed_memory();
    let _ = rayon::ThreadPoolBuilder::new()
        .start_handler(|_| init_thread())
        .build_global();
}
