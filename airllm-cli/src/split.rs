//! `airllm split`: write the per-layer layout with a progress bar.

use airllm_core::Result;
use airllm_formats::split::{file_system_free_space, split_model, SplitOptions, SplitProgress};
use airllm_formats::ModelKind;
use indicatif::{ProgressBar, ProgressStyle};

use crate::cli::SplitArgs;
use crate::model;

/// Runs the command.
pub fn run(args: SplitArgs) -> Result<()> {
    let dir = model::open_dir(&args.model)?;
    if dir.kind == ModelKind::Split {
        return Err(airllm_core::Error::Request(format!(
            "{} is already a split directory",
            args.model.display()
        )));
    }
    let specs = airllm_models::layout(&dir.config)?.units;
    let store = dir.open_store(&specs)?;
    airllm_core::check_units(store.units(), &specs)?;
    let manifest = write_split(store.as_ref(), &args.out, &dir.config, dir.side_files()?)?;
    eprintln!(
        "wrote {} units to {}",
        manifest.units.len(),
        args.out.display()
    );
    Ok(())
}

/// Splits `store` into `out` with a progress bar on stderr.
pub fn write_split(
    store: &dyn airllm_core::LayerStore,
    out: &std::path::Path,
    config: &serde_json::Value,
    side_files: Vec<(String, Vec<u8>)>,
) -> Result<airllm_formats::Manifest> {
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
            free_space: &file_system_free_space,
            progress: &mut progress,
        },
    )?;
    bar.finish_and_clear();
    Ok(manifest)
}
