//! `airllm split`: write the per-layer layout with a progress bar.

use std::path::Path;

use airllm_core::{Result, UnitSpec};
use airllm_formats::split::{
    file_system_free_space, split_model, SplitOptions, SplitProgress, StorageSettings,
};
use airllm_formats::ModelKind;
use indicatif::{ProgressBar, ProgressStyle};

use crate::cli::SplitArgs;
use crate::model;

/// Runs the command.
pub fn run(args: SplitArgs) -> Result<()> {
    let dir = model::open_dir(&args.model)?;
    if dir.kind == ModelKind::Split && same_directory(&args.model, &args.out) {
        return Err(airllm_core::Error::Request(format!(
            "{} is the split being read; write the new split to another directory",
            args.out.display()
        )));
    }
    let specs = airllm_models::layout(&dir.config)?.units;
    let store = dir.open_store(&specs)?;
    airllm_core::check_units(store.units(), &specs)?;
    let storage = StorageSettings::new(args.compress, args.embedding)
        .with_head(args.head)
        .with_zstd(args.zstd);
    let target = SplitTarget {
        out: &args.out,
        config: &dir.config,
        storage,
        specs: &specs,
    };
    let manifest = write_split(store.as_ref(), target, dir.side_files()?)?;
    eprintln!(
        "wrote {} units to {}",
        manifest.units.len(),
        args.out.display()
    );
    Ok(())
}

/// Whether `a` and `b` name one directory (`b` may not exist yet).
fn same_directory(a: &Path, b: &Path) -> bool {
    match (a.canonicalize(), b.canonicalize()) {
        (Ok(a), Ok(b)) => a == b,
        _ => false,
    }
}

/// Where and how a split is written.
pub struct SplitTarget<'a> {
    /// The output directory.
    pub out: &'a Path,
    /// The model's config.json.
    pub config: &'a serde_json::Value,
    /// How the weights are stored.
    pub storage: StorageSettings,
    /// The model's layout (which marks the MoE routers).
    pub specs: &'a [UnitSpec],
}

/// Splits `store` as `target` says, with a progress bar on stderr.
pub fn write_split(
    store: &dyn airllm_core::LayerStore,
    target: SplitTarget<'_>,
    side_files: Vec<(String, Vec<u8>)>,
) -> Result<airllm_formats::Manifest> {
    let SplitTarget {
        out,
        config,
        storage,
        specs,
    } = target;
    let bar = ProgressBar::new(0);
    bar.set_style(
        ProgressStyle::with_template(
            "{msg:>12} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
        )
        .expect("valid template")
        .progress_chars("=> "),
    );
    let mut progress = |event: &SplitProgress| {
        match event {
            SplitProgress::Start { total, kept, bytes } => {
                bar.set_length(*bytes);
                if *kept > 0 {
                    bar.println(format!("resuming: {kept} of {total} units already written"));
                }
            }
            SplitProgress::Unit { name, bytes } => {
                bar.set_message(name.clone());
                bar.inc(*bytes);
            }
        }
        true
    };
    let architecture = config
        .get("architectures")
        .and_then(|a| a.get(0))
        .or_else(|| config.get("model_type"))
        .and_then(|a| a.as_str())
        .unwrap_or_default()
        .to_string();
    let manifest = split_model(
        store,
        out,
        SplitOptions {
            architecture,
            config: config.clone(),
            side_files,
            storage,
            routers: specs.iter().flat_map(|u| u.routers.clone()).collect(),
            free_space: &file_system_free_space,
            progress: &mut progress,
        },
    )?;
    bar.finish_and_clear();
    Ok(manifest)
}
