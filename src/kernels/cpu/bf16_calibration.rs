//! Whether bf16 products pay on this machine, measured once per process when a run first asks for
//! bf16: a BERT layer's products (512 tokens, hidden 384, intermediate 1536, one backward product
//! read transposed) timed on the process's threads in f32 through accel's kernels and in bf16
//! through the library `bf16_library` chose (for oneDNN, through both of its entry points, keeping
//! the faster).
//!
//! A bf16 step also converts every product's activations to bf16, so bf16 products are used only
//! when they run at least [`MARGIN`] times as fast as f32's; otherwise a run that asks for bf16
//! keeps f32 products and says so with both figures, and bf16 never makes a run slower. The CPU's
//! flags alone cannot tell: Intel cores without AMX (or with AMX hidden by the hypervisor) run
//! `vdpbf16ps` at the rate of their f32 FMAs, and oneDNN's bf16 measured 155 GFLOP/s there against
//! accel's f32 245 on two threads, while on AMD Zen 5 its bf16 measured 825-908 against f32's
//! 374-407.
//!
//! `ACCEL_BF16_LIBRARY` skips the measurement: the library it names runs the products.

use std::sync::OnceLock;

use super::bf16_library::{bf16_backend, Bf16Backend, Library, Unavailable, VARIABLE};
use super::gemm::time_alone;
use super::onednn::{self, Api};
use super::profile::Shape;
use super::threads::num_threads;

/// How many times as fast as f32's the bf16 products must run to be used.
pub const MARGIN: f64 = 1.2;

/// The products timed, as one BERT layer of 512 tokens runs them: (m, n, k), transposes, and the
/// precision (set when timed).
const SHAPES: [Shape; 4] = [
    ((512, 384, 384), (false, false), false),  // attention's projections
    ((512, 1536, 384), (false, false), false), // the intermediate layer
    ((512, 384, 1536), (false, false), false), // the output layer
    ((1536, 384, 512), (true, false), false),  // a weight gradient: activations read transposed
];

/// Runs per shape; the median counts (one more run first, not counted, warms the caches).
const REPS: usize = 5;

/// What the measurement found.
#[derive(Debug, Clone, PartialEq)]
pub struct Measured {
    pub f32_gflops: f64,
    /// The bf16 rate of the entry point kept.
    pub bf16_gflops: f64,
    /// oneDNN's entry points with their rates, when both were measured.
    pub entry_points: Vec<(&'static str, f64)>,
    pub threads: usize,
}

impl Measured {
    /// "bf16 products 850 GFLOP/s, f32 400 at BERT's layer shapes on 2 threads".
    pub fn figures(&self) -> String {
        let points = match self.entry_points.as_slice() {
            [] => String::new(),
            points => {
                let each: Vec<String> = points.iter().map(|(name, rate)| format!("{name} {rate:.0}")).collect();
                format!(" ({})", each.join(", "))
            }
        };
        format!(
            "bf16 products {:.0} GFLOP/s{points}, f32 {:.0} at BERT's layer shapes on {} thread{}",
            self.bf16_gflops,
            self.f32_gflops,
            self.threads,
            if self.threads == 1 { "" } else { "s" }
        )
    }
}

/// The library that runs this process's bf16 products, once it is measured to pay; or why the
/// products stay f32 (`Unavailable::Slower` with both figures when it does not pay).
pub fn bf16_products() -> Result<&'static Bf16Backend, &'static Unavailable> {
    static CHOSEN: OnceLock<Result<&'static Bf16Backend, Unavailable>> = OnceLock::new();
    CHOSEN
        .get_or_init(|| {
            let backend = bf16_backend().map_err(Clone::clone)?;
            if backend.forced {
                return Ok(backend);
            }
            let measured = measure(backend.library);
            let verdict = verdict(&measured, backend);
            let _ = MEASURED.set(measured);
            verdict.map(|()| backend).map_err(Unavailable::Slower)
        })
        .as_ref()
        .map(|backend| *backend)
}

static MEASURED: OnceLock<Measured> = OnceLock::new();

/// "oneDNN 3.2.0 (matmul primitive) on AVX512_CORE_BF16: bf16 products 850 GFLOP/s, ...": what runs
/// the bf16 products, and why (the measurement, or the variable that named the library); for the
/// run's log and `accel env`.
pub fn describe(backend: &Bf16Backend) -> String {
    let entry = match backend.library {
        Library::OneDnn => onednn::get().map(|lib| format!(" ({})", lib.api().name())).unwrap_or_default(),
        _ => String::new(),
    };
    let why = MEASURED.get().map(Measured::figures).unwrap_or_else(|| backend.reason.clone());
    format!("{}{entry} on {}: {why}", backend.version, backend.isa)
}

/// Whether the measured rates make bf16 worth its conversions; the error says why not.
fn verdict(m: &Measured, backend: &Bf16Backend) -> Result<(), String> {
    if m.bf16_gflops >= MARGIN * m.f32_gflops {
        return Ok(());
    }
    let library = match backend.library {
        Library::OneDnn => "onednn",
        Library::Mkl => "mkl",
        Library::Emulated => "emulated",
    };
    Err(format!(
        "{} measured {} here: bf16 pays only from {MARGIN}x f32's rate, as it also converts every \
         product's inputs ({VARIABLE}={library} runs bf16 products anyway)",
        backend.version,
        m.figures()
    ))
}

/// GFLOP/s over [`SHAPES`], in bf16 or f32.
fn rate(bf16: bool) -> f64 {
    let (mut flops, mut seconds) = (0.0, 0.0);
    for (dims, trans, _) in SHAPES {
        flops += 2.0 * (dims.0 * dims.1 * dims.2) as f64;
        seconds += time_alone((dims, trans, bf16), REPS);
    }
    flops / seconds / 1e9
}

fn measure(library: Library) -> Measured {
    let f32_gflops = rate(false);
    let mut entry_points = Vec::new();
    let bf16_gflops = match onednn::get() {
        Ok(lib) if library == Library::OneDnn && lib.fixed_api.is_none() => {
            for api in [Api::Gemm, Api::Matmul] {
                lib.set_api(api);
                entry_points.push((api.name(), rate(true)));
            }
            let (best, rate) = if entry_points[1].1 > entry_points[0].1 {
                (Api::Matmul, entry_points[1].1)
            } else {
                (Api::Gemm, entry_points[0].1)
            };
            lib.set_api(best);
            rate
        }
        _ => rate(true),
    };
    Measured { f32_gflops, bf16_gflops, entry_points, threads: num_threads() }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::cpu::bf16_library::Instructions;

    fn backend() -> Bf16Backend {
        Bf16Backend {
            library: Library::OneDnn,
            file: None,
            version: "oneDNN 3.2.0".into(),
            instructions: Instructions::Avx512Bf16,
            isa: "AVX512_CORE_BF16".into(),
            reason: "test".into(),
            forced: false,
        }
    }

    fn measured(bf16: f64, f32: f64) -> Measured {
        Measured { f32_gflops: f32, bf16_gflops: bf16, entry_points: vec![("matmul primitive", bf16)], threads: 2 }
    }

    #[test]
    fn bf16_is_kept_only_when_it_clearly_beats_f32() {
        assert_eq!(verdict(&measured(850.0, 400.0), &backend()), Ok(()));
        for (bf16, f32) in [(155.0, 245.0), (450.0, 400.0)] {
            let why = verdict(&measured(bf16, f32), &backend()).unwrap_err();
            assert!(
                why.contains(&format!("bf16 products {bf16:.0} GFLOP/s")) && why.contains(&format!("f32 {f32:.0}")),
                "{why}"
            );
            assert!(why.contains("oneDNN 3.2.0") && why.contains("ACCEL_BF16_LIBRARY=onednn"), "{why}");
            assert!(why.contains("(matmul primitive ") && why.contains("on 2 threads"), "{why}");
        }
    }
}
