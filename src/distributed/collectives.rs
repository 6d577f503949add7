//! Collectives built once on the backends' equal-sized primitives: sums and gathers of unequal
//! lengths, broadcasting weights and files from rank 0, and the check that every rank holds the
//! same weights.

use std::path::{Path, PathBuf};

use candle_core::Tensor;

use super::buckets::{append_f32, buckets};
use super::ProcessGroup;
use crate::model::Params;
use crate::{Error, Result};

/// Runs `f` on rank 0 first and on the other ranks once it is done (Accelerate's
/// `main_process_first`): for work that fills a cache the others then read. Rank 0 reaches the
/// barrier even when `f` fails, so no rank waits for it.
pub fn main_process_first<T, E: From<Error>>(
    pg: &dyn ProcessGroup,
    f: impl FnOnce() -> std::result::Result<T, E>,
) -> std::result::Result<T, E> {
    if !pg.is_main() {
        pg.barrier()?;
    }
    let out = f();
    if pg.is_main() {
        pg.barrier()?;
    }
    out
}

/// The element-wise sum of `values` over all ranks (same length everywhere).
pub fn sum_f64(pg: &dyn ProcessGroup, values: &[f64]) -> Result<Vec<f64>> {
    let mut out = vec![0.0; values.len()];
    pg.all_reduce_sum_f64(values, &mut out)?;
    Ok(out)
}

/// One `u64` from every rank, in rank order.
pub fn all_gather_u64(pg: &dyn ProcessGroup, value: u64) -> Result<Vec<u64>> {
    let mut out = vec![0u64; pg.world_size()];
    pg.all_gather_bytes(bytemuck::bytes_of(&value), bytemuck::cast_slice_mut(&mut out))?;
    Ok(out)
}

/// Every rank's `values` (lengths may differ), concatenated in rank order: the lengths first, then
/// the values padded to the longest.
pub fn all_gather_f64(pg: &dyn ProcessGroup, values: &[f64]) -> Result<Vec<f64>> {
    if pg.world_size() == 1 {
        return Ok(values.to_vec());
    }
    let lengths = all_gather_u64(pg, values.len() as u64)?;
    let longest = lengths.iter().copied().max().unwrap_or(0) as usize;
    let mut padded = values.to_vec();
    padded.resize(longest, 0.0);
    let mut all = vec![0f64; longest * pg.world_size()];
    pg.all_gather_bytes(bytemuck::cast_slice(&padded), bytemuck::cast_slice_mut(&mut all))?;
    let mut out = Vec::with_capacity(lengths.iter().sum::<u64>() as usize);
    for (part, &n) in all.chunks_exact(longest.max(1)).zip(&lengths) {
        out.extend_from_slice(&part[..n as usize]);
    }
    Ok(out)
}

/// Rank `root`'s `data` on every rank (its length travels first).
pub fn broadcast_vec(pg: &dyn ProcessGroup, data: &mut Vec<u8>, root: usize) -> Result<()> {
    if pg.world_size() == 1 {
        return Ok(());
    }
    let mut len = (data.len() as u64).to_le_bytes();
    pg.broadcast_bytes(&mut len, root)?;
    data.resize(u64::from_le_bytes(len) as usize, 0);
    pg.broadcast_bytes(data, root)
}

/// Overwrites every parameter with rank 0's value, in buckets of about `bucket_bytes`, so that
/// ranks that loaded or initialised differently start equal (as DDP does at construction).
pub fn broadcast_params(pg: &dyn ProcessGroup, params: &Params, bucket_bytes: usize) -> Result<()> {
    if pg.world_size() == 1 {
        return Ok(());
    }
    let vars: Vec<_> = params.iter().map(|(_, v)| v.clone()).collect();
    for bucket in buckets(vars.iter().map(|v| v.elem_count()), bucket_bytes) {
        let mut flat = Vec::with_capacity(bucket.clone().map(|i| vars[i].elem_count()).sum());
        for i in bucket.clone() {
            append_f32(&mut flat, vars[i].as_tensor())?;
        }
        pg.broadcast_bytes(bytemuck::cast_slice_mut(&mut flat), 0)?;
        let mut offset = 0;
        for i in bucket {
            let var = &vars[i];
            let n = var.elem_count();
            var.set(&Tensor::from_slice(&flat[offset..offset + n], var.shape(), var.device())?)?;
            offset += n;
        }
    }
    params.mark_changed();
    Ok(())
}

/// A hash of every parameter's bits, in name order.
pub fn weights_checksum(params: &Params) -> Result<u64> {
    let mut hasher = xxhash_rust::xxh3::Xxh3::new();
    let mut scratch = Vec::new();
    for (name, var) in params.iter() {
        scratch.clear();
        append_f32(&mut scratch, var.as_tensor())?;
        hasher.update(name.as_bytes());
        hasher.update(bytemuck::cast_slice(&scratch));
    }
    Ok(hasher.digest())
}

/// Errors (on every rank) when some rank's weights differ from rank 0's, naming the step and ranks.
pub fn check_weights_in_sync(pg: &dyn ProcessGroup, params: &Params, step: usize) -> Result<()> {
    if pg.world_size() == 1 {
        return Ok(());
    }
    let sums = all_gather_u64(pg, weights_checksum(params)?)?;
    let differing: Vec<usize> = (1..sums.len()).filter(|&r| sums[r] != sums[0]).collect();
    if differing.is_empty() {
        return Ok(());
    }
    Err(Error::dist(
        pg.backend(),
        "check_weights",
        pg.rank(),
        format!("at step {step} the weights of rank(s) {differing:?} differ from rank 0's (checksums {sums:016x?})"),
    ))
}

/// Makes rank 0's files `names` under `dir` readable on every rank without a shared filesystem:
/// rank 0 reads them and returns `dir`; the others receive them into a private temporary folder,
/// which they return (kept alive by the returned guard). A file that rank 0 lacks is an error on
/// every rank.
pub fn share_files(pg: &dyn ProcessGroup, dir: &Path, names: &[&str]) -> Result<(PathBuf, Option<tempfile::TempDir>)> {
    if pg.world_size() == 1 {
        return Ok((dir.to_path_buf(), None));
    }
    let tmp = if pg.is_main() {
        None
    } else {
        Some(
            tempfile::Builder::new()
                .prefix("accel-shared-")
                .tempdir()
                .map_err(|e| Error::io(std::env::temp_dir(), e))?,
        )
    };
    for name in names {
        let path = dir.join(name);
        // A leading status byte: 1 = the file follows, 0 = rank 0 could not read it (the message follows).
        let mut payload = Vec::new();
        if pg.is_main() {
            match std::fs::read(&path) {
                Ok(bytes) => {
                    payload.push(1);
                    payload.extend(bytes);
                }
                Err(e) => {
                    payload.push(0);
                    payload.extend(e.to_string().into_bytes());
                }
            }
        }
        broadcast_vec(pg, &mut payload, 0)?;
        if payload.first() != Some(&1) {
            let message = String::from_utf8_lossy(payload.get(1..).unwrap_or_default()).into_owned();
            return Err(Error::io(&path, std::io::Error::other(format!("on rank 0: {message}"))));
        }
        if let Some(tmp) = &tmp {
            let local = tmp.path().join(name);
            std::fs::write(&local, &payload[1..]).map_err(|e| Error::io(&local, e))?;
        }
    }
    let local_dir = tmp.as_ref().map(|t| t.path().to_path_buf()).unwrap_or_else(|| dir.to_path_buf());
    Ok((local_dir, tmp))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::distributed::ThreadGroup;
    use candle_core::{Device, Var};

    fn params(values: &[f32]) -> Params {
        let a = Var::from_slice(&values[..2], 2, &Device::Cpu).unwrap();
        let b = Var::from_slice(&values[2..], (1, values.len() - 2), &Device::Cpu).unwrap();
        Params::new(vec![("a".into(), a), ("b".into(), b)]).unwrap()
    }

    #[test]
    fn the_main_process_goes_first_even_when_it_fails() {
        let order = std::sync::atomic::AtomicUsize::new(0);
        let out = ThreadGroup::run(3, |pg| {
            main_process_first(pg, || {
                let at = order.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                if pg.is_main() {
                    std::thread::sleep(std::time::Duration::from_millis(50));
                    return Err(Error::Msg("rank 0 failed".into()));
                }
                Ok(at)
            })
        });
        assert!(out[0].is_err(), "rank 0's error comes back");
        assert!(out[1..].iter().all(|r| *r.as_ref().unwrap() > 0), "the others ran after rank 0");
    }

    #[test]
    fn unequal_gathers_keep_rank_order() {
        let out = ThreadGroup::run(3, |pg| {
            let mine: Vec<f64> = (0..pg.rank()).map(|i| (10 * pg.rank() + i) as f64).collect();
            all_gather_f64(pg, &mine).unwrap()
        });
        for gathered in out {
            assert_eq!(gathered, [10.0, 20.0, 21.0]);
        }
    }

    #[test]
    fn broadcast_makes_weights_equal_and_the_check_sees_divergence() {
        let out = ThreadGroup::run(3, |pg| {
            let r = pg.rank() as f32;
            let p = params(&[r, r + 1.0, r + 2.0, r + 3.0, r + 4.0]);
            let before = check_weights_in_sync(pg, &p, 5).unwrap_err().to_string();
            broadcast_params(pg, &p, 8).unwrap();
            check_weights_in_sync(pg, &p, 6).unwrap();
            (before, p.get("b").unwrap().to_vec2::<f32>().unwrap())
        });
        for (before, b) in out {
            assert!(before.contains("step 5") && before.contains("[1, 2]"), "{before}");
            assert_eq!(b, [[2.0, 3.0, 4.0]]);
        }
    }

    #[test]
    fn files_reach_every_rank_and_a_missing_one_fails_everywhere() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("x.json"), b"{\"step\": 3}").unwrap();
        let root = dir.path().to_path_buf();
        let out = ThreadGroup::run(2, |pg| {
            let (local, _guard) = share_files(pg, &root, &["x.json"]).unwrap();
            let text = std::fs::read_to_string(local.join("x.json")).unwrap();
            let missing = share_files(pg, &root, &["nope.json"]).unwrap_err().to_string();
            (text, missing)
        });
        for (text, missing) in out {
            assert_eq!(text, "{\"step\": 3}");
            assert!(missing.contains("nope.json") && missing.contains("rank 0"), "{missing}");
        }
    }
}
