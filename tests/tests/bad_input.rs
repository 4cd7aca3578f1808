//! Bad input gets a clear error naming the file, tensor or setting: never a
//! panic, never a silently wrong answer; interrupted splits resume.

use std::path::{Path, PathBuf};

use airllm_core::LayerStore;
use airllm_core::{BlockKind, StorageKind};
use airllm_formats::split::{
    split_model, Compression, SplitOptions, SplitProgress, StorageSettings,
};
use airllm_formats::{GgufFile, HfStore, ModelDir, SplitStore};
use airllm_tests::{fixture, split_fixture, split_stored};

/// Copies fixture `name` into a temporary directory.
fn copy_fixture(name: &str) -> (tempfile::TempDir, PathBuf) {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join(name);
    std::fs::create_dir(&dir).unwrap();
    for entry in std::fs::read_dir(fixture(name)).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), dir.join(entry.file_name())).unwrap();
    }
    (tmp, dir)
}

/// Opens `dir` as the engine would and returns the error text.
fn open_error(dir: &Path) -> String {
    let result = ModelDir::open(dir, &airllm_models::catalog())
        .map_err(airllm_core::Error::from)
        .and_then(|model| {
            let layout = airllm_models::layout(&model.config)?;
            let store = model.open_store(&layout.units)?;
            airllm_core::check_units(store.units(), &layout.units)
        });
    result.expect_err("opening should fail").to_string()
}

/// Rewrites `dir`'s model.safetensors without tensor `gone`.
fn drop_tensor(dir: &Path, gone: &str) {
    let weights = dir.join("model.safetensors");
    let bytes = std::fs::read(&weights).unwrap();
    let tensors = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let kept: Vec<_> = tensors
        .tensors()
        .into_iter()
        .filter(|(name, _)| name != gone)
        .collect();
    std::fs::write(&weights, safetensors::serialize(kept, None).unwrap()).unwrap();
}

fn edit_config(dir: &Path, edit: impl FnOnce(&mut serde_json::Value)) {
    let path = dir.join("config.json");
    let mut config: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    edit(&mut config);
    std::fs::write(&path, serde_json::to_vec(&config).unwrap()).unwrap();
}

#[test]
fn truncated_safetensors_names_the_file() {
    let (_tmp, dir) = copy_fixture("llama-gqa");
    let weights = dir.join("model.safetensors");
    let len = std::fs::metadata(&weights).unwrap().len();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&weights)
        .unwrap()
        .set_len(len / 2)
        .unwrap();
    let err = open_error(&dir);
    assert!(
        err.contains("model.safetensors") && err.contains("truncated"),
        "{err}"
    );
}

#[test]
fn wrong_shape_names_the_tensor() {
    let (_tmp, dir) = copy_fixture("llama-gqa");
    edit_config(&dir, |c| c["intermediate_size"] = 96.into());
    let err = open_error(&dir);
    assert!(
        err.contains("model.layers.0.mlp.gate_proj.weight") && err.contains("[96, 64]"),
        "{err}"
    );
}

#[test]
fn missing_tensor_names_it() {
    let (_tmp, dir) = copy_fixture("llama-gqa");
    drop_tensor(&dir, "model.layers.1.mlp.up_proj.weight");
    let err = open_error(&dir);
    assert!(
        err.contains("model.layers.1.mlp.up_proj.weight") && err.contains("missing"),
        "{err}"
    );
}

#[test]
fn unknown_architecture_lists_the_known_ones() {
    let (_tmp, dir) = copy_fixture("llama-gqa");
    edit_config(&dir, |c| {
        c["architectures"] = serde_json::json!(["FooForCausalLM"])
    });
    let err = open_error(&dir);
    assert!(
        [
            "FooForCausalLM",
            "LlamaForCausalLM",
            "QWenLMHeadModel",
            "ChatGLMModel",
            "BaiChuanForCausalLM"
        ]
        .iter()
        .all(|name| err.contains(name)),
        "{err}"
    );
}

#[test]
fn unknown_rope_scaling_is_named() {
    let (_tmp, dir) = copy_fixture("llama-gqa");
    edit_config(&dir, |c| {
        c["rope_scaling"] = serde_json::json!({"rope_type": "longrope", "factor": 4.0})
    });
    let err = open_error(&dir);
    assert!(
        err.contains("rope_scaling") && err.contains("longrope"),
        "{err}"
    );
}

#[test]
fn missing_path_is_named() {
    let err = open_error(Path::new("/no/such/model"));
    assert!(
        err.contains("/no/such/model") && err.contains("no such file"),
        "{err}"
    );
}

fn split_with(
    source: &Path,
    out: &Path,
    free: &dyn Fn(&Path) -> std::io::Result<u64>,
    progress: &mut dyn FnMut(&SplitProgress) -> bool,
) -> Result<airllm_formats::Manifest, airllm_formats::FormatError> {
    let dir = ModelDir::open(source, &airllm_models::catalog()).unwrap();
    let layout = airllm_models::layout(&dir.config).unwrap();
    let store = HfStore::open(source, &layout.units).unwrap();
    split_model(
        &store,
        out,
        SplitOptions {
            architecture: "LlamaForCausalLM".into(),
            config: dir.config.clone(),
            side_files: dir.side_files().unwrap(),
            storage: Default::default(),
            routers: Vec::new(),
            free_space: free,
            progress,
        },
    )
}

#[test]
fn interrupted_split_resumes_and_verifies() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("split");
    let source = fixture("llama-gqa");
    let disk = airllm_formats::split::file_system_free_space;
    let mut units_written = 0;
    let stopped = split_with(&source, &out, &disk, &mut |event| {
        if matches!(event, SplitProgress::Unit { .. }) {
            units_written += 1;
        }
        units_written < 2
    });
    assert!(stopped.unwrap_err().to_string().contains("interrupted"));
    assert!(ModelDir::open(&out, &airllm_models::catalog())
        .unwrap_err()
        .to_string()
        .contains("interrupted"));
    // A half-written unit under its temporary name, as a kill -9 would leave it.
    std::fs::write(
        out.join("units/002-layer.001.safetensors.tmp"),
        b"half a file",
    )
    .unwrap();

    let mut kept = None;
    split_with(&source, &out, &disk, &mut |event| {
        if let SplitProgress::Start { kept: k, .. } = event {
            kept = Some(*k);
        }
        true
    })
    .unwrap();
    assert_eq!(kept, Some(2));
    assert!(!out.join("units/002-layer.001.safetensors.tmp").exists());
    let store = SplitStore::open(&out).unwrap();
    for index in 0..store.units().len() {
        store.verify_unit(index).unwrap();
    }
}

#[test]
fn flipped_byte_is_named_by_verify() {
    let tmp = tempfile::tempdir().unwrap();
    let out = split_fixture("llama-gqa", &tmp.path().join("split"));
    let unit = out.join("units/002-layer.001.safetensors");
    let mut bytes = std::fs::read(&unit).unwrap();
    let last = bytes.len() - 3;
    bytes[last] ^= 0x10;
    std::fs::write(&unit, bytes).unwrap();
    let store = SplitStore::open(&out).unwrap();
    store.verify_unit(1).unwrap();
    let err = store.verify_unit(2).unwrap_err().to_string();
    assert!(
        err.contains("002-layer.001.safetensors") && err.contains("checksum"),
        "{err}"
    );
}

/// In a compressed split, a flipped byte in a block is named by its
/// checksum; a non-finite scale in a unit whose checksum was recomputed
/// (a faulty writer) is named by the scale check.
#[test]
fn damaged_blocks_are_named_by_verify() {
    let tmp = tempfile::tempdir().unwrap();
    let q8 = StorageSettings::new(Compression::Blocks(BlockKind::Q8_0), None);
    let out = split_stored(&fixture("llama-gqa"), &tmp.path().join("split"), q8);
    let manifest_path = out.join("manifest.json");
    let mut manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&manifest_path).unwrap()).unwrap();
    let unit = manifest["units"][2].clone();
    let file = out.join(unit["file"].as_str().unwrap());
    let tensor = unit["tensors"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["kind"]["block"] == "Q8_0")
        .unwrap();
    let scale = tensor["range"][0].as_u64().unwrap() as usize + 34;
    let mut bytes = std::fs::read(&file).unwrap();
    bytes[scale + 5] ^= 0x01;
    std::fs::write(&file, &bytes).unwrap();
    let err = SplitStore::open(&out)
        .unwrap()
        .verify_unit(2)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("002-layer.001.safetensors") && err.contains("checksum"),
        "{err}"
    );
    bytes[scale + 5] ^= 0x01;
    bytes[scale..scale + 2].copy_from_slice(&0x7C00u16.to_le_bytes());
    std::fs::write(&file, &bytes).unwrap();
    manifest["units"][2]["checksum"] = airllm_formats::checksum::of_bytes(&bytes).into();
    std::fs::write(&manifest_path, serde_json::to_vec(&manifest).unwrap()).unwrap();
    let err = SplitStore::open(&out)
        .unwrap()
        .verify_unit(2)
        .unwrap_err()
        .to_string();
    let name = tensor["name"].as_str().unwrap();
    assert!(
        err.contains(name) && err.contains("block 1 has a scale that is not finite"),
        "{err}"
    );
}

#[test]
fn too_little_disk_writes_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("split");
    let err = split_with(&fixture("llama-gqa"), &out, &|_| Ok(1000), &mut |_| true)
        .unwrap_err()
        .to_string();
    assert!(err.contains("not enough free disk"), "{err}");
    assert!(!out.join("manifest.json").exists());
    assert_eq!(std::fs::read_dir(out.join("units")).unwrap().count(), 0);
}

#[test]
fn manifest_ranges_that_do_not_fit_their_tensors_are_errors() {
    let edits: [fn(&mut serde_json::Value); 3] = [
        |t| t["range"][1] = (t["range"][1].as_u64().unwrap() - 4).into(),
        |t| t["range"] = serde_json::json!([200, 100]),
        |t| t["shape"] = serde_json::json!([1u64 << 40, 1u64 << 40]),
    ];
    for edit in edits {
        let tmp = tempfile::tempdir().unwrap();
        let out = split_fixture("llama-gqa", &tmp.path().join("split"));
        let path = out.join("manifest.json");
        let mut manifest: serde_json::Value =
            serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
        edit(&mut manifest["units"][1]["tensors"][0]);
        std::fs::write(&path, serde_json::to_vec(&manifest).unwrap()).unwrap();
        let err = SplitStore::open(&out).err().expect("refused").to_string();
        assert!(
            err.contains("001-layer.000.safetensors") && err.contains("does not fit"),
            "{err}"
        );
    }
}

#[test]
fn config_sizes_beyond_any_model_are_errors() {
    for (key, value) in [
        ("vocab_size", serde_json::json!(u64::MAX)),
        ("hidden_size", serde_json::json!(i64::MAX)),
        ("intermediate_size", serde_json::json!(1u64 << 40)),
    ] {
        let (_tmp, dir) = copy_fixture("qwen2-window");
        edit_config(&dir, |c| c[key] = value);
        let err = open_error(&dir);
        assert!(
            err.contains(key) && err.contains("larger than any model"),
            "{err}"
        );
    }
}

#[test]
fn heads_too_narrow_for_rotary_positions_are_an_error() {
    let (_tmp, dir) = copy_fixture("baichuan2-rope");
    edit_config(&dir, |c| c["num_attention_heads"] = 64.into());
    let err = open_error(&dir);
    assert!(err.contains("rotated dims"), "{err}");
}

#[test]
fn fused_rows_that_do_not_split_as_configured_name_the_tensor() {
    let (_tmp, dir) = copy_fixture("chatglm3");
    edit_config(&dir, |c| c["multi_query_group_num"] = 1.into());
    let err = open_error(&dir);
    assert!(
        err.contains("transformer.encoder.layers.0.self_attention.query_key_value.weight")
            && err.contains("[144, 64]"),
        "{err}"
    );
}

#[test]
fn missing_expert_tensor_names_it() {
    let (_tmp, dir) = copy_fixture("mixtral-moe");
    let gone = "model.layers.1.block_sparse_moe.experts.3.w2.weight";
    drop_tensor(&dir, gone);
    let err = open_error(&dir);
    assert!(err.contains(gone) && err.contains("missing"), "{err}");
}

#[test]
fn more_experts_per_token_than_experts_is_named() {
    let (_tmp, dir) = copy_fixture("mixtral-moe");
    edit_config(&dir, |c| c["num_experts_per_tok"] = 5.into());
    let err = open_error(&dir);
    assert!(
        err.contains("num_experts_per_tok") && err.contains("num_local_experts = 4"),
        "{err}"
    );
}

#[test]
fn layer_count_beyond_the_weights_is_refused_before_allocating() {
    let (_tmp, dir) = copy_fixture("llama-gqa");
    edit_config(&dir, |c| {
        c["num_hidden_layers"] = 1_099_511_627_776u64.into()
    });
    let err = ModelDir::open(&dir, &airllm_models::catalog())
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("num_hidden_layers = 1099511627776") && err.contains("tensors"),
        "{err}"
    );
    let (_tmp, dir) = copy_fixture("mixtral-moe");
    edit_config(&dir, |c| c["num_local_experts"] = 1_000_000.into());
    let err = ModelDir::open(&dir, &airllm_models::catalog())
        .unwrap_err()
        .to_string();
    assert!(err.contains("num_local_experts"), "{err}");
}

/// Rewrites `dir`'s tokenizer.json with `edit`.
fn edit_tokenizer(dir: &Path, edit: impl FnOnce(&mut serde_json::Value)) {
    let path = dir.join("tokenizer.json");
    let mut tokenizer: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    edit(&mut tokenizer);
    std::fs::write(&path, serde_json::to_vec(&tokenizer).unwrap()).unwrap();
}

#[test]
fn tokenizers_the_library_panics_on_are_named_errors() {
    let edits: [fn(&mut serde_json::Value); 2] = [
        |t| t["model"]["continuing_subword_prefix"] = "a-long-prefix".into(),
        |t| t["decoder"] = serde_json::json!({"type": "Sequence", "decoders": [{"type": 7}]}),
    ];
    for edit in edits {
        let (_tmp, dir) = copy_fixture("llama-gqa");
        edit_tokenizer(&dir, edit);
        let err = ModelDir::open(&dir, &airllm_models::catalog())
            .unwrap()
            .tokenizer()
            .expect_err("refused");
        assert!(err.to_string().contains("tokenizer.json"), "{err}");
    }
}

/// Splits `source` into `out` with `storage`, returning the error text.
fn split_error(source: &Path, out: &Path, storage: StorageSettings) -> Option<String> {
    let dir = ModelDir::open(source, &airllm_models::catalog()).unwrap();
    let layout = airllm_models::layout(&dir.config).unwrap();
    let store = dir.open_store(&layout.units).unwrap();
    let options = SplitOptions {
        architecture: "LlamaForCausalLM".into(),
        config: dir.config.clone(),
        side_files: dir.side_files().unwrap(),
        storage,
        routers: Vec::new(),
        free_space: &airllm_formats::split::file_system_free_space,
        progress: &mut |_| true,
    };
    split_model(store.as_ref(), out, options)
        .err()
        .map(|e| e.to_string())
}

/// A NaN weight is refused where it would be quantized (naming the tensor
/// and the remedy) and copied, with a warning, where it is copied.
#[test]
fn non_finite_weights_are_refused_only_when_quantized() {
    let (tmp, dir) = copy_fixture("llama-gqa");
    let weights = dir.join("model.safetensors");
    let mut bytes = std::fs::read(&weights).unwrap();
    let tensor = "model.layers.1.mlp.up_proj.weight";
    let at = {
        let parsed = safetensors::SafeTensors::deserialize(&bytes).unwrap();
        let view = parsed.tensor(tensor).unwrap();
        view.data().as_ptr() as usize - bytes.as_ptr() as usize
    };
    bytes[at..at + 4].copy_from_slice(&f32::NAN.to_le_bytes());
    std::fs::write(&weights, bytes).unwrap();
    let q8 = StorageSettings::new(Compression::Blocks(BlockKind::Q8_0), None);
    let err = split_error(&dir, &tmp.path().join("q8"), q8).expect("refused");
    assert!(
        err.contains(tensor) && err.contains("NaN") && err.contains("--compress keep"),
        "{err}"
    );
    for copied in [Compression::Keep, Compression::F32, Compression::Bf16] {
        let out = tmp.path().join(copied.to_string());
        assert_eq!(
            split_error(&dir, &out, StorageSettings::new(copied, None)),
            None
        );
    }
}

/// A GGUF block whose scale is not finite is refused when copied (and by
/// the quantizers, which decode it to NaN).
#[test]
fn non_finite_block_scales_are_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("model.gguf");
    let mut bytes = std::fs::read(fixture("llama-mixed.gguf")).unwrap();
    let file = GgufFile::open(&fixture("llama-mixed.gguf")).unwrap();
    let q8 = file
        .tensors
        .iter()
        .find(|t| t.kind == StorageKind::Block(BlockKind::Q8_0))
        .unwrap();
    let at = q8.range.start + 34; // the second block's f16 scale
    bytes[at..at + 2].copy_from_slice(&0x7E00u16.to_le_bytes());
    std::fs::write(&path, bytes).unwrap();
    let keep = split_error(&path, &tmp.path().join("keep"), StorageSettings::default());
    let err = keep.expect("refused");
    // Named as the model's own tensor (llama-mixed's first Q8_0 tensor,
    // `token_embd.weight` in the file, is the embedding).
    assert!(err.contains("tensor `model.embed_tokens.weight`"), "{err}");
    assert!(
        err.contains("block 1 has a scale that is not finite"),
        "{err}"
    );
    let nf4 = StorageSettings::new(Compression::Blocks(BlockKind::NF4), None);
    assert!(split_error(&path, &tmp.path().join("nf4"), nf4).is_some());
}

/// A block tensor whose recorded range is not whole blocks is refused when
/// the split opens.
#[test]
fn block_ranges_that_are_not_whole_blocks_are_errors() {
    let tmp = tempfile::tempdir().unwrap();
    let q8 = StorageSettings::new(Compression::Blocks(BlockKind::Q8_0), None);
    let out = split_stored(&fixture("llama-gqa"), &tmp.path().join("split"), q8);
    let path = out.join("manifest.json");
    let mut manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    let tensors = manifest["units"][1]["tensors"].as_array_mut().unwrap();
    let block = tensors
        .iter_mut()
        .find(|t| t["kind"]["block"] == "Q8_0")
        .unwrap();
    block["range"][1] = (block["range"][1].as_u64().unwrap() - 2).into();
    std::fs::write(&path, serde_json::to_vec(&manifest).unwrap()).unwrap();
    let err = SplitStore::open(&out).err().expect("refused").to_string();
    assert!(
        err.contains("Q8_0") && err.contains("does not fit"),
        "{err}"
    );
}

/// A version 1 manifest (no storage settings) still reads; a newer layout
/// names itself and the remedy.
#[test]
fn older_layouts_read_and_newer_ones_are_named() {
    let tmp = tempfile::tempdir().unwrap();
    let out = split_fixture("llama-gqa", &tmp.path().join("split"));
    let path = out.join("manifest.json");
    let mut manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    manifest["version"] = 1.into();
    manifest.as_object_mut().unwrap().remove("storage");
    std::fs::write(&path, serde_json::to_vec(&manifest).unwrap()).unwrap();
    assert_eq!(SplitStore::open(&out).unwrap().manifest().storage, None);
    manifest["version"] = 3.into();
    std::fs::write(&path, serde_json::to_vec(&manifest).unwrap()).unwrap();
    let err = SplitStore::open(&out).err().expect("refused").to_string();
    assert!(
        err.contains("version 3") && err.contains("newer airllm-rs") && err.contains("upgrade"),
        "{err}"
    );
}

/// An unknown storage kind or codec in a manifest is refused, listing the
/// known ones.
#[test]
fn unknown_storage_kinds_and_codecs_list_the_known_ones() {
    let tmp = tempfile::tempdir().unwrap();
    let q8 = StorageSettings::new(Compression::Blocks(BlockKind::Q8_0), None);
    let out = split_stored(&fixture("llama-gqa"), &tmp.path().join("split"), q8);
    let path = out.join("manifest.json");
    let original: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    let mut manifest = original.clone();
    manifest["units"][1]["tensors"][0]["kind"] = serde_json::json!({"block": "Q3_K"});
    std::fs::write(&path, serde_json::to_vec(&manifest).unwrap()).unwrap();
    let err = SplitStore::open(&out).err().expect("refused").to_string();
    assert!(
        err.contains("manifest.json") && err.contains("Q3_K") && err.contains("NF4"),
        "{err}"
    );
    let mut manifest = original;
    manifest["units"][1]["codec"] = "lz4".into();
    std::fs::write(&path, serde_json::to_vec(&manifest).unwrap()).unwrap();
    let err = SplitStore::open(&out).err().expect("refused").to_string();
    assert!(
        err.contains("`lz4`") && err.contains("none, zstd") && err.contains("layer.000"),
        "{err}"
    );
}

/// In a zstd split, a flipped byte in a frame is named by `--verify`'s
/// checksum; written so by a faulty writer (checksum recomputed), by the
/// frame's own check when read; and a frame that holds another length
/// than the manifest records is named with both lengths.
#[test]
fn damaged_zstd_frames_are_named() {
    let tmp = tempfile::tempdir().unwrap();
    let zstd = StorageSettings::default().with_zstd(Some(3));
    let out = split_stored(&fixture("llama-gqa"), &tmp.path().join("split"), zstd);
    let manifest_path = out.join("manifest.json");
    let original = std::fs::read(&manifest_path).unwrap();
    let mut manifest: serde_json::Value = serde_json::from_slice(&original).unwrap();
    let unit = manifest["units"][2].clone();
    let file = out.join(unit["file"].as_str().unwrap());
    let tensor = unit["tensors"][3].clone();
    let name = tensor["name"].as_str().unwrap();
    let [start, end] = [0, 1].map(|i| tensor["range"][i].as_u64().unwrap() as usize);
    let pristine = std::fs::read(&file).unwrap();
    let mut bytes = pristine.clone();
    bytes[(start + end) / 2] ^= 0x01;
    std::fs::write(&file, &bytes).unwrap();
    let store = SplitStore::open(&out).unwrap();
    let err = store.verify_unit(2).unwrap_err().to_string();
    assert!(
        err.contains("002-layer.001.safetensors") && err.contains("checksum"),
        "{err}"
    );
    manifest["units"][2]["checksum"] = airllm_formats::checksum::of_bytes(&bytes).into();
    std::fs::write(&manifest_path, serde_json::to_vec(&manifest).unwrap()).unwrap();
    let store = SplitStore::open(&out).unwrap();
    for err in [
        store.read_unit(2, None).unwrap_err().to_string(),
        store.verify_unit(2).unwrap_err().to_string(),
    ] {
        assert!(
            err.contains("002-layer.001.safetensors")
                && err.contains(&format!("`{name}`"))
                && err.contains("zstd frame is damaged"),
            "{err}"
        );
    }
    // The frame whole again, but the manifest says the tensor is one row
    // shorter (its frame and shape agree with each other, not the frame).
    std::fs::write(&file, &pristine).unwrap();
    let mut manifest: serde_json::Value = serde_json::from_slice(&original).unwrap();
    let edited = &mut manifest["units"][2]["tensors"][3];
    let shape: Vec<u64> = serde_json::from_value(edited["shape"].clone()).unwrap();
    let raw = edited["frame"]["raw_bytes"].as_u64().unwrap();
    edited["shape"][0] = (shape[0] - 1).into();
    edited["frame"]["raw_bytes"] = (raw - raw / shape[0]).into();
    std::fs::write(&manifest_path, serde_json::to_vec(&manifest).unwrap()).unwrap();
    let err = SplitStore::open(&out)
        .unwrap()
        .read_unit(2, None)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains(&format!("`{name}`"))
            && err.contains(&format!(
                "holds {raw} bytes, the manifest records {}",
                raw - raw / shape[0]
            )),
        "{err}"
    );
}
