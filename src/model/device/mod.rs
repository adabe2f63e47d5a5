//! Where a model runs and in which data type: the `--device` and `--dtype` flags, what each
//! device supports, and how the engine should drive it ([`tuning`]).
//!
//! CUDA is a cargo feature (`cuda`); a build without it refuses `--device cuda` with the command
//! that builds one.

use std::fmt;
use std::str::FromStr;

use candle_core::{DType, Device};

use crate::error::{Error, Result};

mod cpu;
pub(crate) mod mkl;
pub(crate) mod tuning;

pub(crate) use cpu::CpuFeatures;

pub(crate) use tuning::{tuning, GradientPlan, Passes, DEFAULT_TOKEN_BUDGET};

/// `--device`: `auto`, `cpu`, `cuda` (= `cuda:0`) or `cuda:N`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DeviceChoice {
    /// The first CUDA GPU when this build has CUDA and one is present, else the CPU.
    #[default]
    Auto,
    /// The CPU.
    Cpu,
    /// CUDA GPU number N (`cuda:N`).
    Cuda(usize),
}

impl FromStr for DeviceChoice {
    type Err = String;

    fn from_str(s: &str) -> std::result::Result<Self, String> {
        let s = s.trim().to_ascii_lowercase();
        match s.as_str() {
            "auto" => Ok(DeviceChoice::Auto),
            "cpu" => Ok(DeviceChoice::Cpu),
            "cuda" | "gpu" => Ok(DeviceChoice::Cuda(0)),
            _ => s
                .strip_prefix("cuda:")
                .and_then(|n| n.parse().ok())
                .map(DeviceChoice::Cuda)
                .ok_or_else(|| format!("{s:?} is not a device: use auto, cpu, cuda or cuda:N")),
        }
    }
}

impl fmt::Display for DeviceChoice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DeviceChoice::Auto => f.write_str("auto"),
            DeviceChoice::Cpu => f.write_str("cpu"),
            DeviceChoice::Cuda(i) => write!(f, "cuda:{i}"),
        }
    }
}

/// `--dtype`: `auto` (f32 on the CPU, bf16 on a GPU), `f32`, `bf16` or `f16`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DtypeChoice {
    /// f32 on the CPU, bf16 on a GPU.
    #[default]
    Auto,
    /// This data type, wherever the model runs.
    Fixed(DType),
}

/// The data types a forward pass may run in, by their flag names.
const DTYPES: &[(&str, DType)] = &[("f32", DType::F32), ("bf16", DType::BF16), ("f16", DType::F16)];

impl FromStr for DtypeChoice {
    type Err = String;

    fn from_str(s: &str) -> std::result::Result<Self, String> {
        let s = s.trim().to_ascii_lowercase();
        if s == "auto" {
            return Ok(DtypeChoice::Auto);
        }
        DTYPES
            .iter()
            .find(|(name, _)| *name == s)
            .map(|&(_, d)| DtypeChoice::Fixed(d))
            .ok_or_else(|| format!("{s:?} is not a dtype: use auto, f32, bf16 or f16"))
    }
}

impl fmt::Display for DtypeChoice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DtypeChoice::Auto => f.write_str("auto"),
            DtypeChoice::Fixed(d) => f.write_str(d.as_str()),
        }
    }
}

/// `--device`, `--dtype` and `--gradient-passes`, shared by `serve`, `attribute` and `bench`.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct DeviceArgs {
    /// Where the model runs: auto (the first CUDA GPU when this build has CUDA and one is
    /// present, else the CPU), cpu, cuda or cuda:N.
    #[arg(long, env = "LLM_ATTR_DEVICE", default_value_t = DeviceChoice::Auto)]
    pub device: DeviceChoice,
    /// Data type of the weights and the forward pass: auto (f32 on the CPU, bf16 on a GPU),
    /// f32, bf16 or f16.
    #[arg(long, env = "LLM_ATTR_DTYPE", default_value_t = DtypeChoice::Auto)]
    pub dtype: DtypeChoice,
    /// How the gradient methods give each target token its gradients: per-token (a backward
    /// pass each; the least arithmetic, the CPU's default) or stacked (one pass over a copy of
    /// the input per token; the fewest kernel launches, a GPU's default).
    #[arg(long, env = "LLM_ATTR_GRADIENT_PASSES", value_enum)]
    pub gradient_passes: Option<Passes>,
    /// Megabytes of prefix keys and values kept on the device across batches and requests (a
    /// chat's system prompt, a document's head), so that a sequence starting with one is
    /// computed from where it ends; 0 keeps none (the sequences of one batch still share their
    /// prefix).
    #[arg(long, env = "LLM_ATTR_PREFIX_CACHE_MB", default_value_t = crate::model::DEFAULT_PREFIX_CACHE_MB)]
    pub prefix_cache_mb: usize,
}

impl DeviceArgs {
    /// Opens the device and checks it runs the data type.
    pub(crate) fn load_options(&self) -> Result<LoadOptions> {
        let mut options = resolve(self.device, self.dtype)?;
        options.gradient_passes = self.gradient_passes;
        options.prefix_cache_mb = Some(self.prefix_cache_mb);
        Ok(options)
    }
}

/// Where to put a model and in which data type.
#[derive(Debug, Clone)]
pub struct LoadOptions {
    /// Where the weights live and the forward passes run.
    pub device: Device,
    /// `None`: f32 on the CPU, bf16 elsewhere.
    pub dtype: Option<DType>,
    /// `None`: what suits the device ([`device::tuning`]).
    pub gradient_passes: Option<Passes>,
    /// Bound of the prefix cache in megabytes; `None`: the default
    /// ([`crate::model::DEFAULT_PREFIX_CACHE_MB`]).
    pub prefix_cache_mb: Option<usize>,
}

impl LoadOptions {
    /// Options for `device` and `dtype` (None: the device's default), gradient passes as suit the device.
    pub fn new(device: Device, dtype: Option<DType>) -> Self {
        LoadOptions {
            device,
            dtype,
            gradient_passes: None,
            prefix_cache_mb: None,
        }
    }

    /// The data type the weights are loaded in and the forward pass runs in.
    pub fn dtype(&self) -> DType {
        match self.dtype {
            Some(d) => d,
            None if self.device.is_cpu() => DType::F32,
            None => DType::BF16,
        }
    }
}

impl Default for LoadOptions {
    /// The CPU in f32: what the CLI and server use unless told otherwise.
    fn default() -> Self {
        LoadOptions::new(Device::Cpu, None)
    }
}

/// Opens `device` and checks that it runs `dtype`; errors say what to do instead.
pub fn resolve(device: DeviceChoice, dtype: DtypeChoice) -> Result<LoadOptions> {
    let device = match device {
        DeviceChoice::Cpu => Device::Cpu,
        DeviceChoice::Cuda(i) => cuda::open(i)?,
        DeviceChoice::Auto => cuda::first_present().unwrap_or(Device::Cpu),
    };
    let options = LoadOptions::new(
        device,
        match dtype {
            DtypeChoice::Auto => None,
            DtypeChoice::Fixed(d) => Some(d),
        },
    );
    check_dtype(&options.device, options.dtype())?;
    Ok(options)
}

/// The data types the CPU runs without asking the hardware: candle's f32 and f16 matmuls.
const CPU_DTYPES: &[DType] = &[DType::F32, DType::F16];

/// `LLM_ATTR_CPU_BF16=emulate` lets bf16 run on a CPU without a bf16 unit, on MKL's emulation
/// (slower than f32): for testing the bf16 path (parity in CI), not for speed.
const EMULATE_VAR: &str = "LLM_ATTR_CPU_BF16";

/// True when [`EMULATE_VAR`] asks for MKL's emulation of the bf16 units.
fn cpu_bf16_emulated() -> bool {
    std::env::var(EMULATE_VAR).is_ok_and(|v| v.trim().eq_ignore_ascii_case("emulate"))
}

fn check_dtype(device: &Device, dtype: DType) -> Result<()> {
    match device {
        Device::Cpu if CPU_DTYPES.contains(&dtype) => Ok(()),
        Device::Cpu if dtype == DType::BF16 => {
            check_cpu_bf16(&CpuFeatures::detect(), cpu_bf16_emulated())?;
            check_mkl()
        }
        Device::Cpu => Err(Error::invalid(
            "dtype",
            format!("the CPU does not run {}: use --dtype f32 or f16", dtype.as_str()),
        )),
        _ => cuda::check_dtype(device, dtype),
    }
}

/// bf16 on the CPU needs a bf16 matrix unit (AMX-bf16 or AVX512-BF16), or `emulate`
/// ([`EMULATE_VAR`]); the error names what the CPU has instead.
fn check_cpu_bf16(cpu: &CpuFeatures, emulate: bool) -> Result<()> {
    if cpu.has_bf16_matmul() || emulate {
        return Ok(());
    }
    Err(Error::invalid(
        "dtype",
        format!(
            "bf16 on the CPU needs AMX-bf16 or AVX512-BF16; this CPU has {cpu}: use --dtype f32 \
             (the default on the CPU) or f16 ({EMULATE_VAR}=emulate runs MKL's slower emulation, \
             for testing)"
        ),
    ))
}

/// bf16 on the CPU multiplies through Intel MKL, loaded at run time; the error says where it
/// was looked for and how to get it.
fn check_mkl() -> Result<()> {
    match mkl::get() {
        Ok(m) => {
            tracing::info!("bf16 matmuls on the CPU through {}", m.path);
            Ok(())
        }
        Err(e) => Err(Error::invalid(
            "dtype",
            format!("bf16 on the CPU runs on Intel MKL: {e}"),
        )),
    }
}

/// The data type a forward pass computes in with weights of `dtype` on `device`: bf16 on the
/// CPU is a storage type (its matmul takes f32 rows and accumulates in f32), the rest as given.
pub(crate) fn compute_dtype(device: &Device, dtype: DType) -> DType {
    match dtype {
        DType::BF16 if device.is_cpu() => DType::F32,
        d => d,
    }
}

/// A short name for logs and `/v1/model`: `cpu`, `cuda:0`.
pub(crate) fn name(device: &Device) -> String {
    match device.location() {
        candle_core::DeviceLocation::Cpu => "cpu".into(),
        candle_core::DeviceLocation::Cuda { gpu_id } => format!("cuda:{gpu_id}"),
        candle_core::DeviceLocation::Metal { gpu_id } => format!("metal:{gpu_id}"),
    }
}

/// True when a forward pass failed because the device ran out of memory (the CUDA driver's
/// and cuBLAS's allocation errors; candle passes them on as text).
pub(crate) fn is_out_of_memory(e: &candle_core::Error) -> bool {
    let text = e.to_string();
    [
        "CUDA_ERROR_OUT_OF_MEMORY",
        "CUBLAS_STATUS_ALLOC_FAILED",
        "out of memory",
    ]
    .iter()
    .any(|s| text.contains(s))
}

#[cfg(not(feature = "cuda"))]
mod cuda {
    use super::*;

    pub(super) fn open(_: usize) -> Result<Device> {
        Err(Error::invalid(
            "device",
            "this llm-attr was built without CUDA: build it with `cargo build --release --features cuda` \
             (scripts/build-cuda.sh sets up the CUDA toolkit, no GPU needed), or use --device cpu",
        ))
    }

    pub(super) fn first_present() -> Option<Device> {
        None
    }

    pub(super) fn check_dtype(_: &Device, _: DType) -> Result<()> {
        Ok(())
    }
}

#[cfg(feature = "cuda")]
mod cuda {
    use super::*;
    use candle_core::cuda_backend::cudarc::driver::CudaContext;

    /// The compute capability the CUDA kernels were compiled for (`CUDA_COMPUTE_CAP` at build
    /// time, e.g. `90`), when known. The PTX runs on that capability and newer ones only.
    const BUILT_FOR: Option<&str> = option_env!("LLM_ATTR_CUDA_COMPUTE_CAP");

    /// The oldest compute capability with native kernels for each data type in candle.
    const MIN_CAPABILITY: &[(DType, (i32, i32))] =
        &[(DType::F32, (5, 0)), (DType::F16, (5, 3)), (DType::BF16, (8, 0))];

    fn count() -> Result<usize> {
        CudaContext::device_count()
            .map(|n| n.max(0) as usize)
            .map_err(|e| Error::invalid("device", format!("no CUDA GPU found ({e}); use --device cpu")))
    }

    pub(super) fn open(i: usize) -> Result<Device> {
        let n = count()?;
        if n == 0 {
            return Err(Error::invalid("device", "no CUDA GPU found; use --device cpu"));
        }
        if i >= n {
            return Err(Error::invalid(
                "device",
                format!(
                    "cuda:{i} is out of range: {n} CUDA GPU(s) found (cuda:0 to cuda:{})",
                    n - 1
                ),
            ));
        }
        check_built_for(i)?;
        Device::new_cuda(i).map_err(|e| Error::invalid("device", format!("cannot open cuda:{i}: {e}")))
    }

    pub(crate) fn first_present() -> Option<Device> {
        match count() {
            Ok(n) if n > 0 => open(0)
                .inspect_err(|e| tracing::warn!("a GPU is present but unusable, running on the CPU: {e}"))
                .ok(),
            _ => None,
        }
    }

    fn capability(i: usize) -> Result<(String, (i32, i32))> {
        let ctx = CudaContext::new(i)
            .map_err(|e| Error::invalid("device", format!("cannot open cuda:{i}: {e}")))?;
        let name = ctx.name().unwrap_or_else(|_| "unknown GPU".into());
        let cc = ctx
            .compute_capability()
            .map_err(|e| Error::invalid("device", format!("cuda:{i}: {e}")))?;
        Ok((name, cc))
    }

    fn check_built_for(i: usize) -> Result<()> {
        let Some(built) = BUILT_FOR.and_then(|s| s.parse::<i32>().ok()) else {
            return Ok(());
        };
        let (name, (major, minor)) = capability(i)?;
        if major * 10 + minor < built {
            return Err(Error::invalid(
                "device",
                format!(
                    "cuda:{i} ({name}) has compute capability {major}.{minor}, but this llm-attr's CUDA \
                     kernels were built for {}.{} and newer: rebuild with CUDA_COMPUTE_CAP={major}{minor} \
                     scripts/build-cuda.sh",
                    built / 10,
                    built % 10
                ),
            ));
        }
        Ok(())
    }

    pub(crate) fn check_dtype(device: &Device, dtype: DType) -> Result<()> {
        let candle_core::DeviceLocation::Cuda { gpu_id } = device.location() else {
            return Ok(());
        };
        let (name, cc) = capability(gpu_id)?;
        match MIN_CAPABILITY.iter().find(|(d, _)| *d == dtype) {
            Some((_, min)) if cc >= *min => Ok(()),
            Some((_, min)) => Err(Error::invalid(
                "dtype",
                format!(
                    "cuda:{gpu_id} ({name}, compute capability {}.{}) does not run {} (needs {}.{}); \
                     use --dtype f32{}",
                    cc.0,
                    cc.1,
                    dtype.as_str(),
                    min.0,
                    min.1,
                    if cc >= (5, 3) { " or f16" } else { "" }
                ),
            )),
            None => Err(Error::invalid(
                "dtype",
                format!("{} is not supported on a GPU", dtype.as_str()),
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_parse() {
        assert_eq!("auto".parse(), Ok(DeviceChoice::Auto));
        assert_eq!("CPU".parse(), Ok(DeviceChoice::Cpu));
        assert_eq!("cuda".parse(), Ok(DeviceChoice::Cuda(0)));
        assert_eq!("cuda:3".parse(), Ok(DeviceChoice::Cuda(3)));
        assert!("cuda:x".parse::<DeviceChoice>().is_err());
        assert!("tpu"
            .parse::<DeviceChoice>()
            .unwrap_err()
            .contains("auto, cpu, cuda or cuda:N"));
        for (name, d) in DTYPES {
            assert_eq!(name.parse(), Ok(DtypeChoice::Fixed(*d)));
            assert_eq!(DtypeChoice::Fixed(*d).to_string(), *name);
        }
        assert_eq!("auto".parse(), Ok(DtypeChoice::Auto));
        assert!("f64".parse::<DtypeChoice>().is_err());
        assert_eq!(DeviceChoice::Cuda(1).to_string(), "cuda:1");
    }

    #[test]
    fn cpu_resolves_with_f32_by_default() {
        let o = resolve(DeviceChoice::Cpu, DtypeChoice::Auto).unwrap();
        assert!(o.device.is_cpu());
        assert_eq!(o.dtype(), DType::F32);
        let o = resolve(DeviceChoice::Cpu, DtypeChoice::Fixed(DType::F16)).unwrap();
        assert_eq!(o.dtype(), DType::F16);
        // A CPU without a bf16 unit refuses bf16 (unless told to emulate); the error says what
        // this one has.
        let here = CpuFeatures::detect();
        if !here.has_bf16_matmul() && !cpu_bf16_emulated() {
            let e = resolve(DeviceChoice::Cpu, DtypeChoice::Fixed(DType::BF16)).unwrap_err();
            assert_eq!(e.field(), Some("dtype"));
            assert!(e.to_string().starts_with("dtype: "), "{e}");
            assert!(e.to_string().contains(&format!("this CPU has {here}")), "{e}");
        }
        assert_eq!(name(&o.device), "cpu");
        assert_eq!(tuning(&o.device).workers, 1);
    }

    /// A CPU without a bf16 matrix unit is told which units it lacks and what it has.
    #[test]
    fn cpu_bf16_names_the_missing_units() {
        let avx2 = CpuFeatures {
            avx2: true,
            fma: true,
            f16c: true,
            ..CpuFeatures::default()
        };
        let e = check_cpu_bf16(&avx2, false).unwrap_err();
        assert_eq!(e.field(), Some("dtype"));
        let text = e.to_string();
        assert!(text.contains("needs AMX-bf16 or AVX512-BF16"), "{text}");
        assert!(text.contains("this CPU has AVX2, FMA, F16C"), "{text}");
        assert!(check_cpu_bf16(&avx2, true).is_ok(), "the emulation is asked for");
        let amx = CpuFeatures {
            amx_bf16: true,
            ..avx2
        };
        let avx512 = CpuFeatures {
            avx512_bf16: true,
            avx512f: true,
            ..avx2
        };
        assert!(check_cpu_bf16(&amx, false).is_ok());
        assert!(check_cpu_bf16(&avx512, false).is_ok());
    }

    /// Without the feature, asking for CUDA says how to build with it; `auto` falls back.
    #[cfg(not(feature = "cuda"))]
    #[test]
    fn cpu_build_explains_how_to_get_cuda() {
        let e = resolve(DeviceChoice::Cuda(0), DtypeChoice::Auto).unwrap_err();
        assert_eq!(e.field(), Some("device"));
        assert!(e.to_string().contains("--features cuda"), "{e}");
        assert!(resolve(DeviceChoice::Auto, DtypeChoice::Auto)
            .unwrap()
            .device
            .is_cpu());
    }

    #[test]
    fn out_of_memory_is_recognised() {
        let oom = candle_core::Error::Msg("DriverError(CUDA_ERROR_OUT_OF_MEMORY, \"out of memory\")".into());
        assert!(is_out_of_memory(&oom));
        let blas = candle_core::Error::Msg("CublasError(CUBLAS_STATUS_ALLOC_FAILED)".into());
        assert!(is_out_of_memory(&blas));
        assert!(!is_out_of_memory(&candle_core::Error::Msg(
            "shape mismatch".into()
        )));
    }
}
