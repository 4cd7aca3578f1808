//! Uploads overlap compute: with every layer streamed, the reader thread
//! uploads layer n + 1 while the compute thread runs layer n. A backend over
//! flex that sleeps in each layer's upload and in its MLP makes the two
//! phases long enough to see: the pass takes about one upload plus one
//! compute per layer, not their sum. Every pass's reader uploads on one
//! stream (a cubecl runtime keeps memory pools per stream).

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use airllm_backends::BurnBackend;
use airllm_core::{
    BatchShape, ComputeBackend, DeviceTensor, Engine, HostTensor, KvCache, Logits, Result,
    StagedTensor,
};
use airllm_tests::{engine, fixture, reference, Budget};
use burn::backend::flex::{Flex, FlexDevice};
use burn::tensor::{Device, StreamId, Tensor};

/// What each delayed phase sleeps.
const DELAY: Duration = Duration::from_millis(60);

/// A delayed phase: which layer, on which thread, from when to when.
#[derive(Clone, Debug)]
struct Phase {
    layer: usize,
    thread: String,
    start: Instant,
    end: Instant,
}

/// Flex with a [`DELAY`] in each layer's upload (at its down projection)
/// and in each layer's MLP activation, recording both and the streams
/// layers upload on.
struct DelayedBackend {
    inner: BurnBackend<Flex>,
    uploads: Mutex<Vec<Phase>>,
    computes: Mutex<Vec<Phase>>,
    upload_streams: Mutex<BTreeSet<u64>>,
}

impl DelayedBackend {
    fn delay(log: &Mutex<Vec<Phase>>, layer: usize) {
        let start = Instant::now();
        std::thread::sleep(DELAY);
        log.lock().unwrap().push(Phase {
            layer,
            thread: std::thread::current().name().unwrap_or_default().into(),
            start,
            end: Instant::now(),
        });
    }
}

/// The layer number in a tensor name such as `model.layers.2.mlp.down_proj.weight`.
fn layer_of(name: &str) -> Option<usize> {
    let rest = name.split("layers.").nth(1)?;
    rest.split('.').next()?.parse().ok()
}

impl ComputeBackend<Flex> for DelayedBackend {
    fn device(&self) -> &Device<Flex> {
        self.inner.device()
    }

    fn name(&self) -> String {
        "delayed".into()
    }

    fn default_budget(&self) -> u64 {
        self.inner.default_budget()
    }

    fn stage(&self, tensor: &HostTensor) -> Result<StagedTensor> {
        self.inner.stage(tensor)
    }

    fn upload(&self, staged: StagedTensor) -> Result<DeviceTensor<Flex>> {
        if let StagedTensor::Decoded { name, .. } = &staged {
            if let Some(layer) = layer_of(name) {
                let stream = StreamId::current().value;
                self.upload_streams.lock().unwrap().insert(stream);
                if name.ends_with("down_proj.weight") {
                    Self::delay(&self.uploads, layer);
                }
            }
        }
        self.inner.upload(staged)
    }

    fn gated_silu(&self, gate: Tensor<Flex, 3>, up: Tensor<Flex, 3>) -> Result<Tensor<Flex, 3>> {
        let layer = self.computes.lock().unwrap().len();
        Self::delay(&self.computes, layer);
        self.inner.gated_silu(gate, up)
    }
}

/// A pass over llama-gqa's first prompt with every layer and the head
/// streamed on a [`DelayedBackend`].
struct StreamedPass {
    backend: Arc<DelayedBackend>,
    engine: Engine<Flex>,
    ids: Vec<u32>,
}

impl StreamedPass {
    fn new() -> Self {
        let name = "llama-gqa";
        let ids = reference(name).prompts.remove(0).ids;
        let shape = BatchShape {
            batch: 1,
            chunk: ids.len(),
            context: ids.len(),
        };
        let backend = Arc::new(DelayedBackend {
            inner: BurnBackend::new(FlexDevice, "flex".into()),
            uploads: Mutex::default(),
            computes: Mutex::default(),
            upload_streams: Mutex::default(),
        });
        let mut engine =
            engine(&fixture(name), backend.clone(), Budget::StreamAll, 1, shape).expect("engine");
        engine.prepare(1, ids.len(), ids.len()).expect("prepare");
        let layers = engine.arch().dims().layers;
        assert_eq!(engine.plan().unwrap().streamed(), layers + 1);
        StreamedPass {
            backend,
            engine,
            ids,
        }
    }

    /// Runs one pass from an empty cache; returns its time.
    fn run(&mut self) -> Duration {
        let mut kv = KvCache::new(self.engine.arch().dims().layers, self.ids.len());
        let started = Instant::now();
        self.engine
            .forward(
                std::slice::from_ref(&self.ids),
                &mut [&mut kv],
                Logits::Last,
            )
            .expect("pass");
        started.elapsed()
    }
}

#[test]
fn the_next_layer_uploads_while_this_one_computes() {
    let mut streamed = StreamedPass::new();
    let pass = streamed.run();
    let (backend, layers) = (&streamed.backend, streamed.engine.arch().dims().layers);

    let uploads = backend.uploads.lock().unwrap().clone();
    let computes = backend.computes.lock().unwrap().clone();
    assert_eq!(uploads.len(), layers, "{uploads:?}");
    assert_eq!(computes.len(), layers, "{computes:?}");
    for upload in &uploads {
        assert_eq!(upload.thread, "airllm-reader", "uploads run on the reader");
    }
    for (layer, compute) in computes.iter().enumerate().take(layers - 1) {
        let next_upload = uploads.iter().find(|u| u.layer == layer + 1).unwrap();
        assert!(
            next_upload.start < compute.end,
            "layer {}'s upload started {:?} after layer {layer}'s compute ended",
            layer + 1,
            next_upload.start.saturating_duration_since(compute.end)
        );
    }
    // Serial: an upload and a compute per layer. Overlapped: the first
    // upload, then a compute per layer (each next upload hidden under it).
    let serial = 2 * DELAY * layers as u32;
    let overlapped = DELAY * (layers as u32 + 1);
    eprintln!("pass {pass:?}: serial {serial:?}, overlapped {overlapped:?}");
    assert!(
        pass < (serial + overlapped) / 2,
        "the pass took {pass:?}: uploads did not overlap compute (serial {serial:?}, overlapped {overlapped:?})"
    );
}

/// Each pass starts its own reader thread, and all of them upload on one
/// stream, not the compute thread's: on a cubecl runtime, whose memory
/// pools belong to a stream, the streamed units' memory is reused pass
/// after pass instead of held by one more stream's pools each time.
#[test]
fn every_pass_uploads_on_one_stream() {
    let mut streamed = StreamedPass::new();
    for _ in 0..3 {
        streamed.run();
    }
    let streams = streamed.backend.upload_streams.lock().unwrap().clone();
    assert_eq!(streams.len(), 1, "uploads ran on streams {streams:?}");
    assert!(!streams.contains(&StreamId::current().value));
}
