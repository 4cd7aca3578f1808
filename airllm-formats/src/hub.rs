//! Hugging Face hub ids (`org/name`): found in the local Hugging Face cache
//! (`HF_HUB_CACHE`, `HF_HOME/hub`, `~/.cache/huggingface/hub`; the
//! `models--org--name/snapshots/<rev>` layout) without network, and
//! downloaded into it through `hf-hub` when missing.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use hf_hub::api::sync::{ApiBuilder, ApiError};
use hf_hub::Cache;

use crate::error::read_json;
use crate::hf::{INDEX_FILE, SINGLE_FILE};
use crate::split::SIDE_FILES;
use crate::{FormatError, Result};

/// Whether `text` has the shape of a hub id: `org/name`, each part made of
/// letters, digits, `-`, `_` and `.`, not starting with `.`.
pub fn is_hub_id(text: &str) -> bool {
    let part = |p: &str| {
        !p.is_empty()
            && !p.starts_with('.')
            && p.chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
    };
    matches!(text.split_once('/'), Some((org, name)) if part(org) && part(name))
}

/// The hub cache: `HF_HUB_CACHE`, else `HF_HOME/hub`, else
/// `~/.cache/huggingface/hub`.
pub fn cache_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("HF_HUB_CACHE") {
        return dir.into();
    }
    if let Some(home) = std::env::var_os("HF_HOME") {
        return PathBuf::from(home).join("hub");
    }
    let home = std::env::var_os("HOME").unwrap_or_default();
    PathBuf::from(home).join(".cache/huggingface/hub")
}

/// Whether the environment forbids downloads (`HF_HUB_OFFLINE=1`).
fn offline() -> bool {
    std::env::var("HF_HUB_OFFLINE").is_ok_and(|v| v == "1" || v.eq_ignore_ascii_case("true"))
}

/// The local directory of model `id`: its cached snapshot, downloaded first
/// when it is not complete in the cache (unless `HF_HUB_OFFLINE` is set),
/// with `token` as the access token (else `HF_TOKEN`, else the cache's).
pub fn resolve(id: &str, token: Option<&str>) -> Result<PathBuf> {
    let cache = cache_dir();
    if let Some(dir) = cached_snapshot(&cache, id)? {
        return Ok(dir);
    }
    if offline() {
        return Err(not_cached(&cache, id, "HF_HUB_OFFLINE is set"));
    }
    download(&cache, id, token)
}

/// The snapshot `refs/main` of model `id` points at in `cache`, if every
/// file the model needs is there.
pub fn cached_snapshot(cache: &Path, id: &str) -> Result<Option<PathBuf>> {
    let repo = cache.join(format!("models--{}", id.replace('/', "--")));
    let Ok(commit) = std::fs::read_to_string(repo.join("refs/main")) else {
        return Ok(None);
    };
    let snapshot = repo.join("snapshots").join(commit.trim());
    Ok(weights_complete(&snapshot)?.then_some(snapshot))
}

/// Whether `dir` holds config.json and all its safetensors weights.
fn weights_complete(dir: &Path) -> Result<bool> {
    if !dir.join("config.json").is_file() {
        return Ok(false);
    }
    if dir.join(SINGLE_FILE).is_file() {
        return Ok(true);
    }
    let index = dir.join(INDEX_FILE);
    if !index.is_file() {
        return Ok(false);
    }
    Ok(shards(&index)?
        .iter()
        .all(|shard| dir.join(shard).is_file()))
}

/// The shard files a safetensors index names.
fn shards(index: &Path) -> Result<BTreeSet<String>> {
    let index: serde_json::Value = read_json(index)?;
    Ok(index
        .get("weight_map")
        .and_then(|m| m.as_object())
        .map(|m| {
            m.values()
                .filter_map(|v| v.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default())
}

fn not_cached(cache: &Path, id: &str, why: &str) -> FormatError {
    FormatError::NotAModel {
        path: cache.join(format!("models--{}", id.replace('/', "--"))),
        detail: format!(
            "`{id}` is not complete in the Hugging Face cache and cannot be downloaded ({why}); download it on a machine with network into this cache, or pass a local path"
        ),
    }
}

/// Says what a failed hub request means for model `id` (asked `with_token`
/// or without one).
fn hub_error(cache: &Path, id: &str, with_token: bool, error: ApiError) -> FormatError {
    let status = match &error {
        ApiError::RequestError(e) => match e.as_ref() {
            ureq::Error::Status(code, _) => Some(*code),
            ureq::Error::Transport(_) => None,
        },
        _ => None,
    };
    let detail = match status {
        Some(401 | 403) => match with_token {
            false => format!(
                "`{id}` is gated or private and no access token is set: accept its terms on https://huggingface.co/{id}, then set HF_TOKEN (or pass hf_token) to an access token"
            ),
            true => format!(
                "`{id}` is gated or private and the access token given (hf_token, HF_TOKEN or the cache's) has no access to it: accept its terms on https://huggingface.co/{id} with that account"
            ),
        },
        Some(404) => format!("there is no model `{id}` on the Hugging Face hub"),
        _ => return not_cached(cache, id, &error.to_string()),
    };
    FormatError::NotAModel {
        path: PathBuf::from(id),
        detail,
    }
}

/// Downloads the config, tokenizer files and safetensors weights of `id`
/// into `cache`; returns the snapshot directory.
fn download(cache: &Path, id: &str, token: Option<&str>) -> Result<PathBuf> {
    let hub_cache = Cache::new(cache.to_path_buf());
    let token = token
        .map(str::to_string)
        .or_else(|| std::env::var("HF_TOKEN").ok())
        .or_else(|| hub_cache.token());
    let with_token = token.is_some();
    let api = ApiBuilder::from_cache(hub_cache)
        .with_token(token)
        .with_progress(true)
        .build()
        .map_err(|e| hub_error(cache, id, with_token, e))?;
    let repo = api.model(id.to_string());
    let info = repo
        .info()
        .map_err(|e| hub_error(cache, id, with_token, e))?;
    let files: BTreeSet<String> = info.siblings.into_iter().map(|s| s.rfilename).collect();
    let get = |name: &str| {
        repo.get(name)
            .map_err(|e| hub_error(cache, id, with_token, e))
    };
    let mut wanted: Vec<String> = SIDE_FILES
        .iter()
        .filter(|f| files.contains(**f))
        .map(|f| f.to_string())
        .collect();
    if files.contains(INDEX_FILE) {
        let index = get(INDEX_FILE)?;
        wanted.extend(shards(&index)?);
    } else if files.contains(SINGLE_FILE) {
        wanted.push(SINGLE_FILE.into());
    } else {
        let ggufs: Vec<&String> = files.iter().filter(|f| f.ends_with(".gguf")).collect();
        return Err(FormatError::NotAModel {
            path: PathBuf::from(id),
            detail: match ggufs.is_empty() {
                true => "it has no safetensors weights; only safetensors and GGUF are read".into(),
                false => format!(
                    "it holds GGUF files ({}); download the one you want and pass its path",
                    ggufs
                        .iter()
                        .map(|s| s.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            },
        });
    }
    let mut snapshot = None;
    for name in &wanted {
        let path = get(name)?;
        if name == "config.json" {
            snapshot = path.parent().map(Path::to_path_buf);
        }
    }
    snapshot.ok_or_else(|| FormatError::NotAModel {
        path: PathBuf::from(id),
        detail: "it has no config.json".into(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hub_ids_are_told_from_paths() {
        assert!(is_hub_id("HuggingFaceTB/SmolLM2-135M-Instruct"));
        assert!(is_hub_id("meta-llama/Llama-3.1-8B"));
        assert!(!is_hub_id("./models/x"));
        assert!(!is_hub_id("/abs/path"));
        assert!(!is_hub_id("a/b/c"));
        assert!(!is_hub_id("model.gguf"));
    }

    #[test]
    fn a_complete_snapshot_is_found_without_network() {
        let cache = tempfile::tempdir().unwrap();
        let repo = cache.path().join("models--org--tiny");
        let snapshot = repo.join("snapshots/0123abcd");
        std::fs::create_dir_all(&snapshot).unwrap();
        std::fs::create_dir_all(repo.join("refs")).unwrap();
        std::fs::write(repo.join("refs/main"), "0123abcd\n").unwrap();
        std::fs::write(snapshot.join("config.json"), "{}").unwrap();
        std::fs::write(
            snapshot.join(INDEX_FILE),
            r#"{"weight_map": {"a": "model-1.safetensors", "b": "model-2.safetensors"}}"#,
        )
        .unwrap();
        std::fs::write(snapshot.join("model-1.safetensors"), "").unwrap();
        assert_eq!(cached_snapshot(cache.path(), "org/tiny").unwrap(), None);
        std::fs::write(snapshot.join("model-2.safetensors"), "").unwrap();
        assert_eq!(
            cached_snapshot(cache.path(), "org/tiny").unwrap(),
            Some(snapshot)
        );
        assert_eq!(cached_snapshot(cache.path(), "org/other").unwrap(), None);
    }
}
