//! oneMKL's bf16 matrix product (`cblas_gemm_bf16bf16f32`), loaded at run time from `libmkl_rt`.
//!
//! The library is not linked: the binary builds and runs without it, and only bf16 mixed precision
//! needs it: `ACCEL_MKL` names it, else it is looked for where `scripts/install_mkl.sh` installs it
//! (`~/.cache/accel/mkl`) and then as `dynlib` says. oneMKL picks its kernels for the CPU: AMX
//! tiles, AVX512-BF16 dot products, or (on CPUs with neither, and on CPUs not Intel's) bf16
//! converted to f32 inside the library, which gives the same sums at its f32 speed.
//!
//! oneMKL runs sequentially: the callers split each product over rayon's threads themselves, so
//! the library's threads never compete with rayon's for the cores.

use std::ffi::{c_char, c_int, c_void};
use std::path::PathBuf;
use std::sync::OnceLock;

use libloading::Library;

use super::dynlib::{self, Search};

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

const SEARCH: Search = Search {
    what: "oneMKL (libmkl_rt)",
    variable: "ACCEL_MKL",
    cache_folder: "mkl",
    // oneMKL 2024+ ships `.so.2`/`.so.3` without the bare name.
    names: &["libmkl_rt.so.3", "libmkl_rt.so.2", "libmkl_rt.so"],
    install: "scripts/install_mkl.sh (PyPI's `mkl`)",
};

fn load() -> Result<Mkl, String> {
    let (library, file) = SEARCH.open()?;
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
        let path = dynlib::resolved_path(gemm_bf16 as *const c_void).unwrap_or(file);
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
