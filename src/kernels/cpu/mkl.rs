//! oneMKL's bf16 matrix product (`cblas_gemm_bf16bf16f32`), loaded at run time from `libmkl_rt`.
//!
//! The library is not linked: the binary builds and runs without it, and only bf16 mixed precision
//! needs it. It is looked for, in order, at `ACCEL_MKL` (the library file or a folder holding
//! `lib/` or the file), in the folder `scripts/install_mkl.sh` installs to
//! (`$XDG_CACHE_HOME/accel/mkl`, default `~/.cache/accel/mkl`), in an active Python venv or conda
//! environment, and through the system's library path. oneMKL picks its kernels for the CPU: AMX
//! tiles, AVX512-BF16 dot products, or (on CPUs with neither) bf16 converted to f32 inside the
//! library, which gives the same sums at f32 speed.
//!
//! oneMKL runs sequentially: the callers split each product over rayon's threads themselves, so
//! the library's threads never compete with rayon's for the cores.

use std::ffi::{c_char, c_int, c_void};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use libloading::Library;

/// `MKL_INT` of the LP64 interface `libmkl_rt` uses by default.
type MklInt = c_int;

type GemmBf16 = unsafe extern "C" fn(
    layout: c_int,
    trans_a: c_int,
    trans_b: c_int,
    m: MklInt,
    n: MklInt,
    k: MklInt,
    alpha: f32,
    a: *const u16,
    lda: MklInt,
    b: *const u16,
    ldb: MklInt,
    beta: f32,
    c: *mut f32,
    ldc: MklInt,
);

const CBLAS_ROW_MAJOR: c_int = 101;
const CBLAS_NO_TRANS: c_int = 111;
const CBLAS_TRANS: c_int = 112;
const MKL_THREADING_SEQUENTIAL: c_int = 1;

/// The loaded library and the one product it is used for.
pub(crate) struct Mkl {
    gemm_bf16: GemmBf16,
    pub(crate) path: PathBuf,
    pub(crate) version: String,
    // Keeps the library mapped for the function pointer above.
    _library: Library,
}

/// `libmkl_rt`, loaded on first use; the error says where it was looked for.
pub(crate) fn get() -> Result<&'static Mkl, String> {
    static MKL: OnceLock<Result<Mkl, String>> = OnceLock::new();
    MKL.get_or_init(load).as_ref().map_err(Clone::clone)
}

/// The library names `libmkl_rt` goes by: oneMKL 2024+ ships `.so.2`/`.so.3` without the bare name.
const NAMES: [&str; 3] = ["libmkl_rt.so.3", "libmkl_rt.so.2", "libmkl_rt.so"];

/// Where to look, in order, as (description, candidate files).
fn candidates() -> Vec<PathBuf> {
    let mut dirs: Vec<PathBuf> = Vec::new();
    if let Some(cache) = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
    {
        dirs.push(cache.join("accel/mkl/lib"));
    }
    for var in ["VIRTUAL_ENV", "CONDA_PREFIX"] {
        if let Some(prefix) = std::env::var_os(var) {
            dirs.push(PathBuf::from(prefix).join("lib"));
        }
    }
    dirs.iter().flat_map(|d| NAMES.iter().map(move |n| d.join(n))).collect()
}

fn load() -> Result<Mkl, String> {
    if let Some(given) = std::env::var_os("ACCEL_MKL") {
        let given = PathBuf::from(given);
        let files: Vec<PathBuf> = if given.is_dir() {
            [given.join("lib"), given.clone()].iter().flat_map(|d| NAMES.iter().map(move |n| d.join(n))).collect()
        } else {
            vec![given.clone()]
        };
        let Some(file) = files.iter().find(|f| f.is_file()) else {
            return Err(format!("ACCEL_MKL={} holds no libmkl_rt", given.display()));
        };
        return open(file).map_err(|e| format!("ACCEL_MKL={}: {e}", given.display()));
    }
    let searched = candidates();
    if let Some(file) = searched.iter().find(|f| f.is_file()) {
        return open(file);
    }
    // Last, the system's library path (LD_LIBRARY_PATH, ldconfig).
    let mut errors = Vec::new();
    for name in NAMES {
        match open(Path::new(name)) {
            Ok(mkl) => return Ok(mkl),
            Err(e) => errors.push(e),
        }
    }
    let mut dirs: Vec<String> = searched.iter().filter_map(|f| f.parent()).map(|d| d.display().to_string()).collect();
    dirs.dedup();
    Err(format!(
        "oneMKL (libmkl_rt) not found in {} nor on the library path; install it with scripts/install_mkl.sh \
         (pip's `mkl` package) or point ACCEL_MKL at libmkl_rt.so",
        dirs.join(", ")
    ))
}

fn open(file: &Path) -> Result<Mkl, String> {
    // SAFETY: loading oneMKL runs its initialisers, which have no preconditions.
    let library = unsafe { Library::new(file) }.map_err(|e| format!("cannot load {}: {e}", file.display()))?;
    // SAFETY: the symbols have these C signatures in every oneMKL since 2019 (mkl_cblas.h, mkl_service.h).
    unsafe {
        let gemm_bf16 = *library
            .get::<GemmBf16>(b"cblas_gemm_bf16bf16f32\0")
            .map_err(|e| format!("{} has no bf16 GEMM (oneMKL 2019 or newer needed): {e}", file.display()))?;
        // Before any other call: the callers split products over rayon's threads themselves.
        if let Ok(set_layer) = library.get::<unsafe extern "C" fn(c_int) -> c_int>(b"MKL_Set_Threading_Layer\0") {
            set_layer(MKL_THREADING_SEQUENTIAL);
        }
        let mut version = String::from("oneMKL (version unknown)");
        if let Ok(get_version) = library.get::<unsafe extern "C" fn(*mut c_char, c_int)>(b"MKL_Get_Version_String\0") {
            let mut buf = vec![0u8; 256];
            get_version(buf.as_mut_ptr().cast(), buf.len() as c_int);
            let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
            version = short_version(String::from_utf8_lossy(&buf[..end]).trim());
        }
        let path = resolved_path(gemm_bf16 as *const c_void).unwrap_or_else(|| file.to_path_buf());
        Ok(Mkl { gemm_bf16, path, version, _library: library })
    }
}

/// "oneMKL 2026.2" from "Intel(R) oneAPI Math Kernel Library Version 2026.2-Product Build ...".
fn short_version(full: &str) -> String {
    match full.split_once("Version ") {
        Some((_, rest)) => {
            let number: String = rest.chars().take_while(|c| c.is_ascii_digit() || *c == '.').collect();
            format!("oneMKL {number}")
        }
        None => full.to_string(),
    }
}

/// The file a symbol was loaded from (where the system's search found the library).
fn resolved_path(symbol: *const c_void) -> Option<PathBuf> {
    let mut info = libc::Dl_info {
        dli_fname: std::ptr::null(),
        dli_fbase: std::ptr::null_mut(),
        dli_sname: std::ptr::null(),
        dli_saddr: std::ptr::null_mut(),
    };
    // SAFETY: dladdr only reads the loader's tables; `info` is a valid out-parameter.
    if unsafe { libc::dladdr(symbol, &mut info) } == 0 || info.dli_fname.is_null() {
        return None;
    }
    // SAFETY: dladdr returned a NUL-terminated file name owned by the loader.
    let name = unsafe { std::ffi::CStr::from_ptr(info.dli_fname) };
    Some(PathBuf::from(name.to_string_lossy().into_owned()))
}

impl Mkl {
    /// `c[m x n] = a * b (+ c when accumulate)`, with `a` presenting `m x k` and `b` `k x n`
    /// bf16 values (row-major, read transposed when the flag says so), on the calling thread.
    ///
    /// # Safety
    /// As `gemm::matmul_into`: the pointers must cover the matrices their strides describe.
    #[allow(clippy::too_many_arguments)]
    pub(crate) unsafe fn gemm(
        &self,
        (m, n, k): (usize, usize, usize),
        c: *mut f32,
        ldc: usize,
        accumulate: bool,
        (a, lda, a_trans): (*const u16, usize, bool),
        (b, ldb, b_trans): (*const u16, usize, bool),
    ) {
        if m == 0 || n == 0 {
            return;
        }
        let trans = |t: bool| if t { CBLAS_TRANS } else { CBLAS_NO_TRANS };
        let beta = if accumulate { 1.0 } else { 0.0 };
        (self.gemm_bf16)(
            CBLAS_ROW_MAJOR,
            trans(a_trans),
            trans(b_trans),
            m as MklInt,
            n as MklInt,
            k as MklInt,
            1.0,
            a,
            lda.max(1) as MklInt,
            b,
            ldb.max(1) as MklInt,
            beta,
            c,
            ldc.max(1) as MklInt,
        )
    }
}

/// The CPU's bf16 matrix instructions, best first: what oneMKL can use here.
pub(crate) fn bf16_instructions() -> &'static str {
    #[cfg(target_arch = "x86_64")]
    {
        if cpu_flag("amx_bf16") && cpu_flag("amx_tile") {
            return "AMX-BF16";
        }
        if std::arch::is_x86_feature_detected!("avx512bf16") {
            return "AVX512-BF16";
        }
    }
    "no AMX or AVX512-BF16 here: oneMKL widens bf16 to f32, at f32 speed"
}

/// Whether /proc/cpuinfo lists `flag` (Linux lists AMX only when the kernel enables its state).
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
    fn versions_are_shortened_to_the_release() {
        let full = "Intel(R) oneAPI Math Kernel Library Version 2026.2-Product Build 20260915 for Intel(R) 64 architecture applications";
        assert_eq!(short_version(full), "oneMKL 2026.2");
        assert_eq!(short_version("something else"), "something else");
    }
}
