//! bf16 against f32, teacher-forced (see `airllm_tests::half_precision`), by the
//! token rule: wherever f32's top-2 gap is decisive, the argmax is the
//! recorded token on at least 90% of the steps. On burn's flex through `BurnBackend`, whose ops (RMSNorm
//! and softmax in f32 among them) the GPU backend shares; wgpu has no bf16,
//! and cuda's runs with the device check. Its own test binary: burn fixes a
//! device's dtype once per process.
#![cfg(feature = "ndarray")]

use std::sync::Arc;

use airllm_backends::BurnBackend;
use airllm_tests::half_precision::*;
use burn::backend::flex::{Flex, FlexDevice};
use burn::tensor::DType;

#[test]
fn bf16_follows_f32_teacher_forced_by_the_token_rule() {
    burn::tensor::backend::set_default_float_dtype::<Flex>(&FlexDevice, DType::BF16).unwrap();
    for name in HALF_FIXTURES {
        let sequences = forced_sequences(name);
        let full = f32_forced_logits(name, &sequences);
        let backend = Arc::new(BurnBackend::<Flex>::new(FlexDevice, "flex bf16".into()));
        let half = forced_logits::<Flex>(backend, name, &sequences).unwrap();
        let label = format!("{name} in bf16 on flex");
        let report = compare_half(&label, &sequences, &half, &full);
        assert!(report.agreement() >= BF16_AGREEMENT, "{label}: {report:?}");
    }
}
