//! Elementwise activations on the cpu, in one parallel pass (burn's
//! `silu(gate) * up` is four serial ops, each writing a new tensor).

use rayon::prelude::*;

use super::math::exp;

/// Values below which one thread computes them all.
const PARALLEL_VALUES: usize = 16 * 1024;

/// Values one parallel task takes.
const TASK_VALUES: usize = 4 * 1024;

/// `gate = silu(gate) · up = gate · up / (1 + e^−gate)`, value by value.
pub fn gated_silu(gate: &mut [f32], up: &[f32]) {
    assert_eq!(gate.len(), up.len());
    let activate = |(gate, up): (&mut [f32], &[f32])| {
        for (g, u) in gate.iter_mut().zip(up) {
            *g = *g * *u / (1.0 + exp(-*g));
        }
    };
    if gate.len() < PARALLEL_VALUES {
        activate((gate, up));
    } else {
        gate.par_chunks_mut(TASK_VALUES)
            .zip(up.par_chunks(TASK_VALUES))
            .for_each(activate);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_silu_times_up_in_f64() {
        for count in [5, 40_000] {
            let mut gate: Vec<f32> = (0..count).map(|i| (i % 97) as f32 / 8.0 - 6.0).collect();
            let up: Vec<f32> = (0..count).map(|i| (i % 13) as f32 / 4.0 - 1.5).collect();
            let want: Vec<f64> = gate
                .iter()
                .zip(&up)
                .map(|(&g, &u)| g as f64 / (1.0 + (-g as f64).exp()) * u as f64)
                .collect();
            gated_silu(&mut gate, &up);
            for (got, want) in gate.iter().zip(&want) {
                assert!(
                    (*got as f64 - want).abs() <= 1e-6 * want.abs().max(1.0),
                    "{got} vs {want}"
                );
            }
        }
    }
}
