//! RMSNorm: `weight * x / sqrt(mean(x²) + eps)`, computed in f32.

use burn::tensor::backend::Backend;
use burn::tensor::Tensor;

/// Root-mean-square normalisation over the last dimension.
pub fn rms_norm<B: Backend>(x: Tensor<B, 3>, weight: &Tensor<B, 1>, eps: f64) -> Tensor<B, 3> {
    let mean_square = x.clone().powi_scalar(2).mean_dim(2);
    x * mean_square.add_scalar(eps).sqrt().recip() * weight.clone().unsqueeze::<3>()
}
