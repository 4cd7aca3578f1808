//! f16 against f32, teacher-forced (see `airllm_tests::half_precision`): a
//! dense model's logits within 0.1 and the recorded tokens wherever f32 is
//! decisive; a mixture of experts' on 95% of those steps. On the
//! device under test where it computes in f16 (wgpu with SHADER_F16,
//! cuda); on the cpu, and on an adapter without SHADER_F16, on burn's flex
//! through `BurnBackend`, whose ops (RMSNorm and softmax in f32 among
//! them) the GPU backend shares. Its own test binary: burn fixes a
//! device's dtype once per process.
#![cfg(feature = "ndarray")]

use std::sync::Arc;

use airllm_backends::{BackendJob, BurnBackend, DeviceChoice, DeviceOptions};
use airllm_core::{ComputeBackend, ComputeDType, Result};
use airllm_tests::half_precision::*;
use airllm_tests::*;
use burn::backend::flex::{Flex, FlexDevice};
use burn::tensor::backend::Backend;

/// The teacher-forced logits of one fixture on whichever device runs it.
struct ForcedJob {
    name: &'static str,
    sequences: Vec<Forced>,
}

impl BackendJob for ForcedJob {
    type Output = Vec<Vec<Vec<f32>>>;

    fn run<B: Backend>(self, backend: Arc<dyn ComputeBackend<B>>) -> Result<Self::Output> {
        forced_logits(backend, self.name, &self.sequences)
    }
}

const F16: DeviceOptions = DeviceOptions {
    dtype: ComputeDType::F16,
    ..EXACT
};

/// The logits in f16 on flex.
fn on_flex(job: ForcedJob) -> Vec<Vec<Vec<f32>>> {
    // Once per process; a second call finds the dtype already set.
    let _ = burn::tensor::backend::set_default_float_dtype::<Flex>(
        &FlexDevice,
        burn::tensor::DType::F16,
    );
    job.run::<Flex>(Arc::new(BurnBackend::<Flex>::new(
        FlexDevice,
        "flex f16".into(),
    )))
    .unwrap()
}

#[test]
fn f16_follows_f32_teacher_forced() {
    let device = test_device();
    let mut on_device = device != DeviceChoice::Cpu;
    for name in HALF_FIXTURES {
        let sequences = forced_sequences(name);
        let full = f32_forced_logits(name, &sequences);
        let job = || ForcedJob {
            name,
            sequences: forced_sequences(name),
        };
        let half = match on_device {
            true => match on_test_device_with(F16, job()) {
                Ok(logits) => logits,
                Err(e) if e.to_string().contains("SHADER_F16") => {
                    eprintln!("{device} has no f16 ({e}); checking f16 on flex instead");
                    on_device = false;
                    on_flex(job())
                }
                Err(e) => panic!("{name} in f16 on {device}: {e}"),
            },
            false => on_flex(job()),
        };
        let runs_on = if on_device {
            device.to_string()
        } else {
            "flex".into()
        };
        let label = format!("{name} in f16 on {runs_on}");
        let report = compare_half(&label, &sequences, &half, &full);
        assert!(report.decisive > 0, "{label}: no decisive step");
        if name.contains("moe") {
            assert!(report.agreement() >= F16_AGREEMENT, "{label}: {report:?}");
        } else {
            assert!(
                report.max_diff <= F16_LOGIT_TOLERANCE,
                "{label}: {report:?}"
            );
            assert!(report.flips.is_empty(), "{label}: {report:?}");
        }
    }
    if on_device {
        // This process now computes in f16 on the device: f32 is refused.
        let err = on_test_device(ForcedJob {
            name: "llama-gqa",
            sequences: forced_sequences("llama-gqa"),
        })
        .unwrap_err()
        .to_string();
        assert!(err.contains("already computes in"), "{err}");
    }
}
