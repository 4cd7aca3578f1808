//! Core of airllm-rs: the three traits every other crate plugs into
//! ([`LayerStore`], [`Architecture`], [`ComputeBackend`]), the host tensors and
//! storage kinds they exchange, and the streaming [`Engine`] with its residency
//! plan, KV cache, and the scheduler that batches sequences continuously.
//!
//! This crate owns no file format, no model family and no concrete device: it
//! depends on `burn` without backend features, and must stay that way so that
//! formats, compression, families and backends only ever meet through it.

pub mod arch;
pub mod backend;
pub mod dequant;
pub mod draft;
pub mod draft_model;
pub mod engine;
pub mod error;
mod experts;
pub mod family;
pub mod generate;
pub mod host;
pub mod kv;
pub mod memory;
pub mod plan;
pub mod sampling;
pub mod schedule;
pub mod scoring;
pub mod storage;
pub mod store;
pub mod telemetry;

pub use arch::{
    Architecture, DeviceUnit, ExpertLoader, Experts, LayerPass, ModelDims, PassInfo, RowSpan,
};
pub use backend::{ComputeBackend, ComputeDType, DeviceTensor, EncodedMatrix, StagedTensor};
pub use draft::{DraftKind, DraftRow, DraftSettings, Drafter, PromptLookup, Proposal};
pub use draft_model::DraftModel;
pub use engine::{Engine, EngineOptions, LoadObserver, LoadProgress, Logits};
pub use error::{Error, Result};
pub use generate::{Finish, Generated, GenerationConfig, TokenControl};
pub use host::{HostBytes, HostTensor, HostUnit};
pub use kv::KvCache;
pub use memory::ByteSize;
pub use plan::{BatchShape, DeviceFormat, PlanInput, ResidencyPlan, UnitPlacement};
pub use sampling::{Choice, Logprobs, Sampler, SamplingConfig};
pub use schedule::{DraftCounts, PassFailed, Sampled, Scheduler, SchedulerLimits};
pub use scoring::{score_text, ScoreReport, Scores};
pub use storage::{BlockKind, DType, StorageKind};
pub use store::{check_units, LayerStore, TensorInfo, UnitInfo, UnitKind, UnitSpec, WeightLayout};
pub use telemetry::{RunStats, UnitStats};
