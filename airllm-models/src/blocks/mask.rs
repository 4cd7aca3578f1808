//! Attention biases built from a pass's positions: which keys each query
//! sees (causal, optionally within a sliding window) and ALiBi's linear
//! distance penalty. Padding keys are never seen; a padding query sees only
//! itself, so no softmax row is empty.

use airllm_core::PassInfo;
use burn::tensor::backend::Backend;
use burn::tensor::{Tensor, TensorData};

/// Score offset of a hidden key (large and finite, so no row is all `-inf`).
const MASKED: f32 = -1.0e30;

/// Whether key position `key` is visible from query position `query`: not in
/// the future and, with a window `w`, within `query - w < key`.
pub fn visible(query: usize, key: usize, window: Option<usize>) -> bool {
    key <= query && window.is_none_or(|w| query - key < w)
}

/// `[batch, 1, seq, total]` values for every (query, key) column pair of the
/// pass: `value(query, key)` where both have positions, else padding's rule.
fn per_pair<B: Backend>(
    pass: &PassInfo,
    device: &B::Device,
    value: impl Fn(usize, usize) -> f32,
    padding: impl Fn(bool) -> f32,
) -> Tensor<B, 4> {
    let (batch, seq, total) = (pass.batch(), pass.seq(), pass.total());
    let mut out = Vec::with_capacity(batch * seq * total);
    for row in &pass.columns {
        for query_col in pass.start..total {
            for (key_col, key) in row.iter().enumerate() {
                out.push(match (row[query_col], key) {
                    (Some(q), Some(k)) => value(q, *k),
                    _ => padding(query_col == key_col && row[query_col].is_none()),
                });
            }
        }
    }
    Tensor::from_data(TensorData::new(out, [batch, 1, seq, total]), device)
}

/// The additive mask `[batch, 1, seq, total]`: 0 where a key is visible,
/// a large negative number elsewhere.
pub fn causal_mask<B: Backend>(
    pass: &PassInfo,
    window: Option<usize>,
    device: &B::Device,
) -> Tensor<B, 4> {
    per_pair(
        pass,
        device,
        |q, k| if visible(q, k, window) { 0.0 } else { MASKED },
        |own_column| if own_column { 0.0 } else { MASKED },
    )
}

/// Signed distances `key - query` `[batch, 1, seq, total]` (0 where either is
/// padding), which ALiBi scales per head.
pub fn key_minus_query<B: Backend>(pass: &PassInfo, device: &B::Device) -> Tensor<B, 4> {
    per_pair(pass, device, |q, k| k as f32 - q as f32, |_| 0.0)
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
