//! With the `mpi` feature, compiles src/distributed/mpi_in_place.c against the system's mpi.h
//! (MPI_IN_PLACE for the in-place collectives). With the `cuda` feature, compiles accel's own GPU kernels (src/kernels/cuda/*.cu) to PTX with
//! nvcc, for compute capability CUDA_COMPUTE_CAP (default 90: H100/H200). The default build does
//! nothing here.

use std::path::PathBuf;
use std::process::Command;

fn main() {
    dependency_versions();
    #[cfg(feature = "mpi")]
    mpi_in_place();
    cuda_kernels();
}

/// The versions of candle and tokenizers this build links, from Cargo.lock, for the model cards
/// (`ACCEL_CANDLE_VERSION`, `ACCEL_TOKENIZERS_VERSION`; "unknown" without a lock file).
fn dependency_versions() {
    println!("cargo:rerun-if-changed=Cargo.lock");
    let lock = std::fs::read_to_string("Cargo.lock").unwrap_or_default();
    for (package, var) in [("candle-core", "ACCEL_CANDLE_VERSION"), ("tokenizers", "ACCEL_TOKENIZERS_VERSION")] {
        let header = format!("name = \"{package}\"\nversion = \"");
        let version =
            lock.find(&header).and_then(|at| lock[at + header.len()..].split('"').next()).unwrap_or("unknown");
        println!("cargo:rustc-env={var}={version}");
    }
}

/// The value of MPI_IN_PLACE in this system's MPI library, as `accel_mpi_in_place()`.
#[cfg(feature = "mpi")]
fn mpi_in_place() {
    println!("cargo:rerun-if-changed=src/distributed/mpi_in_place.c");
    let mpi = build_probe_mpi::probe().unwrap_or_else(|errors| {
        panic!("the `mpi` feature needs an MPI library with its headers (Debian: libopenmpi-dev): {errors:?}")
    });
    cc::Build::new().file("src/distributed/mpi_in_place.c").includes(&mpi.include_paths).compile("accel_mpi_in_place");
}

fn cuda_kernels() {
    println!("cargo:rerun-if-changed=src/kernels/cuda/dropout.cu");
    println!("cargo:rerun-if-env-changed=CUDA_COMPUTE_CAP");
    println!("cargo:rerun-if-env-changed=CUDA_HOME");
    if std::env::var_os("CARGO_FEATURE_CUDA").is_none() {
        return;
    }
    let out = PathBuf::from(std::env::var("OUT_DIR").expect("cargo sets OUT_DIR")).join("dropout.ptx");
    let cap: String = std::env::var("CUDA_COMPUTE_CAP")
        .unwrap_or_else(|_| "90".into())
        .chars()
        .filter(char::is_ascii_digit)
        .collect();
    let nvcc = match std::env::var_os("CUDA_HOME") {
        Some(home) => PathBuf::from(home).join("bin").join("nvcc"),
        None => PathBuf::from("nvcc"),
    };
    let status = Command::new(&nvcc)
        .args(["--ptx", "-O3", &format!("-arch=compute_{cap}"), "src/kernels/cuda/dropout.cu", "-o"])
        .arg(&out)
        .status()
        .unwrap_or_else(|e| {
            panic!("running {} for the `cuda` feature: {e} (scripts/build_cuda.sh sets it up)", nvcc.display())
        });
    assert!(status.success(), "{} failed on src/kernels/cuda/dropout.cu", nvcc.display());
}
