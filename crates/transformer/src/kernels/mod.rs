//! Every SIMD kernel of the encoder's forward, and the one rule that picks
//! which build of each runs.
//!
//! * [`sgemm`]: f32 dense layers on weights packed once at load (AVX-512F,
//!   AVX2+FMA, portable);
//! * [`int8`]: int8 dense layers, weights per output channel, activations
//!   per row (AMX, AVX-512 VNNI, AVX2, scalar);
//! * [`vmath`]: element-wise exp and exact-erf GELU (an AVX2 build of the
//!   portable loops);
//! * [`Dense`]: a dense layer in whichever of those forms its width and
//!   precision allow, with the `gemm` crate for widths neither packs.
//!
//! **Dispatch.** Each kernel family lists its paths, best last, with what
//! each needs from the CPU ([`KernelPath`]). Once per process, [`choose`]
//! takes the path the family's environment variable asks for when the CPU
//! has it, else the best one below it that the CPU has, and keeps the
//! reason in a note (shown by `casetag eval` and the runtime benchmark):
//! `CASETAG_F32_PATH=portable|avx2|avx512` for [`sgemm`] (and [`vmath`],
//! which follows it), `CASETAG_INT8_PATH=scalar|avx2|avx512vnni|amx`
//! for [`int8`]. The CPU is asked in one place, the `missing_*` functions
//! below.
//!
//! **Safety.** The SIMD builds are `unsafe fn`s with `#[target_feature]`;
//! they are called only on a path [`choose`] returned (so the CPU has the
//! features), and every `unsafe` block states why it holds (`clippy::
//! undocumented_unsafe_blocks` is denied crate-wide). Every SIMD path is
//! tested against its family's portable or scalar reference: exact integer
//! sums for int8, the same floats for f32.

use std::ops::Range;
use std::sync::OnceLock;

/// `$avx2` and `$avx512`: the plain function `$body` compiled again with
/// each build's target features (`$f2`, `$f512`), so the compiler
/// vectorizes it for that ISA. `$body` does the same IEEE operations in
/// every build, so each gives its floats. Calling one is `unsafe`: the CPU
/// must have its features.
macro_rules! simd_builds {
    ($body:ident => $avx2:ident: $f2:literal, $avx512:ident: $f512:literal
     ($($arg:ident: $ty:ty),* $(,)?) $(-> $ret:ty)?) => {
        #[cfg(target_arch = "x86_64")]
        #[target_feature(enable = $f2)]
        unsafe fn $avx2($($arg: $ty),*) $(-> $ret)? {
            $body($($arg),*)
        }

        #[cfg(target_arch = "x86_64")]
        #[target_feature(enable = $f512)]
        unsafe fn $avx512($($arg: $ty),*) $(-> $ret)? {
            $body($($arg),*)
        }
    };
}

pub(crate) mod gptq;
pub(crate) mod int8;
pub(crate) mod sgemm;
pub(crate) mod vmath;

use crate::Precision;

/// A kernel family's implementations, ordered worst to best.
pub(crate) trait KernelPath: Copy + Ord + 'static {
    /// Every path, best last; the first runs on any CPU.
    const ALL: &'static [Self];
    /// The environment variable that asks for a path.
    const ENV: &'static str;
    /// The name reports show.
    fn name(self) -> &'static str;
    /// The name the environment variable takes (by default [`Self::name`]).
    fn env_name(self) -> &'static str {
        self.name()
    }
    /// `None` when this CPU can run the path, else why not.
    fn missing(self) -> Option<&'static str>;
}

/// The path a family runs in this process and, when it is not the one its
/// environment variable asked for, why.
pub(crate) struct Dispatch<P> {
    pub(crate) path: P,
    pub(crate) note: Option<String>,
}

impl<P: KernelPath> Dispatch<P> {
    /// From the family's environment variable and this CPU.
    pub(crate) fn from_env() -> Self {
        choose(std::env::var(P::ENV).ok().as_deref(), P::missing)
    }
}

/// Pick a path: `requested` (the environment variable's value) if the CPU
/// has it, else the best path below it that the CPU has; without a request,
/// the best the CPU has. `missing` is [`KernelPath::missing`] (a stand-in
/// in tests).
pub(crate) fn choose<P: KernelPath>(
    requested: Option<&str>,
    missing: impl Fn(P) -> Option<&'static str>,
) -> Dispatch<P> {
    let best_upto = |top: P| {
        P::ALL
            .iter()
            .copied()
            .filter(|&p| p <= top && missing(p).is_none())
            .max()
            .unwrap_or(P::ALL[0])
    };
    let best = best_upto(*P::ALL.last().expect("a kernel family has paths"));
    let Some(req) = requested.map(str::trim).filter(|s| !s.is_empty()) else {
        return Dispatch {
            path: best,
            note: None,
        };
    };
    let Some(p) = P::ALL.iter().copied().find(|p| p.env_name() == req) else {
        let names: Vec<&str> = P::ALL.iter().map(|p| p.env_name()).collect();
        return Dispatch {
            path: best,
            note: Some(format!(
                "{}={req:?} is not {}; using {}",
                P::ENV,
                names.join("|"),
                best.name()
            )),
        };
    };
    match missing(p) {
        None => Dispatch {
            path: p,
            note: None,
        },
        Some(why) => {
            let fallback = best_upto(p);
            Dispatch {
                path: fallback,
                note: Some(format!(
                    "{}={req}: {why}; using {}",
                    P::ENV,
                    fallback.name()
                )),
            }
        }
    }
}

/// Why this CPU cannot run AVX2+FMA kernels, if it cannot.
pub(crate) fn missing_avx2_fma() -> Option<&'static str> {
    if casetag_core::has_avx2_fma() {
        None
    } else {
        Some("the CPU lacks AVX2/FMA (or this is not an x86_64 build)")
    }
}

/// Why this CPU cannot run AVX-512F kernels, if it cannot.
pub(crate) fn missing_avx512f() -> Option<&'static str> {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx512f") {
        return None;
    }
    Some("the CPU lacks AVX-512F (or this is not an x86_64 build)")
}

/// Why this CPU cannot run the AVX-512 VNNI int8 kernels (which also use
/// AVX-512BW), if it cannot.
pub(crate) fn missing_avx512_vnni() -> Option<&'static str> {
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::is_x86_feature_detected as has;
        if !has!("avx512f") {
            Some("the CPU lacks AVX-512F")
        } else if !has!("avx512bw") {
            Some("the CPU lacks AVX-512BW")
        } else if !has!("avx512vnni") {
            Some("the CPU lacks AVX-512 VNNI")
        } else {
            None
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    Some("not an x86_64 build")
}

/// Why this process cannot run the AMX int8 kernel (AMX-TILE and AMX-INT8
/// tiles, with the AVX-512 VNNI path's epilogue and short-product kernel),
/// if it cannot. On Linux the tiles are the process's only once it has
/// asked for them (`arch_prctl(ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA)`),
/// which this does, once. The answer is kept: the int8 path's buffers ask
/// on every product, and `cpuid` traps to the hypervisor in a VM (asking
/// each time took 17% of a 16-token forward).
pub(crate) fn missing_amx() -> Option<&'static str> {
    #[cfg(all(target_arch = "x86_64", target_os = "linux"))]
    {
        static ANSWER: OnceLock<Option<&'static str>> = OnceLock::new();
        *ANSWER.get_or_init(|| {
            if let Some(why) = missing_avx512_vnni() {
                return Some(why);
            }
            // CPUID leaf 7: EDX bit 24 AMX-TILE, bit 25 AMX-INT8.
            let edx = std::arch::x86_64::__cpuid_count(7, 0).edx;
            if edx & (1 << 24) == 0 || edx & (1 << 25) == 0 {
                return Some("the CPU lacks AMX-INT8");
            }
            const ARCH_REQ_XCOMP_PERM: libc::c_long = 0x1023;
            const XFEATURE_XTILEDATA: libc::c_long = 18;
            // SAFETY: arch_prctl with these arguments only changes which
            // register state the kernel lets this process use.
            let r = unsafe {
                libc::syscall(
                    libc::SYS_arch_prctl,
                    ARCH_REQ_XCOMP_PERM,
                    XFEATURE_XTILEDATA,
                )
            };
            (r != 0).then_some("the OS did not grant the AMX tiles (arch_prctl)")
        })
    }
    #[cfg(not(all(target_arch = "x86_64", target_os = "linux")))]
    Some("AMX is used on x86_64 Linux only")
}

/// Raw pointer that may cross into rayon tasks writing disjoint regions.
#[derive(Clone, Copy)]
pub(crate) struct SendPtr(pub(crate) *mut f32);
// SAFETY: the pointer is only dereferenced by tasks that write disjoint
// regions of one buffer that outlives them (see each use), so sharing or
// sending it between threads creates no data race.
unsafe impl Send for SendPtr {}
// SAFETY: as for `Send`: no two tasks touch the same element.
unsafe impl Sync for SendPtr {}

impl SendPtr {
    /// A method (not the field) so closures capture the whole `Send` wrapper.
    pub(crate) fn get(self) -> *mut f32 {
        self.0
    }
}

/// Applied in place to each finished tile of a layer's output while it is
/// still in cache (the activation after FFN-in), a few rows of one column
/// block at a time.
pub(crate) type Then<'a> = &'a (dyn Fn(&mut [f32]) + Sync);

/// What a dense layer's output starts from before the product is added.
#[derive(Clone, Copy)]
pub(crate) enum Start<'a> {
    /// Nothing: `out = product` (`out` is not read).
    Zero,
    /// `out`'s own contents: `out += product`.
    Out,
    /// The bias, per column: `out = bias + product` (`out` is not read).
    Bias(&'a [f32]),
    /// `out = (residual + bias) + product`; the residual is `n × o`, like
    /// `out`. The same floats as filling `out` with the residual, adding
    /// the bias and then the product, without those two passes.
    ResidualBias(&'a [f32], &'a [f32]),
}

/// How a dense layer finishes: where it starts, and what then.
#[derive(Clone, Copy)]
pub(crate) struct Epilogue<'a> {
    pub(crate) start: Start<'a>,
    pub(crate) then: Option<Then<'a>>,
}

impl<'a> Epilogue<'a> {
    /// `out += product`.
    pub(crate) const ACC: Epilogue<'static> = Epilogue {
        start: Start::Out,
        then: None,
    };

    /// `out = product`.
    pub(crate) const ZERO: Epilogue<'static> = Epilogue {
        start: Start::Zero,
        then: None,
    };

    /// Panics unless the operands fit an `n × o` output.
    pub(crate) fn check(&self, n: usize, o: usize) {
        let fits = match self.start {
            Start::Zero | Start::Out => true,
            Start::Bias(b) => b.len() == o,
            Start::ResidualBias(r, b) => b.len() == o && r.len() == n * o,
        };
        assert!(fits, "epilogue operands do not fit {n} × {o}");
    }
}

impl<'a> Start<'a> {
    /// The same for columns `cols` of row `row` alone (the residual being
    /// `width` wide).
    pub(crate) fn row(&self, row: usize, width: usize, cols: Range<usize>) -> Start<'a> {
        match *self {
            Start::Bias(b) => Start::Bias(&b[cols]),
            Start::ResidualBias(res, b) => {
                let at = row * width;
                Start::ResidualBias(&res[at + cols.start..at + cols.end], &b[cols])
            }
            other => other,
        }
    }

    /// As pointers at column `col` of row 0.
    pub(crate) fn at(&self, col: usize) -> Base {
        match *self {
            Start::Zero => Base::Zero,
            Start::Out => Base::Out,
            Start::Bias(b) => Base::Bias(b[col..].as_ptr()),
            Start::ResidualBias(r, b) => Base::ResidualBias(r[col..].as_ptr(), b[col..].as_ptr()),
        }
    }
}

/// [`Start`] as the kernels read it: pointers at a tile's first column (the
/// residual also at its first row; rows at the output's stride).
#[derive(Clone, Copy)]
pub(crate) enum Base {
    /// Nothing: `out = product`.
    Zero,
    Out,
    Bias(*const f32),
    ResidualBias(*const f32, *const f32),
}

impl Base {
    /// The same, `rows_down` floats further down the residual.
    ///
    /// # Safety
    /// The residual holds that offset.
    pub(crate) unsafe fn down(self, rows_down: usize) -> Base {
        match self {
            Base::ResidualBias(r, b) => Base::ResidualBias(r.add(rows_down), b),
            other => other,
        }
    }
}

/// A dense layer's weights: packed once for [`sgemm`] when the width allows
/// (every BERT layer), or quantized for [`int8`] at int8 precision; else
/// row-major for the `gemm` crate.
pub(crate) enum Dense {
    Packed(sgemm::PackedW),
    Quant(int8::QuantW),
    Flat { w: Vec<f32>, o: usize, k: usize },
}

impl Dense {
    /// From `w` (`o × k`, row-major).
    pub(crate) fn from_rows(w: Vec<f32>, o: usize, k: usize, precision: Precision) -> Self {
        match precision {
            Precision::Int8 if int8::QuantW::fits(o) => Dense::Quant(int8::QuantW::new(&w, o, k)),
            _ if sgemm::PackedW::fits(o) => Dense::Packed(sgemm::PackedW::new(&w, o, k)),
            _ => Dense::Flat { w, o, k },
        }
    }

    /// [`Dense::from_rows`], int8 codes chosen against the inputs' Gram
    /// matrix when one is given (`gram`, `k × k`; see [`gptq`]).
    pub(crate) fn from_rows_with(
        w: Vec<f32>,
        o: usize,
        k: usize,
        precision: Precision,
        gram: Option<&[f32]>,
    ) -> Self {
        match gram {
            Some(h) if precision == Precision::Int8 && int8::QuantW::fits(o) => {
                let u = gptq::inverse_factor(h, k);
                Dense::Quant(int8::QuantW::new_compensated(&w, o, k, &u))
            }
            _ => Self::from_rows(w, o, k, precision),
        }
    }

    /// `out (n, o) += x (n, k) · Wᵀ`.
    #[cfg(test)]
    pub(crate) fn acc(&self, out: &mut [f32], x: &[f32], n: usize) {
        self.apply(out, x, n, &Epilogue::ACC)
    }

    /// [`Dense::apply`]; an int8 layer quantizes `x` into `codes`, kept by
    /// the caller for the next call.
    pub(crate) fn apply_reusing(
        &self,
        out: &mut [f32],
        x: &[f32],
        n: usize,
        epi: &Epilogue,
        codes: &mut int8::Codes,
    ) {
        match self {
            Dense::Quant(w) => int8::matmul_q_into(out, x, w, n, epi, codes),
            _ => self.apply(out, x, n, epi),
        }
    }

    /// The int8 weights of an int8 layer.
    pub(crate) fn quant(&self) -> Option<&int8::QuantW> {
        match self {
            Dense::Quant(w) => Some(w),
            _ => None,
        }
    }

    /// `out (n, o) = start + x (n, k) · Wᵀ`, then `epi.then` (see
    /// [`Epilogue`]).
    pub(crate) fn apply(&self, out: &mut [f32], x: &[f32], n: usize, epi: &Epilogue) {
        match self {
            Dense::Packed(w) => sgemm::matmul(out, x, w, n, epi),
            Dense::Quant(w) => int8::matmul_q(out, x, w, n, epi),
            Dense::Flat { w, o, k } => {
                epi.check(n, *o);
                match epi.start {
                    Start::Zero => out.fill(0.0),
                    Start::Out => {}
                    Start::Bias(b) => out.chunks_exact_mut(*o).for_each(|r| r.copy_from_slice(b)),
                    Start::ResidualBias(res, b) => {
                        for (r, s) in out.chunks_exact_mut(*o).zip(res.chunks_exact(*o)) {
                            for ((d, &v), &bb) in r.iter_mut().zip(s).zip(b) {
                                *d = v + bb;
                            }
                        }
                    }
                }
                gemm_acc(out, x, w, n, *k, *o);
                if let Some(f) = epi.then {
                    f(out);
                }
            }
        }
    }
}

/// How many threads the `gemm` crate may use.
fn gemm_threads() -> gemm::Parallelism {
    match rayon::current_num_threads() {
        0 | 1 => gemm::Parallelism::None,
        n => gemm::Parallelism::Rayon(n),
    }
}

/// `out (n, o) += x (n, k) @ w (o, k)^T` by the `gemm` crate.
fn gemm_acc(out: &mut [f32], x: &[f32], w: &[f32], n: usize, k: usize, o: usize) {
    assert!(
        out.len() == n * o && x.len() == n * k && w.len() == o * k,
        "gemm shapes"
    );
    // SAFETY: the slices have exactly the sizes the strides describe
    // (checked above): out is n × o with row stride o, x is n × k with row
    // stride k, and w is read as its transpose (k × o, column stride k).
    unsafe {
        gemm::gemm(
            n,
            o,
            k,
            out.as_mut_ptr(),
            1,
            o as isize,
            true,
            x.as_ptr(),
            1,
            k as isize,
            w.as_ptr(),
            k as isize,
            1,
            1.0f32,
            1.0f32,
            false,
            false,
            false,
            gemm_threads(),
        )
    }
}

/// A family's dispatch, made once per process.
pub(crate) fn once<P: KernelPath>(cell: &'static OnceLock<Dispatch<P>>) -> &'static Dispatch<P> {
    cell.get_or_init(Dispatch::from_env)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Deterministic values in [-1, 1) (shared by the kernels' tests).
    pub(crate) fn values(n: usize, seed: u32) -> Vec<f32> {
        let mut s = seed.wrapping_mul(2_654_435_761).max(1);
        (0..n)
            .map(|_| {
                s ^= s << 13;
                s ^= s >> 17;
                s ^= s << 5;
                (s >> 8) as f32 / (1u32 << 23) as f32 - 1.0
            })
            .collect()
    }

    /// `out += x · Wᵀ` in f64, the reference every dense path is held to.
    pub(crate) fn reference(out: &mut [f32], x: &[f32], w: &[f32], n: usize, k: usize, o: usize) {
        for i in 0..n {
            for c in 0..o {
                let dot: f64 = (0..k)
                    .map(|j| f64::from(x[i * k + j]) * f64::from(w[c * k + j]))
                    .sum();
                out[i * o + c] += dot as f32;
            }
        }
    }

    /// Every form of [`Dense`] (packed, quantized and the `gemm` crate's,
    /// for widths that do not pack) adds `x · Wᵀ` to what `out` held.
    #[test]
    fn every_dense_form_accumulates_the_product() {
        for &(n, k, o) in &[(1, 8, 16), (9, 40, 77), (33, 384, 384), (5, 3, 1)] {
            let x = values(n * k, 3 + n as u32);
            let w = values(o * k, 11 + o as u32);
            let bias = values(o, 5);
            let start: Vec<f32> = (0..n).flat_map(|_| bias.iter().copied()).collect();
            let mut want = start.clone();
            reference(&mut want, &x, &w, n, k, o);
            for precision in [Precision::F32, Precision::Int8] {
                let d = Dense::from_rows(w.clone(), o, k, precision);
                let form = match &d {
                    Dense::Packed(_) => "packed",
                    Dense::Quant(_) => "int8",
                    Dense::Flat { .. } => "gemm",
                };
                assert_eq!(form == "gemm", o % 16 != 0, "{o} wide is {form}");
                let mut got = start.clone();
                d.acc(&mut got, &x, n);
                // int8 carries about 1.5 % relative error (see `int8`).
                let tol = if form == "int8" { 0.08 } else { 1e-5 } * (k as f32).sqrt();
                for (i, (a, b)) in got.iter().zip(&want).enumerate() {
                    assert!(
                        (a - b).abs() <= tol,
                        "{form} n={n} k={k} o={o} [{i}]: {a} vs {b}"
                    );
                }
            }
        }
    }

    /// A three-path family whose CPU support the tests choose.
    #[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
    enum Demo {
        Plain,
        Wide,
        Widest,
    }

    impl KernelPath for Demo {
        const ALL: &'static [Self] = &[Demo::Plain, Demo::Wide, Demo::Widest];
        const ENV: &'static str = "DEMO_PATH";
        fn name(self) -> &'static str {
            match self {
                Demo::Plain => "plain",
                Demo::Wide => "wide+x",
                Demo::Widest => "widest",
            }
        }
        fn env_name(self) -> &'static str {
            match self {
                Demo::Wide => "wide",
                p => p.name(),
            }
        }
        fn missing(self) -> Option<&'static str> {
            None
        }
    }

    #[test]
    fn dispatch_takes_the_request_or_falls_back_with_a_reason() {
        let all = |_: Demo| None;
        assert_eq!(choose(None, all).path, Demo::Widest);
        let d = choose(Some("wide"), all);
        assert!(d.path == Demo::Wide && d.note.is_none());
        // The report name is not the variable's value.
        let d = choose(Some("wide+x"), all);
        assert_eq!(d.path, Demo::Widest);
        assert!(d
            .note
            .unwrap()
            .contains("DEMO_PATH=\"wide+x\" is not plain|wide|widest"));
        // A CPU without the widest path: asked for, it falls to the next.
        let no_widest = |p: Demo| (p == Demo::Widest).then_some("no widest here");
        assert_eq!(choose(None, no_widest).path, Demo::Wide);
        let d = choose(Some("widest"), no_widest);
        assert_eq!(d.path, Demo::Wide);
        assert!(d
            .note
            .unwrap()
            .contains("DEMO_PATH=widest: no widest here; using wide+x"));
        // A CPU with nothing but the first path.
        let bare = |p: Demo| (p != Demo::Plain).then_some("no SIMD here");
        for req in [None, Some(""), Some("wide"), Some("widest")] {
            assert_eq!(choose(req, bare).path, Demo::Plain, "{req:?}");
        }
        assert!(choose(Some("wide"), bare)
            .note
            .unwrap()
            .contains("no SIMD here"));
    }

    /// The real families on this CPU: what they chose runs here.
    #[test]
    fn this_cpu_runs_the_chosen_paths() {
        let f = sgemm::dispatch();
        assert!(f.path.missing().is_none(), "{}", f.path.name());
        let q = int8::dispatch();
        assert!(q.path.missing().is_none(), "{}", q.path.name());
        eprintln!(
            "f32 path {} ({:?}), int8 path {} ({:?})",
            f.path.name(),
            f.note,
            q.path.name(),
            q.note
        );
    }
}
