//! Which library runs the bf16 products on this CPU, chosen once per process by what the CPU has.
//!
//! - AMX-BF16 (Intel Sapphire Rapids and later): oneMKL where it is installed (its AMX kernels
//!   measured 1.1-1.4 TFLOP/s at BERT's shapes on two cores), else oneDNN.
//! - AVX512-BF16 without AMX (Intel Cooper Lake, AMD Zen 4 and 5): oneDNN, whose bf16 GEMM measured
//!   825-908 GFLOP/s there against oneMKL's 165-201 (oneMKL widens bf16 to f32 off Intel's CPUs).
//! - Neither (AMD Zen 2 and 3, older Intel): no library. bf16 products would be bf16 widened to f32
//!   by the library and run slower than the f32 path, so `mixed_precision = "bf16"` keeps the
//!   products in f32 and says so (see `Autocast`).
//!
//! A library is where the products could run; whether they pay is measured before a run uses them
//! (`bf16_calibration`). `ACCEL_BF16_LIBRARY` overrides both, the choice and the measurement: `onednn`, `mkl`, or `emulated` (accel's f32 kernels on
//! inputs rounded to bf16: the same sums as a bf16 library on any CPU, slower than f32; for checking
//! bf16 numerics on a CPU without bf16 instructions).

use std::fmt;
use std::path::PathBuf;
use std::sync::OnceLock;

use super::{mkl, onednn};

/// The variable that overrides the choice.
pub const VARIABLE: &str = "ACCEL_BF16_LIBRARY";

/// A library that runs bf16 products (bf16 inputs, f32 accumulation and output).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Library {
    OneDnn,
    Mkl,
    /// accel's f32 kernels on the bf16 inputs widened back to f32.
    Emulated,
}

/// The CPU's bf16 matrix instructions, best first.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Instructions {
    AmxBf16,
    Avx512Bf16,
    None,
}

impl Instructions {
    /// What this CPU has (Linux lists AMX only when the kernel enables its state).
    pub fn here() -> Self {
        #[cfg(target_arch = "x86_64")]
        {
            if cpu_flag("amx_bf16") && cpu_flag("amx_tile") {
                return Self::AmxBf16;
            }
            if std::arch::is_x86_feature_detected!("avx512bf16") {
                return Self::Avx512Bf16;
            }
        }
        Self::None
    }
}

impl fmt::Display for Instructions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::AmxBf16 => "AMX-BF16",
            Self::Avx512Bf16 => "AVX512-BF16",
            Self::None => "no AVX512-BF16 or AMX",
        })
    }
}

/// The library chosen here, and why.
#[derive(Debug, Clone)]
pub struct Bf16Backend {
    pub library: Library,
    /// The file it was loaded from (none for `Emulated`).
    pub file: Option<PathBuf>,
    /// "oneDNN 3.2.0", "oneMKL 2026.2", or what the emulation runs on.
    pub version: String,
    /// What the CPU has.
    pub instructions: Instructions,
    /// The instruction set the library runs on here (oneDNN's `dnnl_get_effective_cpu_isa`).
    pub isa: String,
    /// Why this library: the CPU's instructions and the measurement behind the choice, or the variable.
    pub reason: String,
    /// Whether `ACCEL_BF16_LIBRARY` named it (its products then run without being measured first).
    pub forced: bool,
}

/// Why no library runs the bf16 products here.
#[derive(Debug, Clone)]
pub enum Unavailable {
    /// The CPU has no bf16 instructions: bf16 products would be slower than f32 ones.
    NoInstructions(String),
    /// The library this CPU needs (or the variable names) cannot be loaded or used.
    Missing(String),
    /// The library runs, and its bf16 products measured too slow here to pay (`bf16_calibration`).
    Slower(String),
}

impl fmt::Display for Unavailable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::NoInstructions(why) | Self::Missing(why) | Self::Slower(why) => f.write_str(why),
        }
    }
}

/// The bf16 products' library for this process, chosen on first use.
pub fn bf16_backend() -> Result<&'static Bf16Backend, &'static Unavailable> {
    static CHOSEN: OnceLock<Result<Bf16Backend, Unavailable>> = OnceLock::new();
    CHOSEN.get_or_init(|| choose(Instructions::here(), std::env::var(VARIABLE).ok().as_deref())).as_ref()
}

fn choose(cpu: Instructions, forced: Option<&str>) -> Result<Bf16Backend, Unavailable> {
    if let Some(name) = forced {
        let reason = format!("{VARIABLE}={name}");
        let forced = |backend: Bf16Backend| Bf16Backend { forced: true, ..backend };
        return match name {
            "onednn" => with_onednn(cpu, reason).map(forced),
            "mkl" => with_mkl(cpu, reason).map(forced),
            "emulated" => Ok(forced(emulated(cpu, reason))),
            other => Err(Unavailable::Missing(format!(
                "{VARIABLE}={other:?} names no bf16 library: use onednn, mkl or emulated (or unset it)"
            ))),
        };
    }
    match cpu {
        Instructions::AmxBf16 => with_mkl(cpu, "AMX-BF16: oneMKL's AMX kernels measured 1.1-1.4 TFLOP/s".into())
            .or_else(|mkl_missing| {
                with_onednn(cpu, "AMX-BF16, oneMKL not installed".into()).map_err(|e| Unavailable::Missing(format!("{e}; {mkl_missing}")))
            }),
        Instructions::Avx512Bf16 => with_onednn(
            cpu,
            "AVX512-BF16 without AMX: oneDNN's bf16 GEMM measured 825-908 GFLOP/s on a Zen 5, oneMKL's 165-201 (it widens bf16 to f32 off Intel)"
                .into(),
        ),
        Instructions::None => Err(Unavailable::NoInstructions(format!(
            "this CPU has no AVX512-BF16 or AMX: a bf16 library widens bf16 to f32 here and runs slower than f32 \
             ({VARIABLE}=emulated runs bf16 numerics anyway)"
        ))),
    }
}

fn with_onednn(cpu: Instructions, reason: String) -> Result<Bf16Backend, Unavailable> {
    let lib = onednn::get().map_err(|e| Unavailable::Missing(e.clone()))?;
    Ok(Bf16Backend {
        library: Library::OneDnn,
        file: Some(lib.path.clone()),
        version: lib.version.clone(),
        instructions: cpu,
        isa: lib.isa.to_string(),
        reason,
        forced: false,
    })
}

fn with_mkl(cpu: Instructions, reason: String) -> Result<Bf16Backend, Unavailable> {
    let lib = mkl::get().map_err(|e| Unavailable::Missing(e.clone()))?;
    Ok(Bf16Backend {
        library: Library::Mkl,
        file: Some(lib.path.clone()),
        version: lib.version.clone(),
        instructions: cpu,
        // oneMKL does not say which kernels it picked; it uses the CPU's bf16 instructions when present.
        isa: match cpu {
            Instructions::None => "f32 instructions (oneMKL widens bf16 to f32)".into(),
            native => native.to_string(),
        },
        reason,
        forced: false,
    })
}

fn emulated(cpu: Instructions, reason: String) -> Bf16Backend {
    Bf16Backend {
        library: Library::Emulated,
        file: None,
        version: "accel's f32 kernels on bf16-rounded inputs (emulated)".into(),
        instructions: cpu,
        isa: "f32 instructions".into(),
        reason,
        forced: false,
    }
}

/// Whether /proc/cpuinfo lists `flag`.
#[cfg(target_arch = "x86_64")]
fn cpu_flag(flag: &str) -> bool {
    static FLAGS: OnceLock<String> = OnceLock::new();
    let flags = FLAGS.get_or_init(|| {
        let info = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        info.lines().find(|l| l.starts_with("flags")).unwrap_or_default().to_string()
    });
    flags.split_whitespace().any(|f| f == flag)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cpu_without_bf16_instructions_keeps_f32_and_the_variable_is_checked() {
        let Err(Unavailable::NoInstructions(why)) = choose(Instructions::None, None) else {
            panic!("a CPU without bf16 instructions was given a library")
        };
        assert!(why.contains("no AVX512-BF16 or AMX") && why.contains(VARIABLE), "{why}");
        let Err(Unavailable::Missing(why)) = choose(Instructions::AmxBf16, Some("openblas")) else {
            panic!("an unknown library name was accepted")
        };
        assert!(why.contains("ACCEL_BF16_LIBRARY=\"openblas\"") && why.contains("onednn"), "{why}");
        let forced = choose(Instructions::None, Some("emulated")).unwrap();
        assert_eq!((forced.library, forced.reason.as_str()), (Library::Emulated, "ACCEL_BF16_LIBRARY=emulated"));
        assert!(forced.forced);
    }
}
