//! How the CPU twin reduces a channel: per-block two-pass moments (a block stays in cache),
//! merged by Chan's formula in a balanced tree, with sums kept in vectorizable lanes.

use super::BatchNormShape;

/// Values of one channel summed before a block is merged into the running total: small enough
/// that plain f32 sums stay accurate, large enough to amortize the merge.
pub(super) const BLOCK_VALUES: usize = 256;

/// Count, mean and sum of squared deviations, relative to the channel's shift.
#[derive(Clone, Copy, Default)]
pub(super) struct Moments {
    pub(super) n: f32,
    pub(super) mean: f32,
    pub(super) m2: f32,
}

impl Moments {
    /// Chan et al.'s merge of two disjoint sets.
    pub(super) fn merge(self, other: Moments) -> Moments {
        let n = self.n + other.n;
        if n == 0.0 {
            return self;
        }
        let w = other.n / n;
        let delta = other.mean - self.mean;
        Moments {
            n,
            mean: self.mean + delta * w,
            m2: self.m2 + other.m2 + delta * delta * self.n * w,
        }
    }
}

/// Merges per-block results in a balanced binary tree as they arrive (like pairwise
/// summation), so rounding error grows with log2 of the number of blocks instead of linearly.
pub(super) struct Cascade<T> {
    levels: Vec<Option<Vec<T>>>,
}

impl<T: Copy> Cascade<T> {
    pub(super) fn new() -> Self {
        Self { levels: Vec::new() }
    }

    pub(super) fn push(&mut self, mut block: Vec<T>, merge: impl Fn(T, T) -> T) {
        for level in self.levels.iter_mut() {
            match level.take() {
                None => {
                    *level = Some(block);
                    return;
                }
                Some(earlier) => {
                    for (b, e) in block.iter_mut().zip(earlier) {
                        *b = merge(e, *b);
                    }
                }
            }
        }
        self.levels.push(Some(block));
    }

    /// The merge of everything pushed; `empty` if nothing was.
    pub(super) fn total(self, empty: Vec<T>, merge: impl Fn(T, T) -> T) -> Vec<T> {
        self.levels.into_iter().flatten().fold(empty, |acc, level| {
            acc.into_iter()
                .zip(level)
                .map(|(a, l)| merge(l, a))
                .collect()
        })
    }
}

/// Σ term(values at i) over the equal-length `inputs`, kept in 8 interleaved partial sums so the
/// loop vectorizes (a single f32 accumulator is a serial chain) and combined pairwise.
pub(super) fn lane_sum<const M: usize>(inputs: [&[f32]; M], term: impl Fn([f32; M]) -> f32) -> f32 {
    let len = inputs.iter().map(|input| input.len()).min().unwrap_or(0);
    let whole = len / 8 * 8;
    let mut lanes = [0.0f32; 8];
    for base in (0..whole).step_by(8) {
        // Slices of exactly 8, so the lane indices below need no bounds checks.
        let blocks = inputs.map(|input| &input[base..base + 8]);
        for (lane, total) in lanes.iter_mut().enumerate() {
            *total += term(blocks.map(|block| block[lane]));
        }
    }
    let tail: f32 = (whole..len)
        .map(|index| term(inputs.map(|input| input[index])))
        .sum();
    ((lanes[0] + lanes[4]) + (lanes[1] + lanes[5]))
        + ((lanes[2] + lanes[6]) + (lanes[3] + lanes[7]))
        + tail
}

/// Rows of x processed per block, so that each channel contributes about BLOCK_VALUES values.
pub(super) fn block_rows(shape: BatchNormShape) -> usize {
    (BLOCK_VALUES / shape.s).max(1)
}

/// Calls `f(channel, values)` for each channel's contiguous run of S values in `rows`.
fn for_each_run(
    x: &[f32],
    shape: BatchNormShape,
    rows: std::ops::Range<usize>,
    mut f: impl FnMut(usize, &[f32]),
) {
    let row_len = shape.c * shape.s;
    for row in x[rows.start * row_len..rows.end * row_len].chunks_exact(row_len) {
        for (channel, run) in row.chunks_exact(shape.s).enumerate() {
            f(channel, run);
        }
    }
}

/// Moments of each channel over `rows` of an (N, C) tensor: two passes over the block (it stays
/// in cache), each a loop over channels that vectorizes.
pub(super) fn block_moments_2d(
    x: &[f32],
    c: usize,
    rows: std::ops::Range<usize>,
    shift: &[f32],
) -> Vec<Moments> {
    let block = &x[rows.start * c..rows.end * c];
    let count = rows.len() as f32;
    let mut sum = vec![0.0f32; c];
    for row in block.chunks_exact(c) {
        for ((total, &v), &k) in sum.iter_mut().zip(row).zip(shift) {
            *total += v - k;
        }
    }
    let mean: Vec<f32> = sum.iter().map(|&total| total / count).collect();
    let mut m2 = vec![0.0f32; c];
    for row in block.chunks_exact(c) {
        for (((total, &v), &k), &mean) in m2.iter_mut().zip(row).zip(shift).zip(&mean) {
            *total += ((v - k) - mean).powi(2);
        }
    }
    mean.into_iter()
        .zip(m2)
        .map(|(mean, m2)| Moments { n: count, mean, m2 })
        .collect()
}

/// Moments of each channel over `rows` of an (N, C, S) tensor: each run of S values gets two
/// passes while it sits in L1 and is merged into its channel's, so x is read from memory once.
pub(super) fn block_moments_runs(
    x: &[f32],
    shape: BatchNormShape,
    rows: std::ops::Range<usize>,
    shift: &[f32],
) -> Vec<Moments> {
    let mut block = vec![Moments::default(); shape.c];
    for_each_run(x, shape, rows, |channel, run| {
        let k = shift[channel];
        let mean = lane_sum([run], |[v]| v - k) / run.len() as f32;
        let m2 = lane_sum([run], |[v]| ((v - k) - mean).powi(2));
        let n = run.len() as f32;
        block[channel] = block[channel].merge(Moments { n, mean, m2 });
    });
    block
}
