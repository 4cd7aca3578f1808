//! `airllm inspect`: family, units and their bytes, and the residency plan
//! for a budget.

use airllm_core::memory::default_host_budget;
use airllm_core::{check_units, BatchShape, ByteSize, PlanInput, ResidencyPlan, Result};
use serde_json::json;

use crate::cli::InspectArgs;
use crate::model;

/// Runs the command.
pub fn run(args: InspectArgs) -> Result<()> {
    let dir = model::open_dir(&args.model)?;
    let layout = airllm_models::layout(&dir.config)?;
    let store = dir.open_store(&layout.units)?;
    check_units(store.units(), &layout.units)?;
    if args.verify {
        for index in 0..store.units().len() {
            store.verify_unit(index)?;
        }
    }
    let budget = args.max_memory.map_or_else(default_host_budget, |m| m.0);
    let context = args.context.unwrap_or(layout.dims.max_positions);
    let shape = BatchShape {
        batch: args.batch,
        chunk: context.min(512),
        context,
    };
    let plan = ResidencyPlan::new(&PlanInput::for_model(
        store.units(),
        &layout.units,
        &layout.dims,
        shape,
        args.prefetch,
        budget,
        args.device.weight_layout(),
    ))?;
    let units: Vec<_> = store
        .units()
        .iter()
        .zip(&plan.placements)
        .map(|(u, p)| {
            json!({
                "name": u.name,
                "file_bytes": u.bytes,
                "device_bytes": u.device_bytes(args.device.weight_layout()),
                "placement": format!("{p:?}").to_lowercase(),
            })
        })
        .collect();
    let file_bytes: u64 = store.units().iter().map(|u| u.bytes).sum();
    if args.json {
        let report = json!({
            "family": layout.family,
            "path": dir.path,
            "layout": format!("{:?}", dir.kind),
            "units": units,
            "file_bytes": file_bytes,
            "budget_bytes": budget,
            "resident_bytes": plan.resident_bytes,
            "units_streamed": plan.streamed(),
            "predicted_peak_bytes": plan.predicted_peak(),
            "verified": args.verify,
        });
        println!("{report}");
        return Ok(());
    }
    println!(
        "{} ({:?} layout, family {})",
        dir.path.display(),
        dir.kind,
        layout.family
    );
    println!(
        "{:<12} {:>12} {:>12}  placement",
        "unit", "file", "on device"
    );
    for (u, p) in store.units().iter().zip(&plan.placements) {
        println!(
            "{:<12} {:>12} {:>12}  {p:?}",
            u.name,
            ByteSize(u.bytes).to_string(),
            ByteSize(u.device_bytes(args.device.weight_layout())).to_string()
        );
    }
    println!(
        "total {} on disk; budget {}: {} resident, {} units streamed, KV cache {}, activations {}, predicted peak {}{}",
        ByteSize(file_bytes),
        ByteSize(budget),
        ByteSize(plan.resident_bytes),
        plan.streamed(),
        ByteSize(plan.kv_bytes),
        ByteSize(plan.activation_bytes),
        ByteSize(plan.predicted_peak()),
        if args.verify { "; all checksums verified" } else { "" }
    );
    Ok(())
}
