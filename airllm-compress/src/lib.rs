//! Block quantization (4-bit, 8-bit) and lossless zstd compression of unit
//! files. Empty until compressed layer files are built; the block layouts it
//! will write are described in `airllm_core::storage`.
