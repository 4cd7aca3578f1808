//! Row lengths of a weight matrix (for a normalised LM head). RMSNorm
//! itself is a backend op (`ComputeBackend::rms_norm`).

use airllm_core::{ComputeBackend, DeviceTensor, Error, Result};
use burn::tensor::backend::Backend;

/// The Euclidean length of each row of matrix `w` (`[out]` values).
pub fn row_norms<B: Backend>(
    backend: &dyn ComputeBackend<B>,
    w: &DeviceTensor<B>,
) -> Result<Vec<f32>> {
    match w {
        DeviceTensor::Matrix(_) | DeviceTensor::Encoded(_) => {
            let m = backend.expand(w)?;
            let rows = m.dims()[0];
            m.powi_scalar(2)
                .sum_dim(1)
                .sqrt()
                .reshape([rows])
                .into_data()
                .convert::<f32>()
                .into_vec()
                .map_err(|e| Error::Backend(format!("reading row norms: {e:?}")))
        }
        DeviceTensor::Host(h) => {
            let [rows, columns] = h.shape[..] else {
                return Err(Error::Backend(format!("`{}` is not a matrix", h.name)));
            };
            let mut row = vec![0.0; columns];
            (0..rows)
                .map(|r| {
                    h.decode_range(r * columns, &mut row)?;
                    Ok(row.iter().map(|v| v * v).sum::<f32>().sqrt())
                })
                .collect()
        }
        DeviceTensor::Vector(_) => Err(Error::Backend("row norms need a matrix".into())),
    }
}
