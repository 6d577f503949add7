//! oneDNN's bf16 matrix products, loaded at run time from
//! `libdnnl.so.3`: PyPI's `onednn-cpu-gomp` (one file, needing only libgomp), which
//! `scripts/install_onednn.sh` installs into `~/.cache/accel/onednn`. `ACCEL_ONEDNN` names another.
//!
//! oneDNN picks its kernels by the CPU's feature bits whatever the vendor: AMX tiles, then
//! AVX512-BF16 dot products (Intel Cooper Lake, AMD Zen 4 and 5), AVX-512 emulation; on CPUs
//! without AVX-512 its bf16 GEMM is not implemented, which loading checks. [`OneDnn::isa`] says
//! which instruction set it dispatches to.
//!
//! Two entry points run the products: `dnnl_gemm_bf16bf16f32`, the BLAS-like call, and the matmul
//! primitive (`onednn_matmul.rs`), whose brgemm kernels the gemm call does not use. Which one runs
//! is measured per machine (`bf16_calibration.rs`); `ACCEL_ONEDNN_API` fixes it.
//!
//! Each call runs on the calling thread: accel splits products over rayon's threads itself, and
//! oneDNN's OpenMP team is held to one thread on every thread that calls it, so OpenMP's threads
//! are never started and never spin on a core rayon needs.

use std::cell::Cell;
use std::ffi::{c_char, c_int, c_uint, c_void};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::OnceLock;

use libloading::Library;

use super::dynlib::{self, Search};
use super::onednn_matmul::MatmulApi;

/// `dnnl_dim_t`.
type Dim = i64;

type GemmBf16 = unsafe extern "C" fn(
    trans_a: c_char,
    trans_b: c_char,
    m: Dim,
    n: Dim,
    k: Dim,
    alpha: f32,
    a: *const u16,
    lda: Dim,
    b: *const u16,
    ldb: Dim,
    beta: f32,
    c: *mut f32,
    ldc: Dim,
) -> c_int;

/// `dnnl_version_t`.
#[repr(C)]
struct Version {
    major: c_int,
    minor: c_int,
    patch: c_int,
    hash: *const c_char,
    cpu_runtime: c_uint,
    gpu_runtime: c_uint,
}

const SEARCH: Search = Search {
    what: "oneDNN (libdnnl.so.3)",
    variable: "ACCEL_ONEDNN",
    cache_folder: "onednn",
    names: &["libdnnl.so.3"],
    install: "scripts/install_onednn.sh (PyPI's `onednn-cpu-gomp`)",
};

/// Which of oneDNN's entry points runs the products.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Api {
    /// `dnnl_gemm_bf16bf16f32`, the BLAS-like call.
    Gemm,
    /// The matmul primitive, one per shape (`onednn_matmul.rs`).
    Matmul,
}

impl Api {
    pub(crate) fn name(self) -> &'static str {
        match self {
            Self::Gemm => "dnnl_gemm_bf16bf16f32",
            Self::Matmul => "matmul primitive",
        }
    }
}

/// The variable that fixes the entry point (`gemm` or `matmul`) instead of measuring them.
pub(crate) const API_VARIABLE: &str = "ACCEL_ONEDNN_API";

/// The loaded library and the products it is used for.
pub(crate) struct OneDnn {
    gemm_bf16: GemmBf16,
    matmul: MatmulApi,
    /// Whether the matmul primitive runs the products (else the gemm call).
    use_matmul: AtomicBool,
    /// The entry point `ACCEL_ONEDNN_API` fixed, if it is set.
    pub(crate) fixed_api: Option<Api>,
    set_omp_threads: unsafe extern "C" fn(c_int),
    pub(crate) path: PathBuf,
    pub(crate) version: String,
    /// The instruction set oneDNN dispatches to here (`dnnl_get_effective_cpu_isa`).
    pub(crate) isa: &'static str,
    // Keeps the libraries mapped for the function pointers above.
    _library: Library,
    _gomp: Library,
}

/// oneDNN, loaded on first use; the error says where it was looked for.
pub(crate) fn get() -> Result<&'static OneDnn, String> {
    static ONEDNN: OnceLock<Result<OneDnn, String>> = OnceLock::new();
    ONEDNN.get_or_init(load).as_ref().map_err(Clone::clone)
}

fn load() -> Result<OneDnn, String> {
    let (library, file) = SEARCH.open()?;
    let missing = |e: libloading::Error| format!("{} is not the oneDNN 3 accel needs: {e}", file.display());
    // SAFETY: the symbols have these C signatures in oneDNN 3 (dnnl.h: `dnnl_gemm_bf16bf16f32` takes
    // `dnnl_sgemm`'s arguments with bf16 inputs, here as their u16 bits).
    unsafe {
        let gemm_bf16 = *library.get::<GemmBf16>(b"dnnl_gemm_bf16bf16f32\0").map_err(missing)?;
        let isa = *library.get::<unsafe extern "C" fn() -> c_int>(b"dnnl_get_effective_cpu_isa\0").map_err(missing)?;
        let version = *library.get::<unsafe extern "C" fn() -> *const Version>(b"dnnl_version\0").map_err(missing)?;
        // The OpenMP runtime oneDNN was built against, already loaded as its dependency.
        let gomp = Library::new("libgomp.so.1").map_err(|e| format!("{} needs libgomp.so.1: {e}", file.display()))?;
        let set_omp_threads = *gomp.get::<unsafe extern "C" fn(c_int)>(b"omp_set_num_threads\0").map_err(missing)?;
        let v = &*version();
        let matmul = MatmulApi::load(&library).map_err(|e| format!("{} lacks {e}", file.display()))?;
        let fixed_api = match std::env::var(API_VARIABLE).as_deref() {
            Err(_) => None,
            Ok("matmul") => Some(Api::Matmul),
            Ok("gemm") => Some(Api::Gemm),
            Ok(other) => {
                return Err(format!("{API_VARIABLE}={other:?} names no oneDNN entry point: use gemm or matmul"))
            }
        };
        let path = dynlib::resolved_path(gemm_bf16 as *const c_void).unwrap_or(file);
        let lib = OneDnn {
            gemm_bf16,
            matmul,
            use_matmul: AtomicBool::new(fixed_api == Some(Api::Matmul)),
            fixed_api,
            set_omp_threads,
            path,
            version: format!("oneDNN {}.{}.{}", v.major, v.minor, v.patch),
            isa: isa_name(isa()),
            _library: library,
            _gomp: gomp,
        };
        lib.check_bf16()?;
        Ok(lib)
    }
}

/// `dnnl_cpu_isa_t` as its name in oneDNN's documentation (`ONEDNN_MAX_CPU_ISA`'s values).
fn isa_name(isa: c_int) -> &'static str {
    match isa {
        0x1 => "SSE41",
        0x3 => "AVX",
        0x7 => "AVX2",
        0xf => "AVX2_VNNI",
        0x1f => "AVX2_VNNI_2",
        0x27 => "AVX512_CORE",
        0x67 => "AVX512_CORE_VNNI",
        0xe7 => "AVX512_CORE_BF16",
        0x1ef => "AVX512_CORE_FP16",
        0xfef => "AVX512_CORE_AMX",
        0x1fef => "AVX512_CORE_AMX_FP16",
        _ => "an instruction set this version of accel does not name",
    }
}

thread_local! {
    /// Whether this thread's OpenMP team size is already held to one.
    static ONE_OMP_THREAD: Cell<bool> = const { Cell::new(false) };
}

impl OneDnn {
    /// The entry point that runs the products.
    pub(crate) fn api(&self) -> Api {
        if self.use_matmul.load(Ordering::Relaxed) {
            Api::Matmul
        } else {
            Api::Gemm
        }
    }

    /// Runs the products through `api` from now on (the calibration's choice, made before any run
    /// product; a fixed entry point stays).
    pub(crate) fn set_api(&self, api: Api) {
        if self.fixed_api.is_none() {
            self.use_matmul.store(api == Api::Matmul, Ordering::Relaxed);
        }
    }

    /// One tiny product, compared with its exact value: oneDNN answers "unimplemented" for bf16 on
    /// CPUs without AVX-512, and a library that cannot run the products must not be chosen.
    fn check_bf16(&self) -> Result<(), String> {
        // 1.5 * 2 + 0.25 * 4 = 4, exact in bf16 and f32.
        let (a, b) = ([0x3fc0u16, 0x3e80], [0x4000u16, 0x4080]);
        let mut c = [0f32];
        // SAFETY: a is 1 x 2, b 2 x 1 and c 1 x 1, row-major.
        let status =
            unsafe { self.call((1, 1, 2), c.as_mut_ptr(), 1, false, (a.as_ptr(), 2, false), (b.as_ptr(), 1, false)) };
        match (status, c[0]) {
            (0, 4.0) => {
                // The matmul primitive on the same product (its own check: it has its own kernels).
                let mut c = [0f32];
                self.single_threaded();
                // SAFETY: as above.
                unsafe {
                    self.matmul.run((1, 1, 2), c.as_mut_ptr(), 1, false, (a.as_ptr(), 2, false), (b.as_ptr(), 1, false))
                }
                .map_err(|e| format!("{} ({}): {e}", self.version, self.path.display()))?;
                match c[0] {
                    4.0 => Ok(()),
                    v => {
                        Err(format!("{} ({}) computed 4 as {v} in its bf16 matmul", self.version, self.path.display()))
                    }
                }
            }
            (0, v) => Err(format!("{} ({}) computed 4 as {v} in its bf16 GEMM", self.version, self.path.display())),
            (s, _) => Err(format!(
                "{} ({}) has no bf16 GEMM on this CPU (status {s}; it runs {} here)",
                self.version,
                self.path.display(),
                self.isa
            )),
        }
    }

    /// OpenMP's team size is a per-thread setting: hold it to one on the calling thread, once.
    fn single_threaded(&self) {
        if !ONE_OMP_THREAD.get() {
            // SAFETY: sets the calling thread's OpenMP setting; no preconditions.
            unsafe { (self.set_omp_threads)(1) };
            ONE_OMP_THREAD.set(true);
        }
    }

    /// `c[m x n] = a * b (+ c when accumulate)` of bf16 inputs, f32 out, on the calling thread;
    /// `a` presents `m x k` and `b` `k x n` values (row-major, read transposed when flagged).
    ///
    /// # Safety
    /// As `gemm::matmul_into`: the pointers must cover the matrices their strides describe.
    pub(crate) unsafe fn gemm_bf16(
        &self,
        dims: (usize, usize, usize),
        c: *mut f32,
        ldc: usize,
        accumulate: bool,
        a: (*const u16, usize, bool),
        b: (*const u16, usize, bool),
    ) {
        // Arguments are checked by the callers' views, and loading checked the CPU: a failure here is a bug.
        if self.api() == Api::Matmul {
            if dims.0 == 0 || dims.1 == 0 {
                return;
            }
            self.single_threaded();
            if let Err(e) = self.matmul.run(dims, c, ldc, accumulate, a, b) {
                panic!("oneDNN's bf16 matmul ({dims:?}): {e}");
            }
            return;
        }
        let status = self.call(dims, c, ldc, accumulate, a, b);
        assert_eq!(status, 0, "oneDNN's bf16 gemm ({dims:?}) failed with status {status}");
    }

    /// The call itself; returns oneDNN's status.
    unsafe fn call(
        &self,
        (m, n, k): (usize, usize, usize),
        c: *mut f32,
        ldc: usize,
        accumulate: bool,
        (a, lda, a_trans): (*const u16, usize, bool),
        (b, ldb, b_trans): (*const u16, usize, bool),
    ) -> c_int {
        if m == 0 || n == 0 {
            return 0;
        }
        self.single_threaded();
        let trans = |t: bool| (if t { b'T' } else { b'N' }) as c_char;
        let beta = if accumulate { 1.0 } else { 0.0 };
        let dim = |d: usize| d as Dim;
        (self.gemm_bf16)(
            trans(a_trans),
            trans(b_trans),
            dim(m),
            dim(n),
            dim(k),
            1.0,
            a,
            dim(lda.max(1)),
            b,
            dim(ldb.max(1)),
            beta,
            c,
            dim(ldc.max(1)),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_isa_onednn_reports_has_a_name() {
        for isa in [0x1, 0x3, 0x7, 0xf, 0x1f, 0x27, 0x67, 0xe7, 0x1ef, 0xfef, 0x1fef] {
            assert!(!isa_name(isa).contains("does not name"), "{isa:#x}");
        }
        assert!(isa_name(0x4242).contains("does not name"));
    }
}
