//! How a split stores the weights it writes: the `--compress`,
//! `--embedding`, `--head` and `--zstd` settings, recorded in the journal
//! and the manifest so that a rerun with other settings rewrites every
//! unit.

use std::fmt;
use std::str::FromStr;

use airllm_core::{BlockKind, DType};

/// The encoding a split gives the model's matrices (`--compress`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Compression {
    /// Every tensor as the source stores it: blocks stay blocks, Hugging
    /// Face dtypes stay.
    #[default]
    Keep,
    /// Every tensor widened to f32 (blocks decoded): the reference a
    /// quality evaluation compares against.
    F32,
    /// Matrices in bf16, the speed baseline; vectors as stored.
    Bf16,
    /// Matrices quantized to one block kind.
    #[serde(untagged)]
    Blocks(BlockKind),
}

/// The block kinds `--compress` takes, by name.
const BLOCK_NAMES: [(&str, BlockKind); 5] = [
    ("q8_0", BlockKind::Q8_0),
    ("q4_0", BlockKind::Q4_0),
    ("q4_1", BlockKind::Q4_1),
    ("q4_k", BlockKind::Q4_K),
    ("nf4", BlockKind::NF4),
];

impl Compression {
    /// The names `--compress` accepts.
    pub const NAMES: &'static str = "keep, f32, bf16, q8_0, q4_0, q4_1, q4_k, nf4";
}

impl FromStr for Compression {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s.to_ascii_lowercase().as_str() {
            "keep" => Ok(Compression::Keep),
            "f32" => Ok(Compression::F32),
            "bf16" => Ok(Compression::Bf16),
            name => BLOCK_NAMES
                .iter()
                .find(|(n, _)| *n == name)
                .map(|(_, kind)| Compression::Blocks(*kind))
                .ok_or_else(|| format!("unknown compression `{s}`; use one of {}", Self::NAMES)),
        }
    }
}

impl fmt::Display for Compression {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Compression::Keep => f.write_str("keep"),
            Compression::F32 => f.write_str("f32"),
            Compression::Bf16 => f.write_str("bf16"),
            Compression::Blocks(kind) => {
                let name = BLOCK_NAMES.iter().find(|(_, k)| k == kind).map(|(n, _)| *n);
                f.write_str(name.unwrap_or("?"))
            }
        }
    }
}

/// How a split stores one of the model's ends: the token embedding table
/// (`--embedding`) or the output head (`--head`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EndStorage {
    /// 8-bit blocks (an embedding row gathered per token reads a fifth of
    /// f32; a head in 8 bits keeps the next-token ranking that 4 bits
    /// blur, as llama.cpp's Q6_K head and bitsandbytes' unquantized one do).
    Q8_0,
    /// As the other matrices.
    Same,
    /// A float dtype: the source's own, f32 for a block-quantized source.
    Dense,
}

impl EndStorage {
    /// As the matrices (the head's storage in older manifests).
    fn same() -> Self {
        EndStorage::Same
    }
}

impl FromStr for EndStorage {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s.to_ascii_lowercase().as_str() {
            "q8_0" => Ok(EndStorage::Q8_0),
            "same" => Ok(EndStorage::Same),
            "dense" => Ok(EndStorage::Dense),
            _ => Err(format!(
                "unknown embedding storage `{s}`; use q8_0, same or dense"
            )),
        }
    }
}

/// The storage settings of a split.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct StorageSettings {
    /// The matrices' encoding.
    pub compression: Compression,
    /// The embedding table's.
    pub embedding: EndStorage,
    /// The output head's (`same` in manifests written before the setting
    /// existed, which stored it as the matrices).
    #[serde(default = "EndStorage::same")]
    pub head: EndStorage,
    /// The zstd level each tensor is compressed at (`--zstd`); `None`
    /// stores tensors as they are.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub zstd: Option<i32>,
}

impl StorageSettings {
    /// `compression` with `embedding`, or the default storage of the ends
    /// (embedding and head): `same` under `keep`, `f32` and `bf16`, q8_0
    /// under the block kinds.
    pub fn new(compression: Compression, embedding: Option<EndStorage>) -> Self {
        let default = match compression {
            Compression::Blocks(_) => EndStorage::Q8_0,
            _ => EndStorage::Same,
        };
        StorageSettings {
            compression,
            embedding: embedding.unwrap_or(default),
            head: default,
            zstd: None,
        }
    }

    /// These settings with the head stored as `head` (`None` keeps the
    /// default).
    pub fn with_head(self, head: Option<EndStorage>) -> Self {
        StorageSettings {
            head: head.unwrap_or(self.head),
            ..self
        }
    }

    /// These settings with each tensor compressed at zstd `level`.
    pub fn with_zstd(self, level: Option<i32>) -> Self {
        StorageSettings {
            zstd: level,
            ..self
        }
    }
}

/// Parses a `--zstd` level: an integer in zstd's range.
pub fn parse_zstd_level(s: &str) -> Result<i32, String> {
    let range = airllm_compress::codec::LEVELS;
    s.parse::<i32>()
        .ok()
        .filter(|level| range.contains(level))
        .ok_or_else(|| {
            format!(
                "zstd level `{s}` is not a whole number from {} to {} (1, the default, writes weights smallest and decodes them fastest)",
                range.start(),
                range.end()
            )
        })
}

impl Default for StorageSettings {
    fn default() -> Self {
        StorageSettings::new(Compression::Keep, None)
    }
}

/// The dense dtype a float conversion writes: `F32` under `--compress f32`,
/// `BF16` under `bf16`.
pub(super) fn float_target(compression: Compression) -> Option<DType> {
    match compression {
        Compression::F32 => Some(DType::F32),
        Compression::Bf16 => Some(DType::BF16),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_unknown_ones_list_the_known() {
        for name in Compression::NAMES.split(", ") {
            let parsed: Compression = name.parse().unwrap();
            assert_eq!(parsed.to_string(), name);
        }
        let err = "q3_k".parse::<Compression>().unwrap_err();
        assert!(
            err.contains("q3_k") && err.contains(Compression::NAMES),
            "{err}"
        );
        assert!("f8"
            .parse::<EndStorage>()
            .unwrap_err()
            .contains("q8_0, same or dense"));
    }

    #[test]
    fn settings_serialize_as_their_names() {
        let settings = StorageSettings::new(Compression::Blocks(BlockKind::Q4_K), None);
        let json = serde_json::to_string(&settings).unwrap();
        assert_eq!(
            json,
            r#"{"compression":"Q4_K","embedding":"q8_0","head":"q8_0"}"#
        );
        assert_eq!(
            serde_json::from_str::<StorageSettings>(&json).unwrap(),
            settings
        );
        let keep = serde_json::to_string(&StorageSettings::default()).unwrap();
        assert_eq!(
            keep,
            r#"{"compression":"keep","embedding":"same","head":"same"}"#
        );
        let older = r#"{"compression":"Q4_K","embedding":"q8_0"}"#;
        let older: StorageSettings = serde_json::from_str(older).unwrap();
        assert_eq!(older.head, EndStorage::Same);
        let zstd = StorageSettings::default().with_zstd(Some(5));
        let json = serde_json::to_string(&zstd).unwrap();
        assert_eq!(
            json,
            r#"{"compression":"keep","embedding":"same","head":"same","zstd":5}"#
        );
        assert_eq!(
            serde_json::from_str::<StorageSettings>(&json).unwrap(),
            zstd
        );
        assert_eq!(parse_zstd_level("19"), Ok(19));
        assert!(parse_zstd_level("23").unwrap_err().contains("from 1 to 22"));
        assert!(parse_zstd_level("fast").is_err());
    }
}
