//! Attention's bf16 products on the CPU's matrix instructions directly: AMX tiles where the CPU
//! has them, AVX512-BF16 dot products where it has those.
//!
//! Attention multiplies one small matrix per (sequence, head) pair and product: 73 x 32 by 32 x 73
//! at MRPC's lengths. A library call spends more on choosing and packing than on such a product
//! (oneMKL ran them at an eighth of its rate at the layers' shapes). Here the left operand is
//! staged row-major ([`Staged`]: rows padded to a multiple of 16) and the right one packed in the
//! layout both instruction sets read ([`Packed`]: pairs of rows interleaved), both padded to whole
//! tiles with zeros, so the padding adds nothing to the sums; each 16 x 16 block of the output is
//! accumulated in f32 over steps of 32.
//!
//! Both paths take bf16 inputs and accumulate in f32, as the libraries do; they add the products
//! in a different order, so results differ from a library's in the last bits of f32, as two
//! libraries' do.

use std::sync::OnceLock;

use super::bf16::Bf16;
use super::bf16_library::{bf16_backend, Instructions, Library};
use super::simd::bf16_row_pair;
#[cfg(test)]
use super::simd::f32_to_bf16_bits;

/// Rows of a tile, and of a staged block.
pub(crate) const ROWS: usize = 16;
/// Columns of an output tile (16 f32).
const COLS: usize = 16;
/// Depth of one accumulation step (32 bf16: a tile row of 64 bytes).
const DEPTH: usize = 32;

/// The instructions the products run on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kernel {
    /// AMX-BF16 tiles (Intel Sapphire Rapids and later).
    Amx,
    /// AVX512-BF16 dot products (AMD Zen 4 and 5, Intel Cooper Lake).
    Avx512Bf16,
}

/// The kernel attention's bf16 products run on here, if any: none where the CPU has neither
/// instruction set, where Linux refuses the AMX state, or where `ACCEL_BF16_LIBRARY=emulated`
/// asks for bf16 sums on f32 instructions.
pub(crate) fn kernel() -> Option<Kernel> {
    static KERNEL: OnceLock<Option<Kernel>> = OnceLock::new();
    *KERNEL.get_or_init(|| {
        let emulated = bf16_backend().is_ok_and(|b| b.library == Library::Emulated);
        if emulated {
            return None;
        }
        native(Instructions::here())
    })
}

/// The kernel for a CPU with `instructions`.
fn native(instructions: Instructions) -> Option<Kernel> {
    #[cfg(target_arch = "x86_64")]
    {
        if instructions == Instructions::AmxBf16 && amx::permitted() {
            return Some(Kernel::Amx);
        }
        if std::arch::is_x86_feature_detected!("avx512bf16") {
            return Some(Kernel::Avx512Bf16);
        }
    }
    let _ = instructions;
    None
}

fn round_up(n: usize, to: usize) -> usize {
    n.div_ceil(to) * to
}

/// A right operand `B` (k x n), as the instructions read it: row `p` holds rows `2p` and `2p + 1`
/// of `B` interleaved (`B[2p][j]`, `B[2p + 1][j]` side by side for each column `j`), with `k`
/// padded to a multiple of 32 and `n` to a multiple of 16 by zeros.
#[derive(Default)]
pub(crate) struct Packed {
    /// A word per pair: `B[2p][j]` in its low half, `B[2p + 1][j]` in its high half.
    words: Vec<u32>,
    /// Padded depth and width.
    k: usize,
    n: usize,
}

impl Packed {
    /// Room for `k` x `n` zeros (padded); keeps the allocation.
    fn reset(&mut self, k: usize, n: usize) {
        (self.k, self.n) = (round_up(k, DEPTH), round_up(n, COLS));
        self.words.clear();
        self.words.resize(self.k / 2 * self.n, 0);
    }

    /// `B` = the `k` x `n` matrix at `src` with row stride `stride`.
    #[cfg(test)]
    pub(crate) fn pack_rows(&mut self, src: &[Bf16], stride: usize, k: usize, n: usize) {
        self.reset(k, n);
        for i in 0..k {
            let (out, shift) = (&mut self.words[i / 2 * self.n..], 16 * (i % 2));
            for (j, v) in src[i * stride..][..n].iter().enumerate() {
                out[j] |= u32::from(v.0) << shift;
            }
        }
    }

    /// `B` = the transpose of the `n` x `k` matrix at `src` with row stride `stride`.
    pub(crate) fn pack_transposed(&mut self, src: &[Bf16], stride: usize, k: usize, n: usize) {
        self.reset(k, n);
        let width = self.n;
        for j in 0..n {
            let row = &src[j * stride..][..k];
            let pairs = row.chunks_exact(2);
            let last = pairs.remainder().first().map(|v| u32::from(v.0));
            for (out, pair) in self.words[j..].iter_mut().step_by(width).zip(pairs) {
                *out = u32::from(pair[0].0) | u32::from(pair[1].0) << 16;
            }
            if let Some(v) = last {
                self.words[k / 2 * width + j] = v;
            }
        }
    }

    /// `B` = `k` rows of 16 f32 values (`src`, row after row), rounded to bf16.
    pub(crate) fn pack_rounded16(&mut self, src: &[f32], k: usize) {
        self.reset(k, COLS);
        let zeros = [0f32; COLS];
        for (p, out) in self.words.chunks_exact_mut(COLS).take(k.div_ceil(2)).enumerate() {
            let lo = &src[2 * p * COLS..][..COLS];
            let hi = if 2 * p + 1 < k { &src[(2 * p + 1) * COLS..][..COLS] } else { &zeros };
            bf16_row_pair(lo, hi, out);
        }
    }

    /// Columns of the product's output rows ([`Staged::product`] writes this many per row).
    #[cfg(test)]
    fn width(&self) -> usize {
        self.n
    }
}

/// A left operand `A` (m x k), row-major, `m` padded to a multiple of 16 and `k` to a multiple of
/// 32 with zeros.
#[derive(Default)]
pub(crate) struct Staged {
    values: Vec<u16>,
    m: usize,
    k: usize,
}

impl Staged {
    /// Room for `m` x `k` zeros (padded); keeps the allocation.
    fn reset(&mut self, m: usize, k: usize) {
        (self.m, self.k) = (round_up(m, ROWS), round_up(k, DEPTH));
        self.values.clear();
        self.values.resize(self.m * self.k, 0);
    }

    /// `A` = the `m` x `k` matrix at `src` with row stride `stride`.
    pub(crate) fn rows(&mut self, src: &[Bf16], stride: usize, m: usize, k: usize) {
        self.reset(m, k);
        for (i, out) in self.values.chunks_exact_mut(self.k).take(m).enumerate() {
            out[..k].iter_mut().zip(&src[i * stride..][..k]).for_each(|(o, v)| *o = v.0);
        }
    }

    /// `A` = the transpose of the `k` x `m` matrix at `src` with row stride `stride`.
    pub(crate) fn transposed(&mut self, src: &[Bf16], stride: usize, m: usize, k: usize) {
        self.reset(m, k);
        let width = self.k;
        for (t, row) in (0..k).map(|t| &src[t * stride..][..m]).enumerate() {
            for (i, v) in row.iter().enumerate() {
                self.values[i * width + t] = v.0;
            }
        }
    }

    /// Rows of the product's output (`m` padded to a multiple of 16).
    pub(crate) fn height(&self) -> usize {
        self.m
    }

    /// `out` (`self.height()` rows of `b.width()` f32) = this matrix times `b`, on the calling
    /// thread, inside `session`.
    pub(crate) fn product(&self, session: &Session, b: &Packed, out: &mut [f32]) {
        assert_eq!(self.k, b.k, "a staged operand of depth {} against a packed one of depth {}", self.k, b.k);
        assert!(out.len() >= self.m * b.n, "an output of {} values for {} x {}", out.len(), self.m, b.n);
        let (a, k, n, b_values) = (&self.values, self.k, b.n, bytemuck::cast_slice::<u32, u16>(&b.words));
        for (block, out) in a.chunks_exact(ROWS * k).zip(out.chunks_exact_mut(ROWS * n)) {
            #[cfg(target_arch = "x86_64")]
            match session.kernel {
                // SAFETY: a session for AMX exists only where `kernel()` found AMX and the tile
                // configuration is loaded on this thread; the asserts keep every tile inside the buffers.
                Kernel::Amx => unsafe { amx::product(block, k, b_values, n, out) },
                // SAFETY: AVX512-BF16 is there whenever a kernel was chosen (AMX CPUs have it too).
                Kernel::Avx512Bf16 => unsafe { dot::product(block, k, b_values, n, out) },
            }
            #[cfg(not(target_arch = "x86_64"))]
            unreachable!("{:?} chosen on a CPU that is not x86-64 ({} values)", session.kernel, block.len() + out.len())
        }
    }
}

/// The products of one thread's run of work: on AMX, the tile configuration loaded for it (and
/// released when it ends). Not `Send`: the configuration belongs to the thread. Sessions do not
/// nest: an inner one's end would release the outer one's tiles.
pub(crate) struct Session {
    kernel: Kernel,
    _thread: std::marker::PhantomData<*const ()>,
}

impl Session {
    pub(crate) fn start(kernel: Kernel) -> Self {
        debug_assert!(!IN_SESSION.with(|s| s.replace(true)), "a tile session inside another");
        #[cfg(target_arch = "x86_64")]
        if kernel == Kernel::Amx {
            // SAFETY: `kernel()` chose AMX only where the CPU has it and Linux permits its state.
            unsafe { amx::configure() };
        }
        Self { kernel, _thread: std::marker::PhantomData }
    }
}

thread_local! {
    /// Whether a [`Session`] is open on this thread (checked in debug builds).
    static IN_SESSION: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

impl Drop for Session {
    fn drop(&mut self) {
        IN_SESSION.with(|s| s.set(false));
        #[cfg(target_arch = "x86_64")]
        if self.kernel == Kernel::Amx {
            // SAFETY: as in `start`.
            unsafe { amx::release() };
        }
    }
}

/// AMX tiles through inline assembly: `ldtilecfg` once per [`Session`], then in each product, for
/// each group of up to four output tiles, `tileloadd` of the staged rows and the packed rows and
/// `tdpbf16ps` per step.
#[cfg(target_arch = "x86_64")]
mod amx {
    use std::arch::asm;
    use std::sync::OnceLock;

    /// Eight tiles of 16 rows x 64 bytes: tmm0 the left operand, tmm1 and tmm2 the right one,
    /// tmm4-7 the outputs.
    #[repr(C, align(64))]
    struct Config {
        palette: u8,
        start_row: u8,
        reserved: [u8; 14],
        bytes_per_row: [u16; 16],
        rows: [u8; 16],
    }

    static CONFIG: Config = Config {
        palette: 1,
        start_row: 0,
        reserved: [0; 14],
        bytes_per_row: [64, 64, 64, 0, 64, 64, 64, 64, 0, 0, 0, 0, 0, 0, 0, 0],
        rows: [16, 16, 16, 0, 16, 16, 16, 16, 0, 0, 0, 0, 0, 0, 0, 0],
    };

    /// Whether Linux lets this process use the AMX tile data (asked once, for the whole process;
    /// other systems are not asked, and get the AVX512-BF16 path).
    pub(super) fn permitted() -> bool {
        static PERMITTED: OnceLock<bool> = OnceLock::new();
        *PERMITTED.get_or_init(|| {
            #[cfg(target_os = "linux")]
            {
                const ARCH_REQ_XCOMP_PERM: libc::c_long = 0x1023;
                const XFEATURE_XTILEDATA: libc::c_long = 18;
                // SAFETY: arch_prctl with these arguments only changes which state the kernel saves.
                unsafe { libc::syscall(libc::SYS_arch_prctl, ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA) == 0 }
            }
            #[cfg(not(target_os = "linux"))]
            false
        })
    }

    /// One step of output tile `tmm{4 + J}`: the packed tile at `b` (row stride `stride` bytes)
    /// into `tmm{1 + J % 2}`, times the staged tile in tmm0.
    #[inline(always)]
    unsafe fn step<const J: usize>(b: *const u16, stride: usize) {
        asm!(
            "tileloadd tmm{t}, [{b} + {s} * 1]",
            "tdpbf16ps tmm{c}, tmm0, tmm{t}",
            b = in(reg) b,
            s = in(reg) stride,
            t = const 1 + J % 2,
            c = const 4 + J,
            options(nostack, readonly),
        );
    }

    #[inline(always)]
    unsafe fn zero<const J: usize>() {
        asm!("tilezero tmm{c}", c = const 4 + J, options(nostack, nomem));
    }

    #[inline(always)]
    unsafe fn store<const J: usize>(c: *mut f32, stride: usize) {
        asm!("tilestored [{c} + {s} * 1], tmm{t}", c = in(reg) c, s = in(reg) stride, t = const 4 + J, options(nostack));
    }

    /// Loads the tile configuration on this thread.
    ///
    /// # Safety
    /// The CPU has AMX-BF16 and the process the permission.
    pub(super) unsafe fn configure() {
        asm!("ldtilecfg [{}]", in(reg) &CONFIG, options(nostack, readonly));
    }

    /// Releases this thread's tiles.
    ///
    /// # Safety
    /// As [`configure`].
    pub(super) unsafe fn release() {
        asm!("tilerelease", options(nostack, nomem));
    }

    /// `out[16 x n] = a[16 x k] * b`, with `b` packed as [`super::Packed`] (k/2 rows of n pairs).
    ///
    /// # Safety
    /// [`configure`] ran on this thread since any other tile user; `a` holds 16 x k values, `b`
    /// k x n, `out` 16 x n; k is a multiple of 32 and n of 16.
    pub(super) unsafe fn product(a: &[u16], k: usize, b: &[u16], n: usize, out: &mut [f32]) {
        let (a_stride, b_stride, out_stride) = (k * 2, n * 4, n * 4);
        let blocks = n / super::COLS;
        let mut block = 0;
        while block < blocks {
            let count = (blocks - block).min(4);
            zero::<0>();
            zero::<1>();
            zero::<2>();
            zero::<3>();
            for s in 0..k / super::DEPTH {
                asm!(
                    "tileloadd tmm0, [{a} + {s} * 1]",
                    a = in(reg) a.as_ptr().add(s * super::DEPTH),
                    s = in(reg) a_stride,
                    options(nostack, readonly),
                );
                // Rows 16s.. of the packed operand, columns from `block` on (32 u16 per block).
                let b = b.as_ptr().add(s * 16 * n * 2 + block * 32);
                step::<0>(b, b_stride);
                if count > 1 {
                    step::<1>(b.add(32), b_stride);
                }
                if count > 2 {
                    step::<2>(b.add(64), b_stride);
                }
                if count > 3 {
                    step::<3>(b.add(96), b_stride);
                }
            }
            let c = out.as_mut_ptr().add(block * super::COLS);
            store::<0>(c, out_stride);
            if count > 1 {
                store::<1>(c.add(16), out_stride);
            }
            if count > 2 {
                store::<2>(c.add(32), out_stride);
            }
            if count > 3 {
                store::<3>(c.add(48), out_stride);
            }
            block += count;
        }
    }
}

/// AVX512-BF16: each output vector of 16 columns accumulates `vdpbf16ps` of a broadcast pair of
/// its staged row with a packed row, the 16 rows of a block side by side.
#[cfg(target_arch = "x86_64")]
mod dot {
    use std::arch::x86_64::*;

    /// As [`super::amx::product`], on AVX512-BF16.
    ///
    /// # Safety
    /// The CPU has AVX512-BF16 (and AVX512F); the sizes are as there.
    #[target_feature(enable = "avx512f,avx512bf16")]
    pub(super) unsafe fn product(a: &[u16], k: usize, b: &[u16], n: usize, out: &mut [f32]) {
        let a32 = a.as_ptr().cast::<i32>();
        for col in (0..n).step_by(super::COLS) {
            // All 16 rows at once: each packed vector loaded once, 16 accumulators.
            let mut acc = [_mm512_setzero_ps(); super::ROWS];
            for p in 0..k / 2 {
                let bv: __m512bh = std::mem::transmute(_mm512_loadu_si512(b.as_ptr().add((p * n + col) * 2).cast()));
                for (r, acc) in acc.iter_mut().enumerate() {
                    // A u16 buffer: the pair's 4 bytes need not be 4-aligned.
                    let pair = a32.add(r * k / 2 + p).read_unaligned();
                    let pair: __m512bh = std::mem::transmute(_mm512_set1_epi32(pair));
                    *acc = _mm512_dpbf16_ps(*acc, pair, bv);
                }
            }
            for (r, acc) in acc.iter().enumerate() {
                _mm512_storeu_ps(out.as_mut_ptr().add(r * n + col), *acc);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bf16s(n: usize, seed: u32) -> Vec<Bf16> {
        let mut values = vec![0f32; n];
        let mut x = seed.wrapping_mul(2_654_435_761).max(1);
        for v in &mut values {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            *v = (x % 2001) as f32 / 1000.0 - 1.0;
        }
        let mut bits = vec![0u16; n];
        f32_to_bf16_bits(&values, &mut bits);
        bits.into_iter().map(Bf16).collect()
    }

    /// The f32 product of the widened inputs (exact products, f32 sums).
    fn reference(
        a: &[Bf16],
        a_stride: usize,
        b: &[Bf16],
        b_stride: usize,
        (m, n, k): (usize, usize, usize),
    ) -> Vec<f32> {
        let mut out = vec![0f32; m * n];
        for i in 0..m {
            for j in 0..n {
                out[i * n + j] = (0..k).map(|t| a[i * a_stride + t].to_f32() * b[t * b_stride + j].to_f32()).sum();
            }
        }
        out
    }

    /// Every kernel this CPU can run.
    fn kernels() -> Vec<Kernel> {
        let mut kernels = Vec::new();
        if native(Instructions::here()) == Some(Kernel::Amx) {
            kernels.push(Kernel::Amx);
        }
        #[cfg(target_arch = "x86_64")]
        if std::arch::is_x86_feature_detected!("avx512bf16") {
            kernels.push(Kernel::Avx512Bf16);
        }
        if kernels.is_empty() {
            eprintln!("skipped: this CPU has neither AMX-BF16 nor AVX512-BF16");
        }
        kernels
    }

    /// Every shape class (partial row blocks, depths and widths off the tile sizes, more than four
    /// output tiles), every packing, every kernel: within f32 rounding of the f32 product.
    #[test]
    fn products_match_the_f32_product_of_the_same_inputs() {
        for kernel in kernels() {
            let session = Session::start(kernel);
            for (m, n, k) in [(16, 16, 32), (7, 73, 32), (40, 73, 64), (13, 32, 73), (16, 100, 130), (3, 5, 3)] {
                let (a, b) = (bf16s(m * (k + 3), (m * n + k) as u32), bf16s(k * (n + 1), (n + 7 * k) as u32));
                let expected = reference(&a, k + 3, &b, n + 1, (m, n, k));
                let mut staged = Staged::default();
                staged.rows(&a, k + 3, m, k);
                // The same A given as its transpose.
                let at: Vec<Bf16> =
                    (0..k).flat_map(|t| (0..m).map(|i| a[i * (k + 3) + t]).collect::<Vec<_>>()).collect();
                let mut staged_t = Staged::default();
                staged_t.transposed(&at, m, m, k);
                let mut packed = Packed::default();
                packed.pack_rows(&b, n + 1, k, n);
                // The same B given as its transpose.
                let bt: Vec<Bf16> =
                    (0..n).flat_map(|j| (0..k).map(|t| b[t * (n + 1) + j]).collect::<Vec<_>>()).collect();
                let mut transposed = Packed::default();
                transposed.pack_transposed(&bt, k, k, n);
                for (staged, packed) in [(&staged, &packed), (&staged_t, &transposed)] {
                    let width = packed.width();
                    let mut out = vec![f32::NAN; staged.height() * width];
                    staged.product(&session, packed, &mut out);
                    for i in 0..m {
                        for j in 0..n {
                            let (got, want) = (out[i * width + j], expected[i * n + j]);
                            assert!(
                                (got - want).abs() <= 1e-5 * (1.0 + want.abs()),
                                "{kernel:?} {m}x{n}x{k} [{i},{j}]: {got} vs {want}"
                            );
                        }
                    }
                    // Padded rows and columns are exact zeros.
                    assert!(out[m * width..].iter().all(|&x| x == 0.0), "{kernel:?}: rows past {m}");
                    assert!((0..m).all(|i| out[i * width + n..(i + 1) * width].iter().all(|&x| x == 0.0)));
                }
            }
        }
    }

    /// f32 rows of 16 packed in pairs round each value to bf16 as the bf16 copies elsewhere do, an
    /// odd last row paired with zeros.
    #[test]
    fn rounded_rows_pack_as_their_bf16_copies_would() {
        let k = 7;
        let values: Vec<f32> = (0..k * 16).map(|i| (i as f32 * 0.37).sin() * 3.0 + 1e-3).collect();
        let mut bits = vec![0u16; values.len()];
        f32_to_bf16_bits(&values, &mut bits);
        let rounded: Vec<Bf16> = bits.into_iter().map(Bf16).collect();
        let (mut from_f32, mut from_bf16) = (Packed::default(), Packed::default());
        from_f32.pack_rounded16(&values, k);
        from_bf16.pack_rows(&rounded, 16, k, 16);
        assert_eq!((from_f32.k, from_f32.n), (32, 16));
        assert!(from_f32.words == from_bf16.words);
    }
}
