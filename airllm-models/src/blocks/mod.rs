//! Building blocks shared by the families: norms, rotary embeddings,
//! attention, its masks, MLPs and mixtures of experts.

pub mod attention;
pub mod linear;
pub mod mask;
pub mod mlp;
pub mod moe;
pub mod norm;
pub mod rope;
