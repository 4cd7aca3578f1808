//! Compute devices for airllm-rs: burn backends behind Cargo features —
//! `cpu` (burn's flex, the default), `ndarray`, `wgpu`, `cuda` — and the
//! run-time choice among those compiled in (`--device cpu|ndarray|wgpu|cuda[:N]`).
//! The cpu kernel ([`cpu::kernel`]) is built with every feature: it also
//! decodes the weights that other devices upload widened.
//!
//! This crate owns device selection and device-specific operations; it must
//! not read model files or know model families.

pub mod budget;
pub mod cpu;
#[cfg(any(feature = "wgpu", feature = "cuda"))]
pub mod cube;
mod pool;

use std::str::FromStr;
use std::sync::Arc;

use airllm_core::{ComputeBackend, ComputeDType, Error, HostTensor, Result, StagedTensor};
use budget::{Budgets, DeviceMemory};
use burn::tensor::backend::Backend;
use burn::tensor::Device;

/// A device the user asked for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DeviceChoice {
    /// burn's flex CPU backend.
    Cpu,
    /// burn's ndarray CPU backend.
    Ndarray,
    /// wgpu (Vulkan, Metal, DX12; Mesa's llvmpipe on machines without a GPU).
    Wgpu(usize),
    /// CUDA device `N`.
    Cuda(usize),
}

impl DeviceChoice {
    /// How this device's backend holds uploaded weights (for planning
    /// without opening the device).
    pub fn weight_layout(self) -> airllm_core::WeightLayout {
        match self {
            #[cfg(feature = "cpu")]
            DeviceChoice::Cpu => cpu::CPU_WEIGHT_LAYOUT,
            #[cfg(feature = "wgpu")]
            DeviceChoice::Wgpu(_) => cube::CUBE_WEIGHT_LAYOUT,
            #[cfg(feature = "cuda")]
            DeviceChoice::Cuda(_) => cube::CUBE_WEIGHT_LAYOUT,
            _ => airllm_core::WeightLayout::Widened,
        }
    }
}

impl FromStr for DeviceChoice {
    type Err = String;

    fn from_str(s: &str) -> std::result::Result<Self, Self::Err> {
        let (name, index) = match s.split_once(':') {
            Some((name, index)) => {
                let index = index
                    .parse()
                    .map_err(|_| format!("`{index}` in `{s}` is not a device number"))?;
                (name, Some(index))
            }
            None => (s, None),
        };
        match (name, index) {
            ("cpu", None) => Ok(DeviceChoice::Cpu),
            ("ndarray", None) => Ok(DeviceChoice::Ndarray),
            ("wgpu", index) => Ok(DeviceChoice::Wgpu(index.unwrap_or(0))),
            ("cuda", index) => Ok(DeviceChoice::Cuda(index.unwrap_or(0))),
            _ => Err(format!(
                "unknown device `{s}`; use cpu, ndarray, wgpu[:N] or cuda[:N]"
            )),
        }
    }
}

impl std::fmt::Display for DeviceChoice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DeviceChoice::Cpu => write!(f, "cpu"),
            DeviceChoice::Ndarray => write!(f, "ndarray"),
            DeviceChoice::Wgpu(i) => write!(f, "wgpu:{i}"),
            DeviceChoice::Cuda(i) => write!(f, "cuda:{i}"),
        }
    }
}

/// A burn device that computes in host memory, used as is: burn's matmul
/// for the linear op, host-side widening to f32 for uploads (ndarray, and
/// the generic reference the tests run on flex).
pub struct BurnBackend<B: Backend> {
    device: Device<B>,
    name: String,
    budget: u64,
}

impl<B: Backend> BurnBackend<B> {
    /// Wraps `device`, which computes in host memory, under a display name.
    pub fn new(device: Device<B>, name: String) -> Self {
        let budgets = Budgets::for_device(
            DeviceMemory::Host,
            airllm_core::memory::default_host_budget(),
        );
        BurnBackend {
            device,
            name,
            budget: budgets.device,
        }
    }
}

impl<B: Backend> ComputeBackend<B> for BurnBackend<B> {
    fn device(&self) -> &Device<B> {
        &self.device
    }

    fn name(&self) -> String {
        self.name.clone()
    }

    fn default_budget(&self) -> u64 {
        self.budget
    }

    fn stage(&self, tensor: &HostTensor) -> Result<StagedTensor> {
        stage_widened(tensor)
    }
}

/// `tensor` widened to f32 for upload by the cpu kernel's decoding (vector
/// code where the CPU has it, the same values as the portable decoding).
pub(crate) fn stage_widened(tensor: &HostTensor) -> Result<StagedTensor> {
    Ok(StagedTensor::decoded(tensor, cpu::kernel::widen(tensor)?))
}

/// How precisely the cpu backend's linear op multiplies activations with
/// weights.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Activations {
    /// Rounded where that is faster, each product within llama.cpp's bound
    /// for quantized products (normalized MSE 5e-4); the default. One row
    /// (decoding) against block-quantized weights is quantized to 16-bit
    /// integers per group of 32 values and dotted with the blocks in
    /// integers (steps 256 times finer than llama.cpp's 8-bit activations,
    /// which change the answers of real models). Batches and prompts, on
    /// CPUs with AMX, are split into high and low bf16 parts and multiplied
    /// by the tile units (with block kinds' integer codes, bf16 weights, or
    /// f32 and f16 weights split too).
    #[default]
    Reduced,
    /// f32 everywhere: slower, logits closest to the reference.
    F32,
}

impl FromStr for Activations {
    type Err = String;

    fn from_str(s: &str) -> std::result::Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "reduced" => Ok(Activations::Reduced),
            "f32" => Ok(Activations::F32),
            _ => Err(format!(
                "unknown activation precision `{s}`; use reduced or f32"
            )),
        }
    }
}

/// How a job runs on its device.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DeviceOptions {
    /// Compute dtype.
    pub dtype: ComputeDType,
    /// Threads of the pool that the kernels and burn's CPU work share
    /// (default: the physical cores, see [`default_threads`]).
    pub threads: Option<usize>,
    /// Activation precision for block-quantized weights on the cpu.
    pub activations: Activations,
}

/// The physical cores this process may use.
pub fn default_threads() -> usize {
    num_cpus::get_physical().min(num_cpus::get()).max(1)
}

/// Work to run on whichever backend the user picked: generic over the burn
/// backend, so it is compiled once per backend built in.
pub trait BackendJob {
    /// What the job returns.
    type Output;

    /// Runs the job on `backend`.
    fn run<B: Backend>(self, backend: Arc<dyn ComputeBackend<B>>) -> Result<Self::Output>;
}

fn not_built(choice: DeviceChoice, feature: &str) -> Error {
    Error::Backend(format!(
        "device `{choice}` needs the `{feature}` feature, and this binary was built without it; rebuild with `cargo build --release --features {feature}`"
    ))
}

/// Starts `device` computing in `dtype` with a one-value round trip, so a
/// missing driver or adapter (which burn's runtimes report by panicking)
/// becomes an error naming the device and `remedy`, and a dtype the device
/// lacks, or another than this process already computes in on it, a named
/// error too.
#[cfg(any(feature = "wgpu", feature = "cuda"))]
fn probe<B: Backend>(
    device: &Device<B>,
    choice: DeviceChoice,
    dtype: ComputeDType,
    remedy: &str,
) -> Result<()> {
    use burn::tensor::{Tensor, TensorData};
    let outcome = quiet_panics(|| {
        set_compute_dtype::<B>(device, choice, dtype)?;
        Ok(Tensor::<B, 1>::from_data(TensorData::new(vec![1.0f32], [1]), device).into_data())
    });
    outcome
        .map_err(|panic| {
            let reason = panic
                .downcast_ref::<String>()
                .map(String::as_str)
                .or_else(|| panic.downcast_ref::<&str>().copied())
                .unwrap_or("the runtime panicked");
            Error::Backend(format!(
                "device `{choice}` could not start: {reason}. {remedy}"
            ))
        })?
        .map(|_| ())
}

/// Makes `dtype` the float dtype `device` creates tensors in, before its
/// first tensor fixes it: a dtype the device cannot compute in is an
/// error, and so is another than the one this process already computes in
/// there (burn fixes a device's dtype once per process).
#[cfg(any(feature = "wgpu", feature = "cuda"))]
fn set_compute_dtype<B: Backend>(
    device: &Device<B>,
    choice: DeviceChoice,
    dtype: ComputeDType,
) -> Result<()> {
    use burn::tensor::backend::set_default_float_dtype;
    use burn::tensor::{get_device_settings, FloatDType};
    let wanted = dtype.burn_dtype();
    if !B::supports_dtype(device, wanted) {
        return Err(Error::Config {
            setting: "--dtype".into(),
            detail: format!(
                "device `{choice}` cannot compute in {dtype}{}; use --dtype f32",
                match choice {
                    DeviceChoice::Wgpu(_) => " (its adapter lacks the SHADER_F16 feature)",
                    _ => "",
                }
            ),
        });
    }
    if dtype != ComputeDType::F32 && set_default_float_dtype::<B>(device, wanted).is_ok() {
        return Ok(());
    }
    let current = get_device_settings::<B>(device).float_dtype;
    if current != FloatDType::from(wanted) {
        return Err(Error::Config {
            setting: "--dtype".into(),
            detail: format!(
                "device `{choice}` already computes in {current:?} in this process, and a \
                 process computes in one dtype per device; start another process for {dtype}"
            ),
        });
    }
    Ok(())
}

/// Whether `choice` can compute in `dtype` at all, before starting it:
/// half precision is for GPUs (the cpu's precision is `--activations`),
/// and WGSL has no bf16.
fn check_dtype(choice: DeviceChoice, dtype: ComputeDType) -> Result<()> {
    let refusal = match (choice, dtype) {
        (_, ComputeDType::F32) => return Ok(()),
        (DeviceChoice::Cuda(_), _) | (DeviceChoice::Wgpu(_), ComputeDType::F16) => return Ok(()),
        (DeviceChoice::Wgpu(_), _) => {
            "wgpu has no bf16 (WGSL has none); use --dtype f16 or f32".to_string()
        }
        (DeviceChoice::Cpu | DeviceChoice::Ndarray, _) => format!(
            "`{choice}` computes in f32 (weights stay in their stored dtype; \
             --activations sets the cpu's precision); use --dtype f32, or --dtype {dtype} on wgpu or cuda"
        ),
    };
    Err(Error::Config {
        setting: "--dtype".into(),
        detail: refusal,
    })
}

/// Runs `f`, catching a panic without the panic hook's message on this
/// thread. The process's hook is wrapped once and never swapped back and
/// forth, so threads probing at once cannot leave it silenced for others.
#[cfg(any(feature = "wgpu", feature = "cuda"))]
fn quiet_panics<T>(f: impl FnOnce() -> T) -> std::thread::Result<T> {
    use std::cell::Cell;
    thread_local! {
        static QUIET: Cell<bool> = const { Cell::new(false) };
    }
    static WRAP_HOOK: std::sync::Once = std::sync::Once::new();
    WRAP_HOOK.call_once(|| {
        let report = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if !QUIET.with(Cell::get) {
                report(info)
            }
        }));
    });
    QUIET.with(|quiet| quiet.set(true));
    let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f));
    QUIET.with(|quiet| quiet.set(false));
    outcome
}

/// The memory the wgpu adapter behind `device` computes in: host memory
/// for a `Cpu` adapter (Mesa's lavapipe) or an integrated GPU, its own
/// (of a size wgpu cannot tell) otherwise. `DefaultDevice` is the adapter
/// burn's runtime picks for it, the high-performance one of the platform's
/// graphics API.
#[cfg(feature = "wgpu")]
fn wgpu_memory(device: &burn::backend::wgpu::WgpuDevice) -> DeviceMemory {
    use burn::backend::wgpu::WgpuDevice;
    use wgpu::DeviceType;
    let adapter = match device {
        WgpuDevice::DefaultDevice => default_wgpu_adapter(),
        WgpuDevice::DiscreteGpu(_) => Some(DeviceType::DiscreteGpu),
        WgpuDevice::IntegratedGpu(_) => Some(DeviceType::IntegratedGpu),
        WgpuDevice::Cpu => Some(DeviceType::Cpu),
        _ => None,
    };
    match adapter {
        Some(DeviceType::Cpu | DeviceType::IntegratedGpu) => DeviceMemory::Host,
        _ => DeviceMemory::Dedicated { free: None },
    }
}

/// The type of the adapter wgpu offers first for high performance on the
/// graphics API burn's runtime uses (asked once per process).
#[cfg(feature = "wgpu")]
fn default_wgpu_adapter() -> Option<wgpu::DeviceType> {
    use burn::backend::wgpu::graphics::{AutoGraphicsApi, GraphicsApi};
    static ADAPTER: std::sync::OnceLock<Option<wgpu::DeviceType>> = std::sync::OnceLock::new();
    *ADAPTER.get_or_init(|| {
        let instance = wgpu::Instance::new(wgpu::InstanceDescriptor {
            backends: AutoGraphicsApi::backend().into(),
            ..wgpu::InstanceDescriptor::new_without_display_handle()
        });
        let options = wgpu::RequestAdapterOptions {
            power_preference: wgpu::PowerPreference::HighPerformance,
            force_fallback_adapter: false,
            compatible_surface: None,
        };
        let adapter = futures_lite::future::block_on(instance.request_adapter(&options)).ok()?;
        Some(adapter.get_info().device_type)
    })
}

/// CUDA device `index`'s memory, with what it has free now (unknown, with
/// a warning, where the driver will not say).
#[cfg(feature = "cuda")]
fn cuda_memory(index: usize) -> DeviceMemory {
    let free = cudarc::driver::CudaContext::new(index).and_then(|context| context.mem_get_info());
    match free {
        Ok((free, _total)) => DeviceMemory::Dedicated {
            free: Some(free as u64),
        },
        Err(e) => {
            tracing::warn!(
                "cuda:{index} does not report its free memory ({e:?}); set --max-memory"
            );
            DeviceMemory::Dedicated { free: None }
        }
    }
}

/// What to install when a wgpu adapter is missing.
#[cfg(feature = "wgpu")]
const WGPU_REMEDY: &str = "Install a GPU driver with Vulkan support, or Mesa's software Vulkan \
(Debian/Ubuntu: `apt-get install mesa-vulkan-drivers libvulkan1`), or use --device cpu.";

/// What to install when CUDA cannot start.
#[cfg(feature = "cuda")]
const CUDA_REMEDY: &str = "Check that an NVIDIA GPU is present and its driver is installed \
(`nvidia-smi` lists it), or use --device cpu.";

/// Runs `job` on the device `choice` names, as `options` say, inside a
/// rayon pool of `options.threads` threads (the others spin for its
/// parallel work, see [`pool`]).
pub fn dispatch<J>(choice: DeviceChoice, options: DeviceOptions, job: J) -> Result<J::Output>
where
    J: BackendJob + Send,
    J::Output: Send,
{
    let threads = options.threads.unwrap_or_else(default_threads);
    if threads == 0 {
        return Err(Error::Request("--threads must be at least 1".into()));
    }
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .thread_name(|i| format!("airllm-compute-{i}"))
        .build()
        .map_err(|e| Error::Backend(format!("starting {threads} compute threads: {e}")))?;
    pool::run_with_helpers(&pool, || dispatch_in_pool(choice, options, job))
}

fn dispatch_in_pool<J: BackendJob>(
    choice: DeviceChoice,
    options: DeviceOptions,
    job: J,
) -> Result<J::Output> {
    let dtype = options.dtype;
    check_dtype(choice, dtype)?;
    match choice {
        DeviceChoice::Cpu => {
            #[cfg(feature = "cpu")]
            {
                let backend = cpu::CpuBackend::new(options.activations);
                return job.run::<burn::backend::flex::Flex>(Arc::new(backend));
            }
            #[allow(unreachable_code)]
            Err(not_built(choice, "cpu"))
        }
        DeviceChoice::Ndarray => {
            #[cfg(feature = "ndarray")]
            {
                use burn::backend::ndarray::{NdArray, NdArrayDevice};
                let backend = BurnBackend::<NdArray>::new(NdArrayDevice::Cpu, choice.to_string());
                return job.run::<NdArray>(Arc::new(backend));
            }
            #[allow(unreachable_code)]
            Err(not_built(choice, "ndarray"))
        }
        DeviceChoice::Wgpu(index) => {
            #[cfg(feature = "wgpu")]
            {
                use burn::backend::wgpu::{Wgpu, WgpuDevice};
                let device = if index == 0 {
                    WgpuDevice::DefaultDevice
                } else {
                    WgpuDevice::DiscreteGpu(index)
                };
                probe::<Wgpu>(&device, choice, dtype, WGPU_REMEDY)?;
                let memory = wgpu_memory(&device);
                let backend =
                    cube::CubeComputeBackend::new(device, choice.to_string(), memory, dtype);
                return job.run::<Wgpu>(Arc::new(backend));
            }
            #[allow(unreachable_code)]
            {
                let _ = index;
                Err(not_built(choice, "wgpu"))
            }
        }
        DeviceChoice::Cuda(index) => {
            #[cfg(feature = "cuda")]
            {
                use burn::backend::cuda::{Cuda, CudaDevice};
                let device = CudaDevice { index };
                probe::<Cuda>(&device, choice, dtype, CUDA_REMEDY)?;
                let backend = cube::CubeComputeBackend::new(
                    device,
                    choice.to_string(),
                    cuda_memory(index),
                    dtype,
                );
                return job.run::<Cuda>(Arc::new(backend));
            }
            #[allow(unreachable_code)]
            {
                let _ = index;
                Err(not_built(choice, "cuda"))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_devices() {
        assert_eq!("cpu".parse(), Ok(DeviceChoice::Cpu));
        assert_eq!("cuda:1".parse(), Ok(DeviceChoice::Cuda(1)));
        assert_eq!("wgpu".parse(), Ok(DeviceChoice::Wgpu(0)));
        assert!("tpu".parse::<DeviceChoice>().is_err());
        assert!("cuda:x".parse::<DeviceChoice>().is_err());
    }

    /// Probes on several threads at once silence only their own panics:
    /// a later panic elsewhere still reaches the process's hook.
    #[cfg(any(feature = "wgpu", feature = "cuda"))]
    #[test]
    fn quiet_panics_leave_the_hook_to_other_threads() {
        use std::sync::atomic::{AtomicUsize, Ordering};
        static REPORTED: AtomicUsize = AtomicUsize::new(0);
        std::panic::set_hook(Box::new(|_| {
            REPORTED.fetch_add(1, Ordering::SeqCst);
        }));
        let probes: Vec<_> = (0..8)
            .map(|_| std::thread::spawn(|| quiet_panics(|| panic!("no adapter")).is_err()))
            .collect();
        for probe in probes {
            assert!(probe.join().unwrap(), "the panic is caught");
        }
        assert_eq!(REPORTED.load(Ordering::SeqCst), 0, "probes are quiet");
        let loud = std::thread::spawn(|| panic!("a real failure")).join();
        assert!(loud.is_err());
        assert_eq!(
            REPORTED.load(Ordering::SeqCst),
            1,
            "other panics are reported"
        );
    }

    #[test]
    fn half_precision_is_for_gpus() {
        assert!(check_dtype(DeviceChoice::Cuda(0), ComputeDType::BF16).is_ok());
        assert!(check_dtype(DeviceChoice::Wgpu(1), ComputeDType::F16).is_ok());
        assert!(check_dtype(DeviceChoice::Cpu, ComputeDType::F32).is_ok());
        let wgpu = check_dtype(DeviceChoice::Wgpu(0), ComputeDType::BF16)
            .unwrap_err()
            .to_string();
        assert!(
            wgpu.contains("--dtype") && wgpu.contains("no bf16"),
            "{wgpu}"
        );
        let cpu = check_dtype(DeviceChoice::Cpu, ComputeDType::F16)
            .unwrap_err()
            .to_string();
        assert!(
            cpu.contains("--dtype") && cpu.contains("--activations"),
            "{cpu}"
        );
    }

    #[test]
    fn parses_activation_precisions() {
        assert_eq!("Reduced".parse(), Ok(Activations::Reduced));
        assert_eq!("f32".parse(), Ok(Activations::F32));
        assert!("q8".parse::<Activations>().is_err());
    }
}
