//! One product precision for every rank: each rank measures on its own CPU whether bf16 products
//! pay (`kernels::cpu::bf16_calibration`), and ranks on different machines, or on one noisy
//! machine, may answer differently. DDP's ranks must compute the same sums, so when bf16 pays on
//! some ranks only, every rank keeps f32 products and says why.

use crate::distributed::ProcessGroup;
use crate::kernels::{Autocast, MixedPrecision};
use crate::Result;

/// `autocast` as every rank agrees to run it.
pub(crate) fn same_products_on_every_rank(pg: &dyn ProcessGroup, autocast: Autocast) -> Result<Autocast> {
    let world = pg.world_size();
    if world == 1 || autocast.precision() != MixedPrecision::Bf16 {
        return Ok(autocast);
    }
    let mut paying = [0f64];
    let bf16 = autocast.products() == MixedPrecision::Bf16;
    pg.all_reduce_sum_f64(&[f64::from(u8::from(bf16))], &mut paying)?;
    Ok(match disagreement(paying[0] as usize, world) {
        Some(why) if bf16 => autocast.keep_f32(why),
        _ => autocast,
    })
}

/// Why the ranks keep f32 when `paying` of `world` ranks measured bf16 to pay; none when they agree.
fn disagreement(paying: usize, world: usize) -> Option<String> {
    (paying != 0 && paying != world).then(|| {
        format!(
            "bf16 products measured to pay on {paying} of {world} ranks only, and every rank must run the same sums"
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranks_keep_bf16_only_when_all_agree() {
        assert_eq!(disagreement(0, 4), None);
        assert_eq!(disagreement(4, 4), None);
        let why = disagreement(3, 4).unwrap();
        assert!(why.contains("3 of 4 ranks"), "{why}");
    }
}
