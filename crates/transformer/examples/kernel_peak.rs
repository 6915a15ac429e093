//! The CPU's arithmetic peak, the yardstick for the dense kernels' share of
//! it (`benches/README.md`, "Share of the peak").
//!
//! Each probe is a register-only loop in assembly: independent
//! accumulators (24 `zmm`, 12 `ymm`, 4 AMX tiles: more than an FMA's
//! latency × its issue width, so the loop is bound by issue, not by
//! dependency chains), no loads in the loop, best of 30 timed runs,
//! on one thread and then on every rayon thread at once. Only the paths the
//! CPU has are run.
//!
//! ```bash
//! cargo run --release -p casetag-transformer --example kernel_peak
//! ```

use std::time::Instant;

use rayon::prelude::*;

const ITERS: u64 = 2_000_000;

fn best<F: Fn() + Sync>(ops_per_call: f64, f: F) -> (f64, f64) {
    let one = |f: &F| {
        let mut best = f64::MAX;
        for _ in 0..30 {
            let t = Instant::now();
            f();
            best = best.min(t.elapsed().as_secs_f64());
        }
        ops_per_call / best / 1e9
    };
    let single = one(&f);
    let threads = rayon::current_num_threads();
    let all: f64 = (0..threads).into_par_iter().map(|_| one(&f)).sum();
    (single, all)
}

#[cfg(target_arch = "x86_64")]
mod probes {
    //! Written in assembly: in Rust the compiler kept some of the 24
    //! accumulators on the stack, which measured the store-forwarding
    //! latency instead of the arithmetic.
    use super::ITERS;
    use std::arch::asm;

    /// A probe of 24 independent chains of the `zmm` instruction `$op`
    /// (accumulators zmm0–zmm23, sources zmm30 and zmm31), `ITERS` times.
    macro_rules! zmm_probe {
        ($(#[$doc:meta])* $name:ident, $features:literal, $op:literal) => {
            $(#[$doc])*
            #[target_feature(enable = $features)]
            pub unsafe fn $name() {
                asm!(
                "2:",
                concat!($op, " zmm0, zmm30, zmm31"),
                concat!($op, " zmm1, zmm30, zmm31"),
                concat!($op, " zmm2, zmm30, zmm31"),
                concat!($op, " zmm3, zmm30, zmm31"),
                concat!($op, " zmm4, zmm30, zmm31"),
                concat!($op, " zmm5, zmm30, zmm31"),
                concat!($op, " zmm6, zmm30, zmm31"),
                concat!($op, " zmm7, zmm30, zmm31"),
                concat!($op, " zmm8, zmm30, zmm31"),
                concat!($op, " zmm9, zmm30, zmm31"),
                concat!($op, " zmm10, zmm30, zmm31"),
                concat!($op, " zmm11, zmm30, zmm31"),
                concat!($op, " zmm12, zmm30, zmm31"),
                concat!($op, " zmm13, zmm30, zmm31"),
                concat!($op, " zmm14, zmm30, zmm31"),
                concat!($op, " zmm15, zmm30, zmm31"),
                concat!($op, " zmm16, zmm30, zmm31"),
                concat!($op, " zmm17, zmm30, zmm31"),
                concat!($op, " zmm18, zmm30, zmm31"),
                concat!($op, " zmm19, zmm30, zmm31"),
                concat!($op, " zmm20, zmm30, zmm31"),
                concat!($op, " zmm21, zmm30, zmm31"),
                concat!($op, " zmm22, zmm30, zmm31"),
                concat!($op, " zmm23, zmm30, zmm31"),
                "dec {n}",
                "jnz 2b",
                n = inout(reg) ITERS => _,
                out("zmm0") _,
                out("zmm1") _,
                out("zmm2") _,
                out("zmm3") _,
                out("zmm4") _,
                out("zmm5") _,
                out("zmm6") _,
                out("zmm7") _,
                out("zmm8") _,
                out("zmm9") _,
                out("zmm10") _,
                out("zmm11") _,
                out("zmm12") _,
                out("zmm13") _,
                out("zmm14") _,
                out("zmm15") _,
                out("zmm16") _,
                out("zmm17") _,
                out("zmm18") _,
                out("zmm19") _,
                out("zmm20") _,
                out("zmm21") _,
                out("zmm22") _,
                out("zmm23") _,
                out("zmm30") _,
                out("zmm31") _,
                options(nostack),
                );
            }
        };
    }

    zmm_probe!(
        /// fp32 fused multiply-add, 16 lanes.
        fma512,
        "avx512f",
        "vfmadd231ps"
    );
    zmm_probe!(
        /// u8 × i8 dot products of 4 into i32, 16 lanes.
        vnni512,
        "avx512f,avx512vnni",
        "vpdpbusd"
    );

    /// Iterations of the AMX probe: a `tdpbusd` does 256 times a
    /// `vpdpbusd`'s work.
    pub const AMX_ITERS: u64 = ITERS / 8;

    /// u8 × i8 tiles of 16 × 64 into 16 × 16 i32 (`tdpbusd`), 4
    /// independent accumulators (tmm0–tmm3, sources tmm4 and tmm5),
    /// [`AMX_ITERS`] times. Configures this thread's tiles and releases
    /// them after.
    ///
    /// # Safety
    /// The CPU has AMX-TILE and AMX-INT8 and the OS granted the tiles.
    pub unsafe fn amx_tdpbusd() {
        #[repr(C, align(64))]
        struct Config([u8; 16], [u16; 16], [u8; 16]);
        let mut c = Config([0; 16], [0; 16], [0; 16]);
        c.0[0] = 1;
        for t in 0..6 {
            c.1[t] = 64;
            c.2[t] = 16;
        }
        asm!(
            "ldtilecfg [{cfg}]",
            "tilezero tmm4",
            "tilezero tmm5",
            "2:",
            "tdpbusd tmm0, tmm4, tmm5",
            "tdpbusd tmm1, tmm4, tmm5",
            "tdpbusd tmm2, tmm4, tmm5",
            "tdpbusd tmm3, tmm4, tmm5",
            "dec {n}",
            "jnz 2b",
            "tilerelease",
            cfg = in(reg) &c,
            n = inout(reg) AMX_ITERS => _,
            options(nostack),
        );
    }

    /// 12 independent `vfmadd231ps` chains, `ITERS` times.
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn fma256() {
        asm!(
            "2:",
            "vfmadd231ps ymm0, ymm14, ymm15",
            "vfmadd231ps ymm1, ymm14, ymm15",
            "vfmadd231ps ymm2, ymm14, ymm15",
            "vfmadd231ps ymm3, ymm14, ymm15",
            "vfmadd231ps ymm4, ymm14, ymm15",
            "vfmadd231ps ymm5, ymm14, ymm15",
            "vfmadd231ps ymm6, ymm14, ymm15",
            "vfmadd231ps ymm7, ymm14, ymm15",
            "vfmadd231ps ymm8, ymm14, ymm15",
            "vfmadd231ps ymm9, ymm14, ymm15",
            "vfmadd231ps ymm10, ymm14, ymm15",
            "vfmadd231ps ymm11, ymm14, ymm15",
            "dec {n}",
            "jnz 2b",
            n = inout(reg) ITERS => _,
            out("ymm0") _,
            out("ymm1") _,
            out("ymm2") _,
            out("ymm3") _,
            out("ymm4") _,
            out("ymm5") _,
            out("ymm6") _,
            out("ymm7") _,
            out("ymm8") _,
            out("ymm9") _,
            out("ymm10") _,
            out("ymm11") _,
            out("ymm14") _,
            out("ymm15") _,
            options(nostack),
        );
    }

    /// AVX2's int8 step as the encoder's AVX2 kernel takes it:
    /// `vpmaddubsw` (u8 × i8 → i16 pairs), `vpmaddwd` with ones (→ i32),
    /// `vpaddd`: three instructions per 32 multiply-adds, 6 chains.
    #[target_feature(enable = "avx2")]
    pub unsafe fn maddubs256() {
        asm!(
            "2:",
            "vpmaddubsw ymm6, ymm14, ymm15",
            "vpmaddwd ymm6, ymm6, ymm13",
            "vpaddd ymm0, ymm0, ymm6",
            "vpmaddubsw ymm7, ymm14, ymm15",
            "vpmaddwd ymm7, ymm7, ymm13",
            "vpaddd ymm1, ymm1, ymm7",
            "vpmaddubsw ymm8, ymm14, ymm15",
            "vpmaddwd ymm8, ymm8, ymm13",
            "vpaddd ymm2, ymm2, ymm8",
            "vpmaddubsw ymm9, ymm14, ymm15",
            "vpmaddwd ymm9, ymm9, ymm13",
            "vpaddd ymm3, ymm3, ymm9",
            "vpmaddubsw ymm10, ymm14, ymm15",
            "vpmaddwd ymm10, ymm10, ymm13",
            "vpaddd ymm4, ymm4, ymm10",
            "vpmaddubsw ymm11, ymm14, ymm15",
            "vpmaddwd ymm11, ymm11, ymm13",
            "vpaddd ymm5, ymm5, ymm11",
            "dec {n}",
            "jnz 2b",
            n = inout(reg) ITERS => _,
            out("ymm0") _,
            out("ymm1") _,
            out("ymm2") _,
            out("ymm3") _,
            out("ymm4") _,
            out("ymm5") _,
            out("ymm6") _,
            out("ymm7") _,
            out("ymm8") _,
            out("ymm9") _,
            out("ymm10") _,
            out("ymm11") _,
            out("ymm13") _,
            out("ymm14") _,
            out("ymm15") _,
            options(nostack),
        );
    }
}

fn main() {
    println!(
        "threads: {}; kernels the encoder runs: f32 {}, int8 {}",
        rayon::current_num_threads(),
        casetag_transformer::f32_kernel(),
        casetag_transformer::int8_kernel()
    );
    println!("{:<28} {:>14} {:>14}", "probe", "1 thread", "all threads");
    let show = |name: &str, unit: &str, (one, all): (f64, f64)| {
        println!("{name:<28} {one:>9.1} {unit} {all:>9.1} {unit}");
    };
    #[cfg(target_arch = "x86_64")]
    {
        let fl = |lanes: usize, accs: usize| (ITERS * (lanes * accs * 2) as u64) as f64;
        if is_x86_feature_detected!("avx512f") {
            // SAFETY: the feature was detected just above.
            show(
                "fp32 FMA zmm",
                "GFLOP/s",
                best(fl(16, 24), || unsafe { probes::fma512() }),
            );
        }
        if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") {
            // SAFETY: the features were detected just above.
            show(
                "fp32 FMA ymm",
                "GFLOP/s",
                best(fl(8, 12), || unsafe { probes::fma256() }),
            );
            // SAFETY: as above.
            let r = best(fl(32, 6), || unsafe { probes::maddubs256() });
            show("int8 vpmaddubsw ymm", "GOP/s", r);
        }
        if is_x86_feature_detected!("avx512f") && is_x86_feature_detected!("avx512vnni") {
            // SAFETY: the features were detected just above.
            show(
                "int8 vpdpbusd zmm",
                "GOP/s",
                best(fl(64, 24), || unsafe { probes::vnni512() }),
            );
        }
        // The encoder's int8 path is AMX only where the CPU has it and the
        // OS granted the tiles to this process (it asked when choosing).
        if casetag_transformer::int8_kernel() == "amx" {
            let ops = (probes::AMX_ITERS * 4 * 16 * 16 * 64 * 2) as f64;
            // SAFETY: the int8 path is AMX (just above), so the CPU has it
            // and the OS granted the tiles.
            show(
                "int8 tdpbusd (AMX)",
                "GOP/s",
                best(ops, || unsafe { probes::amx_tdpbusd() }),
            );
        }
    }
    println!("(a multiply-add counts as two operations)");
}
