//! Building blocks shared by the families: norms, rotary embeddings,
//! attention, its masks and MLPs.

pub mod attention;
pub mod linear;
pub mod mask;
pub mod mlp;
pub mod norm;
pub mod rope;
