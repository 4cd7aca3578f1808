//! `airllm inspect`: family, units and their bytes, and the plan the engine
//! makes for a batch on the chosen device within its budget.

use std::path::Path;
use std::sync::Arc;

use airllm_backends::{dispatch, BackendJob};
use airllm_core::{ByteSize, ComputeBackend, Engine, ResidencyPlan, Result};
use airllm_formats::ModelDir;
use burn::tensor::backend::Backend;
use serde_json::json;

use crate::cli::InspectArgs;
use crate::model;
use crate::storage_report::StorageSummary;

/// Runs the command.
pub fn run(args: InspectArgs) -> Result<()> {
    let (device, options) = (args.engine.device, args.engine.device_options());
    dispatch(device, options, InspectJob { args })
}

struct InspectJob {
    args: InspectArgs,
}

impl BackendJob for InspectJob {
    type Output = ();

    fn run<B: Backend>(self, backend: Arc<dyn ComputeBackend<B>>) -> Result<()> {
        let args = self.args;
        let dir = model::open_dir(&args.model)?;
        let engine = model::open_drafted_engine::<B>(&dir, backend, &args.engine, &args.draft)?;
        let context = args.context.unwrap_or(engine.arch().dims().max_positions);
        let chunk = args.engine.prefill_chunk.min(context);
        let plan = engine.plan_for(args.batch, chunk, context)?;
        let storage = StorageSummary::of(&dir, &engine)?;
        let report = Report {
            engine: &engine,
            plan: &plan,
            dir: &dir,
            storage: &storage,
            verified: args.engine.verify,
            each_tensor: args.tensors,
            draft: args.draft.model(),
        };
        match args.json {
            true => report.print_json(),
            false => report.print_table(),
        }
        Ok(())
    }
}

/// What `inspect` prints: the model, its units and the engine's plan.
struct Report<'a, B: Backend> {
    engine: &'a Engine<B>,
    plan: &'a ResidencyPlan,
    dir: &'a ModelDir,
    storage: &'a StorageSummary,
    verified: bool,
    each_tensor: bool,
    /// Where the draft model is, when one is planned.
    draft: Option<&'a Path>,
}

impl<B: Backend> Report<'_, B> {
    /// The plan as one JSON object.
    fn print_json(&self) {
        let layout = self.engine.backend().weight_layout();
        let units: Vec<_> = self
            .engine
            .store()
            .units()
            .iter()
            .zip(&self.plan.placements)
            .map(|(u, p)| {
                json!({
                    "name": u.name,
                    "file_bytes": u.bytes,
                    "device_bytes": u.device_bytes(layout),
                    "placement": format!("{p:?}").to_lowercase(),
                })
            })
            .collect();
        let report = json!({
            "family": self.engine.arch().family(),
            "path": self.dir.path,
            "layout": format!("{:?}", self.dir.kind),
            "units": units,
            "storage": self.storage.json(),
            "file_bytes": self.engine.store().units().iter().map(|u| u.bytes).sum::<u64>(),
            "budget_bytes": self.engine.budget(),
            "resident_bytes": self.plan.resident_bytes,
            "stream_buffer_bytes": self.plan.stream_buffer_bytes,
            "units_streamed": self.plan.streamed(),
            "predicted_peak_bytes": self.plan.predicted_peak(),
            "host_budget_bytes": self.plan.host_budget,
            "host_bytes": self.plan.host_bytes,
            "units_on_host": self.plan.on_host(),
            "units_from_disk": self.plan.streamed() - self.plan.on_host(),
            "draft": self.draft.map(|path| json!({
                "path": path,
                "resident_bytes": self.plan.draft_bytes,
            })),
            "verified": self.verified,
        });
        println!("{report}");
    }

    /// The plan as a table.
    fn print_table(&self) {
        let layout = self.engine.backend().weight_layout();
        let units = self.engine.store().units();
        println!(
            "{} ({:?} layout, family {})",
            self.dir.path.display(),
            self.dir.kind,
            self.engine.arch().family()
        );
        println!(
            "{:<12} {:>12} {:>12}  placement",
            "unit", "file", "on device"
        );
        for (u, p) in units.iter().zip(&self.plan.placements) {
            println!(
                "{:<12} {:>12} {:>12}  {p:?}",
                u.name,
                ByteSize(u.bytes).to_string(),
                ByteSize(u.device_bytes(layout)).to_string()
            );
        }
        for line in self.storage.lines(self.each_tensor) {
            println!("{line}");
        }
        if let Some(path) = self.draft {
            println!(
                "draft model {}: {} resident (weights, KV cache, activations), planned first",
                path.display(),
                ByteSize(self.plan.draft_bytes)
            );
        }
        let plan = self.plan;
        println!(
            "total {} on disk{}",
            ByteSize(units.iter().map(|u| u.bytes).sum()),
            if self.verified {
                "; all checksums verified"
            } else {
                ""
            }
        );
        println!(
            "device {}: budget {}, {} resident, stream window {}, KV cache {}, activations {}, predicted peak {}",
            self.engine.backend().name(),
            ByteSize(self.engine.budget()),
            ByteSize(plan.resident_bytes),
            ByteSize(plan.stream_buffer_bytes),
            ByteSize(plan.kv_bytes),
            ByteSize(plan.activation_bytes),
            ByteSize(plan.predicted_peak()),
        );
        let kv_layers_on_host = plan.kv_on_host.iter().filter(|on_host| **on_host).count();
        println!(
            "host tier: budget {}, {} units kept ({}), KV cache of {kv_layers_on_host} layers ({})",
            ByteSize(plan.host_budget),
            plan.on_host(),
            ByteSize(plan.host_bytes),
            ByteSize(plan.host_kv_bytes),
        );
        println!(
            "disk: {} units read every pass",
            plan.streamed() - plan.on_host()
        );
    }
}
