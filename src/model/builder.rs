//! ParamBuilder: creates each named parameter once, from a checkpoint when it has the key, else from a seeded initializer.
//!
//! Modules ask for `"weight"`/`"bias"` under a path prefix (`pb.pp("attention").pp("self")`), so the
//! names they create are transformers' checkpoint keys. Fresh values follow transformers'
//! `_init_weights` for BERT: N(0, initializer_range) for linear and embedding weights (with the
//! padding row zeroed), zeros for biases, ones for LayerNorm weights. Each parameter draws from its
//! own ChaCha8 stream chosen by hashing its name, so its values depend only on the seed and the name,
//! not on which other parameters happened to be in the checkpoint.

use std::cell::RefCell;
use std::rc::Rc;

use candle_core::{Device, Shape, Tensor, Var};
use rand::{RngCore, SeedableRng};
use rand_chacha::ChaCha8Rng;

use super::params::Params;
use super::weights::WeightFiles;
use crate::Result;

/// How a parameter is initialized when the checkpoint does not provide it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum Init {
    /// N(0, initializer_range).
    Normal,
    /// N(0, initializer_range) with row `padding_idx` set to zero, as `nn.Embedding(padding_idx=..)`.
    Embedding {
        padding_idx: Option<u32>,
    },
    /// N(0, std) redrawn outside `cutoff` standard deviations (`trunc_normal_`, ModernBERT's).
    TruncNormal {
        std: f64,
        cutoff: f64,
    },
    /// A [positions, width] table of sines and cosines (DistilBERT's `sinusoidal_pos_embds`).
    Sinusoidal,
    Zeros,
    Ones,
}

struct Shared<'a> {
    checkpoint: Option<&'a WeightFiles>,
    device: Device,
    seed: u64,
    std: f64,
    created: Vec<(String, Var)>,
    missing: Vec<String>,
    /// Only record names and shapes ([`ParamBuilder::plan`]).
    planning: bool,
    planned: Vec<(String, Vec<usize>)>,
    /// Every name asked for, in order.
    names: Vec<String>,
}

/// A path-prefixed view over one model construction.
pub(crate) struct ParamBuilder<'a> {
    prefix: String,
    shared: Rc<RefCell<Shared<'a>>>,
}

impl<'a> ParamBuilder<'a> {
    pub fn new(checkpoint: Option<&'a WeightFiles>, seed: u64, std: f64, device: &Device) -> Self {
        let shared = Shared {
            checkpoint,
            device: device.clone(),
            seed,
            std,
            created: Vec::new(),
            missing: Vec::new(),
            planning: false,
            planned: Vec::new(),
            names: Vec::new(),
        };
        Self { prefix: String::new(), shared: Rc::new(RefCell::new(shared)) }
    }

    /// A builder that allocates nothing: each parameter is a broadcast view of one zero with the
    /// parameter's shape, and [`ParamBuilder::planned`] lists the names and shapes asked for. A
    /// model built this way describes itself (parameter counts) but cannot compute.
    pub fn plan() -> Self {
        let builder = Self::new(None, 0, 0.0, &Device::Cpu);
        builder.shared.borrow_mut().planning = true;
        builder
    }

    /// The names and shapes asked for so far, sorted by name.
    pub fn planned(&self) -> Vec<(String, Vec<usize>)> {
        let mut planned = self.shared.borrow().planned.clone();
        planned.sort();
        planned
    }

    /// How many parameters have been asked for so far (for [`ParamBuilder::names_since`]).
    pub fn mark(&self) -> usize {
        self.shared.borrow().names.len()
    }

    /// The names asked for since `mark`, in order.
    pub fn names_since(&self, mark: usize) -> Vec<String> {
        self.shared.borrow().names[mark..].to_vec()
    }

    /// The device parameters are created on.
    pub fn device(&self) -> Device {
        self.shared.borrow().device.clone()
    }

    /// The full name `name` gets under this builder's prefix.
    pub fn name(&self, name: &str) -> String {
        if self.prefix.is_empty() {
            name.to_string()
        } else {
            format!("{}.{name}", self.prefix)
        }
    }

    /// The builder for the child module `name`.
    pub fn pp(&self, name: impl AsRef<str>) -> Self {
        let prefix = if self.prefix.is_empty() {
            name.as_ref().to_string()
        } else {
            format!("{}.{}", self.prefix, name.as_ref())
        };
        Self { prefix, shared: self.shared.clone() }
    }

    /// Creates the parameter `<prefix>.<name>` and returns the tensor the module computes with (it
    /// shares storage with the variable, so optimizer updates are seen by the module).
    pub fn get(&self, shape: impl Into<Shape>, name: &str, init: Init) -> Result<Tensor> {
        let shape = shape.into();
        let full = self.name(name);
        let mut shared = self.shared.borrow_mut();
        shared.names.push(full.clone());
        if shared.planning {
            shared.planned.push((full, shape.dims().to_vec()));
            return Ok(Tensor::zeros((), candle_core::DType::F32, &shared.device)?.broadcast_as(shape)?);
        }
        let loaded = match shared.checkpoint {
            Some(ckpt) => ckpt.load_var(&full, &shape, &shared.device)?,
            None => None,
        };
        let var = match loaded {
            Some(var) => var,
            None => {
                shared.missing.push(full.clone());
                let values = init_values(&full, &shape, init, shared.seed, shared.std);
                Var::from_vec(values, shape, &shared.device)?
            }
        };
        let tensor = var.as_tensor().clone();
        shared.created.push((full, var));
        Ok(tensor)
    }

    /// All parameters created, as a name-sorted [`Params`], and the sorted names that were not in the checkpoint.
    pub fn finish(self) -> Result<(Params, Vec<String>)> {
        let mut shared = self.shared.borrow_mut();
        let params = Params::new(std::mem::take(&mut shared.created))?;
        let mut missing = std::mem::take(&mut shared.missing);
        missing.sort();
        Ok((params, missing))
    }
}

/// Fresh values for parameter `name`. Deterministic in (seed, name) on every platform.
pub(crate) fn init_values(name: &str, shape: &Shape, init: Init, seed: u64, std: f64) -> Vec<f32> {
    let n = shape.elem_count();
    match init {
        Init::Zeros => vec![0.0; n],
        Init::Ones => vec![1.0; n],
        Init::Normal => normal_values(name, n, seed, std),
        Init::TruncNormal { std, cutoff } => {
            // Redraws beyond the cutoff from further along the name's stream, as rejection
            // sampling does: deterministic in (seed, name).
            let mut values = Vec::with_capacity(n);
            let mut round = 0u64;
            while values.len() < n {
                let draws = normal_values(&format!("{name}#{round}"), n - values.len(), seed, std);
                values.extend(draws.into_iter().filter(|v| f64::from(v.abs()) <= cutoff * std));
                round += 1;
            }
            values
        }
        Init::Sinusoidal => match shape.dims() {
            &[positions, width] => sinusoidal(positions, width),
            _ => vec![0.0; n],
        },
        Init::Embedding { padding_idx } => {
            let mut values = normal_values(name, n, seed, std);
            if let (Some(pad), [_, width]) = (padding_idx, shape.dims()) {
                let start = pad as usize * width;
                if let Some(row) = values.get_mut(start..start + width) {
                    row.fill(0.0);
                }
            }
            values
        }
    }
}

/// DistilBERT's sinusoidal table: position p, column j holds sin (even j) or cos (odd j) of
/// p / 10000^(2 (j / 2) / width), computed in f64 as numpy does.
fn sinusoidal(positions: usize, width: usize) -> Vec<f32> {
    let mut values = Vec::with_capacity(positions * width);
    for p in 0..positions {
        for j in 0..width {
            let angle = p as f64 / 10000f64.powf((2 * (j / 2)) as f64 / width as f64);
            values.push(if j % 2 == 0 { angle.sin() } else { angle.cos() } as f32);
        }
    }
    values
}

/// `n` draws from N(0, std) by the Box-Muller transform over the name's own ChaCha8 stream.
fn normal_values(name: &str, n: usize, seed: u64, std: f64) -> Vec<f32> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    rng.set_stream(fnv1a64(name));
    // 53 random bits in (0, 1]: never 0, so the logarithm is finite.
    let mut uniform = move || ((rng.next_u64() >> 11) as f64 + 1.0) * (1.0 / (1u64 << 53) as f64);
    let mut values = Vec::with_capacity(n + 1);
    while values.len() < n {
        let (u1, u2) = (uniform(), uniform());
        let radius = (-2.0 * u1.ln()).sqrt();
        let angle = std::f64::consts::TAU * u2;
        values.push((std * radius * angle.cos()) as f32);
        values.push((std * radius * angle.sin()) as f32);
    }
    values.truncate(n);
    values
}

/// FNV-1a: a fixed, platform-independent hash (std's hasher may change between Rust releases).
fn fnv1a64(text: &str) -> u64 {
    text.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normal_init_is_deterministic_per_name_and_has_the_right_spread() {
        let shape = Shape::from((200, 50));
        let a = init_values("classifier.weight", &shape, Init::Normal, 42, 0.02);
        assert_eq!(a, init_values("classifier.weight", &shape, Init::Normal, 42, 0.02));
        assert_ne!(a, init_values("bert.pooler.dense.weight", &shape, Init::Normal, 42, 0.02));
        assert_ne!(a, init_values("classifier.weight", &shape, Init::Normal, 43, 0.02));
        let n = a.len() as f64;
        let mean = a.iter().map(|&x| x as f64).sum::<f64>() / n;
        let std = (a.iter().map(|&x| (x as f64 - mean).powi(2)).sum::<f64>() / n).sqrt();
        assert!(mean.abs() < 1e-3, "mean {mean}");
        assert!((std - 0.02).abs() < 5e-4, "std {std}");
    }

    #[test]
    fn truncated_and_sinusoidal_inits() {
        let shape = Shape::from((100, 40));
        let v = init_values("w", &shape, Init::TruncNormal { std: 0.1, cutoff: 2.0 }, 3, 0.02);
        assert_eq!(v.len(), 4000);
        assert!(v.iter().all(|x| x.abs() <= 0.2) && v.iter().any(|x| x.abs() > 0.15));
        assert_eq!(v, init_values("w", &shape, Init::TruncNormal { std: 0.1, cutoff: 2.0 }, 3, 0.02));
        let s = init_values("p", &Shape::from((3, 4)), Init::Sinusoidal, 0, 0.02);
        let expected = [0., 1., 0., 1., 1f64.sin(), 1f64.cos(), 0.01f64.sin(), 0.01f64.cos()];
        for (a, b) in s.iter().zip(expected) {
            assert!((f64::from(*a) - b).abs() < 1e-7, "{s:?}");
        }
        assert!((f64::from(s[9]) - 2f64.cos()).abs() < 1e-7);
    }

    #[test]
    fn embedding_init_zeroes_the_padding_row() {
        let shape = Shape::from((4, 3));
        let v = init_values("e", &shape, Init::Embedding { padding_idx: Some(2) }, 0, 0.02);
        assert_eq!(&v[6..9], &[0.0; 3]);
        assert!(v[..6].iter().all(|&x| x != 0.0));
    }
}
