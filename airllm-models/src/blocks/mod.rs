//! Building blocks shared by the families: norms, rotary embeddings,
//! attention and MLPs.

pub mod attention;
pub mod linear;
pub mod mlp;
pub mod norm;
pub mod rope;
