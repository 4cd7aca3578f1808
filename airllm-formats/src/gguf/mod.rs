//! GGUF input: the container parser, the mapping of GGUF architectures to
//! Hugging Face configs and tensor names, and the store that reads layers in
//! place, still quantized.

pub mod family;
pub mod file;
pub mod store;

pub use family::GgufFamily;
pub use file::{is_gguf, GgufFile, GgufTensor, MetaValue};
pub use store::GgufStore;
