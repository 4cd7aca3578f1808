//! The unit checksum: XXH3-64 over a file's bytes, written as 16 hex digits.

use std::path::Path;

use crate::{FormatError, Result};

/// Name of the checksum algorithm as recorded in the manifest.
pub const ALGORITHM: &str = "xxh3-64";

/// Checksum of a byte slice.
pub fn of_bytes(bytes: &[u8]) -> String {
    format!("{:016x}", xxhash_rust::xxh3::xxh3_64(bytes))
}

/// Checksum of a whole file (memory-mapped, so it runs near memory speed
/// when the file is cached).
pub fn of_file(path: &Path) -> Result<String> {
    let file = std::fs::File::open(path).map_err(|e| FormatError::io(path, e))?;
    let len = file.metadata().map_err(|e| FormatError::io(path, e))?.len();
    if len == 0 {
        return Ok(of_bytes(&[]));
    }
    // SAFETY: the map is read-only and dropped before returning; a concurrent
    // writer could change the bytes under it, which only changes the checksum.
    let map = unsafe { memmap2::Mmap::map(&file) }.map_err(|e| FormatError::io(path, e))?;
    Ok(of_bytes(&map))
}
