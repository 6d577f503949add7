//! Where a run's tensors live: `device = "auto" | "cpu" | "cuda" | "cuda:N"` (config key and
//! `--device`), resolved once per process into the candle [`Device`] that the model, the collator,
//! the optimizer state and evaluation all take from the trainer.
//!
//! Under a launcher each rank takes the GPU of its local rank (`"cuda"`, or `"auto"` when the build
//! has CUDA and the host has GPUs); more ranks on a host than GPUs is refused by `accel launch` before
//! any rank starts, and by the rank whose GPU is missing when another launcher started it.

#[cfg(feature = "cuda")]
mod cuda;

use std::fmt;
use std::str::FromStr;

use candle_core::Device;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::{Error, Result};

/// The configured device.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum DeviceSpec {
    /// The GPU of the local rank when this build has CUDA and the host has GPUs, else the CPU. A
    /// host with GPUs but fewer than its ranks is an error, as for `Cuda`: set `Cpu` to train on
    /// the CPU there.
    #[default]
    Auto,
    Cpu,
    /// `Some(n)`: GPU n; `None`: the GPU of the local rank.
    Cuda(Option<usize>),
}

impl fmt::Display for DeviceSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Auto => f.write_str("auto"),
            Self::Cpu => f.write_str("cpu"),
            Self::Cuda(None) => f.write_str("cuda"),
            Self::Cuda(Some(n)) => write!(f, "cuda:{n}"),
        }
    }
}

impl FromStr for DeviceSpec {
    type Err = String;

    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "auto" => Ok(Self::Auto),
            "cpu" => Ok(Self::Cpu),
            "cuda" | "gpu" => Ok(Self::Cuda(None)),
            _ => match s.strip_prefix("cuda:").map(str::parse::<usize>) {
                Some(Ok(n)) => Ok(Self::Cuda(Some(n))),
                _ => Err(format!("unknown device {s:?}; expected \"auto\", \"cpu\", \"cuda\" or \"cuda:N\"")),
            },
        }
    }
}

impl Serialize for DeviceSpec {
    fn serialize<S: Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for DeviceSpec {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        String::deserialize(d)?.parse().map_err(serde::de::Error::custom)
    }
}

/// Why this process cannot use a GPU: the build, the driver, or the machine.
pub fn gpu_unavailable() -> Option<String> {
    usable_gpus().err()
}

/// How many GPUs this process can use (at least one), or why it can use none.
fn usable_gpus() -> std::result::Result<usize, String> {
    match gpu_count()? {
        0 => Err("this machine has no CUDA GPU".into()),
        n => Ok(n),
    }
}

/// How many CUDA GPUs this process sees, or why it cannot look.
pub fn gpu_count() -> std::result::Result<usize, String> {
    #[cfg(feature = "cuda")]
    {
        cuda::device_count()
    }
    #[cfg(not(feature = "cuda"))]
    {
        Err("this accel was built without CUDA (the `cuda` feature: scripts/build_cuda.sh)".into())
    }
}

impl DeviceSpec {
    /// The GPUs this spec chooses among: `None` where it means the CPU, an error naming why when
    /// it asks for a GPU this process cannot have.
    fn gpus(self) -> Result<Option<usize>> {
        match (self, usable_gpus()) {
            (Self::Cpu, _) | (Self::Auto, Err(_)) => Ok(None),
            (_, Ok(n)) => Ok(Some(n)),
            (_, Err(why)) => Err(Error::config("device", format!("\"{self}\" needs a GPU: {why}"))),
        }
    }

    /// Checks, before any rank starts, that `ranks` ranks on this host each find their device:
    /// a GPU per rank for `cuda` (and for `auto` where there are GPUs). One GPU for several ranks
    /// (`cuda:N`) is refused too: they would share its memory and time.
    pub fn check_host(self, ranks: usize) -> Result<()> {
        let Some(count) = self.gpus()? else { return Ok(()) };
        if let Self::Cuda(Some(n)) = self {
            if ranks > 1 {
                return Err(Error::config(
                    "device",
                    format!("\"cuda:{n}\" would put all {ranks} ranks of this host on one GPU; use \"cuda\" (a GPU per local rank)"),
                ));
            }
            if n >= count {
                return Err(Error::config(
                    "device",
                    format!(
                        "\"cuda:{n}\": this machine has {count} GPU(s), cuda:0 to cuda:{}",
                        count.saturating_sub(1)
                    ),
                ));
            }
            return Ok(());
        }
        if ranks > count {
            return Err(Error::config(
                "device",
                format!("{ranks} ranks on this host but {count} GPU(s): start at most {count} (--nproc), or set device = \"cpu\""),
            ));
        }
        Ok(())
    }

    /// The device of the rank with `local_rank` on its host.
    pub fn resolve(self, local_rank: usize) -> Result<Device> {
        let Some(count) = self.gpus()? else { return Ok(Device::Cpu) };
        let ordinal = match self {
            Self::Cuda(Some(n)) => n,
            // A launcher that gives each rank its own GPU (srun's per-task binding) leaves one
            // visible: it is the rank's, whatever its local rank.
            _ if count == 1 && one_visible_device() => 0,
            _ => local_rank,
        };
        if ordinal >= count {
            let who = match self {
                Self::Cuda(Some(_)) => format!("\"{self}\" names GPU {ordinal}"),
                _ => format!("local rank {local_rank} wants GPU {ordinal}"),
            };
            return Err(Error::config(
                "device",
                format!("{who}, but this process sees {count} GPU(s): start at most {count} ranks per host"),
            ));
        }
        new_cuda(ordinal)
    }
}

/// Whether `CUDA_VISIBLE_DEVICES` names exactly one GPU.
fn one_visible_device() -> bool {
    std::env::var("CUDA_VISIBLE_DEVICES").is_ok_and(|v| v.split(',').filter(|s| !s.trim().is_empty()).count() == 1)
}

/// GPU `ordinal`, started once per process: every later call returns the same device, so that the
/// model, the batches and a communicator all run on one stream, in order.
#[cfg(feature = "cuda")]
fn new_cuda(ordinal: usize) -> Result<Device> {
    use std::collections::HashMap;
    use std::sync::{Mutex, OnceLock};
    static STARTED: OnceLock<Mutex<HashMap<usize, Device>>> = OnceLock::new();
    let mut started = STARTED.get_or_init(Default::default).lock().unwrap_or_else(|e| e.into_inner());
    if let Some(device) = started.get(&ordinal) {
        return Ok(device.clone());
    }
    let device =
        Device::new_cuda(ordinal).map_err(|e| Error::config("device", format!("cannot start GPU {ordinal}: {e}")))?;
    started.insert(ordinal, device.clone());
    Ok(device)
}

#[cfg(not(feature = "cuda"))]
fn new_cuda(_ordinal: usize) -> Result<Device> {
    unreachable!("gpu_unavailable() is always Some without the cuda feature")
}

/// `cpu`, or `cuda:N`.
pub fn name(device: &Device) -> String {
    match device.location() {
        candle_core::DeviceLocation::Cpu => "cpu".into(),
        candle_core::DeviceLocation::Cuda { gpu_id } => format!("cuda:{gpu_id}"),
        candle_core::DeviceLocation::Metal { gpu_id } => format!("metal:{gpu_id}"),
    }
}

/// The GPU's name (`NVIDIA H200`) of a CUDA device; None for others.
pub fn gpu_name(device: &Device) -> Option<String> {
    #[cfg(feature = "cuda")]
    if let candle_core::DeviceLocation::Cuda { gpu_id } = device.location() {
        return cuda::name(gpu_id);
    }
    let _ = device;
    None
}

/// Bytes of device memory in use on a CUDA device now (by every process on it); None for others.
pub fn gpu_memory_used(device: &Device) -> Option<u64> {
    #[cfg(feature = "cuda")]
    if let Device::Cuda(d) = device {
        let (free, total) = d.cuda_stream().context().mem_get_info().ok()?;
        return Some((total - free) as u64);
    }
    let _ = device;
    None
}

/// Bytes of device memory free on a CUDA device now; None for others.
pub fn gpu_memory_free(device: &Device) -> Option<u64> {
    #[cfg(feature = "cuda")]
    if let Device::Cuda(d) = device {
        let (free, _) = d.cuda_stream().context().mem_get_info().ok()?;
        return Some(free as u64);
    }
    let _ = device;
    None
}

/// `(key, value)` lines for `accel env`: the GPUs, driver, CUDA and NCCL versions, or why there
/// are none.
pub fn report() -> Vec<(String, String)> {
    #[cfg(feature = "cuda")]
    {
        cuda::report()
    }
    #[cfg(not(feature = "cuda"))]
    {
        vec![
            ("cuda".into(), "not compiled in (the GPU build adds the `cuda` feature: scripts/build_cuda.sh)".into()),
            ("nccl".into(), "not compiled in (the GPU build adds the `nccl` feature)".into()),
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn specs_parse_and_print_back() {
        for s in ["auto", "cpu", "cuda", "cuda:0", "cuda:3"] {
            let spec: DeviceSpec = s.parse().unwrap();
            assert_eq!(spec.to_string(), s);
        }
        assert_eq!("gpu".parse::<DeviceSpec>().unwrap(), DeviceSpec::Cuda(None));
        let err = "cuda:x".parse::<DeviceSpec>().unwrap_err();
        assert!(err.contains("\"cuda:x\"") && err.contains("cuda:N"), "{err}");
        assert!("tpu".parse::<DeviceSpec>().is_err());
    }

    #[test]
    fn cpu_and_auto_resolve_to_the_cpu_without_gpus() {
        assert!(DeviceSpec::Cpu.resolve(3).unwrap().is_cpu());
        DeviceSpec::Cpu.check_host(64).unwrap();
        if gpu_unavailable().is_some() {
            assert!(DeviceSpec::Auto.resolve(1).unwrap().is_cpu());
            DeviceSpec::Auto.check_host(4).unwrap();
        }
    }

    #[test]
    fn cuda_without_a_gpu_is_an_error_naming_the_key_and_why() {
        let Some(why) = gpu_unavailable() else {
            eprintln!("skipped: this machine has a GPU");
            return;
        };
        let err = DeviceSpec::Cuda(None).resolve(0).unwrap_err().to_string();
        assert!(err.contains("device") && err.contains(&why), "{err}");
        let err = DeviceSpec::Cuda(Some(1)).check_host(1).unwrap_err().to_string();
        assert!(err.contains("\"cuda:1\" needs a GPU"), "{err}");
    }
}
