//! Attention biases built from a row's positions: which keys each query
//! sees (causal, optionally within a sliding window) and ALiBi's linear
//! distance penalty. Each row of a pass attends over its own cache, so each
//! gets its own bias.

use airllm_core::RowSpan;
use burn::tensor::backend::Backend;
use burn::tensor::{Tensor, TensorData};

/// Score offset of a hidden key (large and finite, so no row is all `-inf`).
const MASKED: f32 = -1.0e30;

/// Whether key position `key` is visible from query position `query`: not in
/// the future and, with a window `w`, within `query - w < key`.
pub fn visible(query: usize, key: usize, window: Option<usize>) -> bool {
    key <= query && window.is_none_or(|w| query - key < w)
}

/// `[1, 1, new, total]` values `value(query, key)` for every new query
/// position of `row` and every key position it attends over.
fn per_pair<B: Backend>(
    row: &RowSpan,
    device: &B::Device,
    value: impl Fn(usize, usize) -> f32,
) -> Tensor<B, 4> {
    let total = row.total();
    let out: Vec<f32> = (row.cached..total)
        .flat_map(|query| (0..total).map(move |key| (query, key)))
        .map(|(query, key)| value(query, key))
        .collect();
    Tensor::from_data(TensorData::new(out, [1, 1, row.new, total]), device)
}

/// The additive mask `[1, 1, new, total]` of `row`: 0 where a key is
/// visible, a large negative number elsewhere.
pub fn causal_mask<B: Backend>(
    row: &RowSpan,
    window: Option<usize>,
    device: &B::Device,
) -> Tensor<B, 4> {
    per_pair(row, device, |q, k| match visible(q, k, window) {
        true => 0.0,
        false => MASKED,
    })
}

/// Signed distances `key - query` `[1, 1, new, total]` of `row`, which
/// ALiBi scales per head.
pub fn key_minus_query<B: Backend>(row: &RowSpan, device: &B::Device) -> Tensor<B, 4> {
    per_pair(row, device, |q, k| k as f32 - q as f32)
}

/// ALiBi slopes for `heads` heads: for a power of two `n`, `(2^(-8/n))^(i+1)`;
/// otherwise the slopes of the largest power of two `p < n`, then every other
/// slope of `2p` heads, the first `n - p` of them.
pub fn alibi_slopes(heads: usize) -> Vec<f32> {
    fn power_of_two(n: usize) -> Vec<f64> {
        let start = 2f64.powf(-8.0 / n as f64);
        (1..=n).map(|i| start.powi(i as i32)).collect()
    }
    let p = if heads == 0 { 0 } else { 1 << heads.ilog2() };
    let mut slopes = power_of_two(p);
    if p < heads {
        slopes.extend(power_of_two(2 * p).into_iter().step_by(2).take(heads - p));
    }
    slopes.into_iter().map(|s| s as f32).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn windows_hide_keys_at_or_beyond_their_width() {
        assert!(visible(5, 5, None) && visible(5, 0, None) && !visible(5, 6, None));
        assert!(visible(5, 3, Some(3)) && !visible(5, 2, Some(3)));
    }

    #[test]
    fn alibi_slopes_follow_the_power_of_two_rule() {
        let eight = alibi_slopes(8);
        assert_eq!(eight[0], 0.5);
        assert_eq!(eight[7], 1.0 / 256.0);
        // 12 heads: the 8 slopes of 8, then slopes 1, 3, 5, 7 of 16.
        let twelve = alibi_slopes(12);
        let sixteen = alibi_slopes(16);
        assert_eq!(&twelve[..8], &eight[..]);
        assert_eq!(
            &twelve[8..],
            &[sixteen[0], sixteen[2], sixteen[4], sixteen[6]]
        );
    }
}
