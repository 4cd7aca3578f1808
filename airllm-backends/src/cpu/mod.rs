//! Computing on the host CPU. The kernel ([`kernel`]) multiplies activation
//! rows with matrices straight from their memory-mapped encoding (f32, bf16,
//! f16 or GGUF's quantized blocks) and decodes those encodings with vector
//! instructions; it is built with every feature, since the host widening
//! that feeds wgpu and cuda decodes with it too.
//!
//! With the `cpu` feature, the cpu backend ([`CpuBackend`]): burn's flex for
//! everything but the linear op, which is the kernel's; attention, computed
//! chunk by chunk with an online softmax in [`attention`], RMSNorm (`norm`),
//! the gated MLP's activation (`elementwise`) and rotary positions
//! ([`rope`]). Nothing is copied or widened on upload, and a bf16 model
//! moves half the bytes through memory per token that an f32 copy would (a
//! Q4_1 model a sixth).

pub mod kernel;
#[cfg(target_arch = "x86_64")]
mod transpose;

#[cfg(feature = "cpu")]
pub mod attention;
#[cfg(feature = "cpu")]
mod backend;
#[cfg(feature = "cpu")]
mod elementwise;
#[cfg(feature = "cpu")]
mod math;
#[cfg(feature = "cpu")]
mod norm;
#[cfg(feature = "cpu")]
pub mod rope;

#[cfg(feature = "cpu")]
pub use backend::{CpuBackend, CPU_WEIGHT_LAYOUT};
