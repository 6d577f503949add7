//! `accel env`: what a bug report needs, in one block of `key: value` lines: accel's version and
//! compiled features, the CPU and the SIMD level the kernels dispatch to, thread settings, the MPI
//! library and launcher, GPU support, and the ACCEL_*/HF_* variables.

use std::fmt::Write;
use std::process::Command;

/// The report, ready to print; with a run's `zero_stage`, what its ranks would shard.
pub fn report(zero_stage: Option<crate::distributed::ZeroStage>) -> String {
    let mut out = String::new();
    let mut line = |k: &str, v: String| {
        let _ = writeln!(out, "{k:<22} {v}");
    };
    line("accel:", env!("CARGO_PKG_VERSION").to_string());
    line("features:", features().join(", "));
    line("os:", format!("{} {}", std::env::consts::OS, std::env::consts::ARCH));
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    line("cpu:", cpu_model(&cpuinfo).unwrap_or_else(|| "unknown".into()));
    line("simd:", simd_level(&cpuinfo));
    line("cpus available:", std::thread::available_parallelism().map(|n| n.to_string()).unwrap_or_else(|_| "?".into()));
    line("cores (mpirun slots):", accel_launch::cores::cores_available().to_string());
    for var in ["RAYON_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"] {
        line(&format!("{var}:"), std::env::var(var).unwrap_or_else(|_| "(unset)".into()));
    }
    line("compute threads:", crate::runtime::threads_origin());
    let lookup = |k: &str| std::env::var(k).ok();
    line("ranks:", accel_launch::env::rank_origin(lookup));
    match accel_launch::RankEnv::from_lookup(lookup) {
        Ok(env) => {
            line("this process:", format!("rank {} of {}, local rank {}", env.rank, env.world_size, env.local_rank))
        }
        Err(e) => line("this process:", format!("unusable: {e}")),
    }
    for (k, v) in accel_launch::env::rank_variables(lookup) {
        line(&format!("{k}:"), v);
    }
    line("bf16 instructions:", crate::kernels::cpu::bf16_library::Instructions::here().to_string());
    match crate::kernels::cpu::bf16_backend() {
        Ok(b) => {
            let file = b.file.as_ref().map(|f| format!(" ({})", f.display())).unwrap_or_default();
            line("bf16 library:", format!("{}{file} on {}", b.version, b.isa));
            line("bf16 library chosen by:", b.reason.clone());
        }
        Err(why) => line("bf16 library:", format!("none: {why}")),
    }
    line("bf16 products:", bf16_products());
    line("mpi library:", mpi_library());
    let collectives = if cfg!(feature = "nccl") { "MPI on the CPU, NCCL on GPUs" } else { "MPI" };
    line(
        "sharding:",
        match zero_stage {
            Some(stage) => {
                format!("the config's zero_stage = {}: {} ({collectives})", stage.number(), stage.describe())
            }
            None => format!("zero_stage = 0, 1 or 2 in a run's config (--config here says which); {collectives}"),
        },
    );
    line("mpirun:", first_line("mpirun", &["--version"]).unwrap_or_else(|| "not found on PATH".into()));
    for (k, v) in crate::device::report() {
        line(&format!("{k}:"), v);
    }
    let mut vars: Vec<(String, String)> = std::env::vars()
        .filter(|(k, _)| k.starts_with("ACCEL_") || k.starts_with("HF_") || k == "TOKENIZERS_PARALLELISM")
        .collect();
    vars.sort();
    if vars.is_empty() {
        line("variables:", "no ACCEL_* or HF_* variable set".into());
    }
    for (k, v) in vars {
        line(&format!("{k}:"), v);
    }
    out
}

/// What a run that asks for bf16 gets here, with the measurement behind it.
fn bf16_products() -> String {
    match crate::kernels::cpu::bf16_products() {
        Ok(b) => format!("bf16, through {}", crate::kernels::cpu::bf16_calibration::describe(b)),
        Err(why) => format!("f32 (mixed_precision = \"bf16\" keeps f32 products here): {why}"),
    }
}

fn features() -> Vec<&'static str> {
    let mut f = vec!["cpu"];
    if cfg!(feature = "mpi") {
        f.push("mpi");
    }
    if cfg!(feature = "cuda") {
        f.push("cuda");
    }
    if cfg!(feature = "nccl") {
        f.push("nccl");
    }
    f
}

/// The CPU's model and the instruction sets the kernels use on it: `AMD EPYC (avx512f, avx512_bf16)`.
pub fn cpu_description() -> String {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpu_model(&cpuinfo).unwrap_or_else(|| std::env::consts::ARCH.to_string());
    format!("{model} ({})", simd_level(&cpuinfo))
}

fn cpu_model(cpuinfo: &str) -> Option<String> {
    let line = cpuinfo.lines().find(|l| l.starts_with("model name"))?;
    Some(line.split_once(':')?.1.trim().to_string())
}

/// The widest instruction sets the kernels use here, and the bf16 ones the CPU has.
fn simd_level(cpuinfo: &str) -> String {
    #[cfg(target_arch = "x86_64")]
    {
        let mut found = Vec::new();
        if is_x86_feature_detected!("avx512f") {
            found.push("avx512f");
        } else if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") {
            found.push("avx2+fma");
        } else {
            found.push("sse2");
        }
        if is_x86_feature_detected!("avx512bf16") {
            found.push("avx512_bf16");
        }
        if cpuinfo.contains(" amx_bf16") {
            found.push("amx_bf16");
        }
        found.join(", ")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = cpuinfo;
        std::env::consts::ARCH.to_string()
    }
}

fn mpi_library() -> String {
    #[cfg(feature = "mpi")]
    {
        match crate::distributed::mpi_library_version() {
            Some(v) => v.lines().next().unwrap_or("").trim_end_matches(',').to_string(),
            None => "linked, but it gave no version".into(),
        }
    }
    #[cfg(not(feature = "mpi"))]
    {
        "not compiled in (feature `mpi`)".into()
    }
}

fn first_line(program: &str, args: &[&str]) -> Option<String> {
    let out = Command::new(program).args(args).output().ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    text.lines().find(|l| !l.trim().is_empty()).map(|l| l.trim().to_string())
}
