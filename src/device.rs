//! Where the engine runs and in what precision: `--device cpu|cuda[:N]` and `--dtype f32|bf16`.
//!
//! With `bf16`, the model keeps **f32 master weights** (what the optimizer updates, its moments,
//! and every gradient, which reaches the masters through the cast) and runs the forward pass on
//! bf16 copies made at each forward: matmuls, embeddings, residual stream and activations are
//! bf16. These stay **f32**: RMSNorm / LayerNorm statistics and outputs before the cast back,
//! attention scores, mask and softmax, the log-softmax of the logits, every log-prob, sum,
//! loss, reward and metric, the probes' diagnostics and traces, and the optimizer state.

use std::fmt;
use std::str::FromStr;

use anyhow::{Result, bail};
use candle_core::{DType, Device};
use serde::{Deserialize, Serialize};

/// `--device`: the CPU or the N-th CUDA GPU.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum DeviceSpec {
    #[default]
    Cpu,
    Cuda(usize),
}

impl FromStr for DeviceSpec {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> Result<DeviceSpec> {
        let t = s.trim().to_ascii_lowercase();
        if t == "cpu" {
            return Ok(DeviceSpec::Cpu);
        }
        if t == "cuda" || t == "gpu" {
            return Ok(DeviceSpec::Cuda(0));
        }
        if let Some(n) = t.strip_prefix("cuda:")
            && let Ok(n) = n.parse::<usize>()
        {
            return Ok(DeviceSpec::Cuda(n));
        }
        bail!("--device \"{s}\": expected cpu, cuda or cuda:N (N = the GPU's index, 0 first)")
    }
}

impl TryFrom<String> for DeviceSpec {
    type Error = anyhow::Error;
    fn try_from(s: String) -> Result<DeviceSpec> {
        s.parse()
    }
}

impl From<DeviceSpec> for String {
    fn from(d: DeviceSpec) -> String {
        d.to_string()
    }
}

impl fmt::Display for DeviceSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DeviceSpec::Cpu => write!(f, "cpu"),
            DeviceSpec::Cuda(n) => write!(f, "cuda:{n}"),
        }
    }
}

/// Whether this binary was built with the `cuda` feature.
pub fn cuda_built() -> bool {
    cfg!(feature = "cuda")
}

impl DeviceSpec {
    /// Opens the device, with an error that says what to do when it cannot.
    pub fn open(self) -> Result<Device> {
        match self {
            DeviceSpec::Cpu => Ok(Device::Cpu),
            DeviceSpec::Cuda(n) => {
                if !cuda_built() {
                    bail!(
                        "--device {self}: this ldviz was built without CUDA support; build it with `cargo build --release --features cuda` (needs the CUDA toolkit) or tools/build-cuda.sh (no toolkit needed), or use --device cpu"
                    );
                }
                Device::new_cuda(n).map_err(|e| {
                    anyhow::anyhow!(
                        "--device {self}: no usable CUDA GPU {n} ({e}); check `nvidia-smi`, the driver (CUDA 13.0 or newer) and that libcuda.so.1, libcublas.so.13, libcurand.so.10 and libcudart.so.13 are on the library path"
                    )
                })
            }
        }
    }

    /// The CUDA devices this build can see (empty without the feature or a driver).
    pub fn available() -> Vec<DeviceSpec> {
        let mut out = vec![DeviceSpec::Cpu];
        if cuda_built() {
            for n in 0..16 {
                if Device::new_cuda(n).is_err() {
                    break;
                }
                out.push(DeviceSpec::Cuda(n));
            }
        }
        out
    }
}

/// Opens `device` for computing in `precision`, refusing combinations that cannot run: bf16
/// needs a GPU (candle's CPU matmul has no bf16 kernel).
pub fn open(device: DeviceSpec, precision: Precision) -> Result<Device> {
    if precision == Precision::Bf16 && device == DeviceSpec::Cpu {
        bail!(
            "--dtype bf16 runs on GPUs only (the CPU backend has no bf16 matrix multiply): use --device cuda, or --dtype f32 on the CPU"
        );
    }
    device.open()
}

/// `--dtype`: the compute precision (see the module doc for what stays f32).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Precision {
    #[default]
    F32,
    Bf16,
}

impl FromStr for Precision {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> Result<Precision> {
        match s.trim().to_ascii_lowercase().as_str() {
            "f32" | "float32" | "fp32" => Ok(Precision::F32),
            "bf16" | "bfloat16" => Ok(Precision::Bf16),
            _ => bail!("--dtype \"{s}\": expected f32 or bf16"),
        }
    }
}

impl fmt::Display for Precision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Precision::F32 => "f32",
            Precision::Bf16 => "bf16",
        })
    }
}

impl Precision {
    /// The dtype the forward pass computes in.
    pub fn compute_dtype(self) -> DType {
        match self {
            Precision::F32 => DType::F32,
            Precision::Bf16 => DType::BF16,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_devices_and_dtypes() {
        assert_eq!("cpu".parse::<DeviceSpec>().unwrap(), DeviceSpec::Cpu);
        assert_eq!("cuda".parse::<DeviceSpec>().unwrap(), DeviceSpec::Cuda(0));
        assert_eq!("CUDA:3".parse::<DeviceSpec>().unwrap(), DeviceSpec::Cuda(3));
        for bad in ["cuda:", "cuda:x", "tpu", "cuda:-1", ""] {
            let e = bad.parse::<DeviceSpec>().unwrap_err().to_string();
            assert!(e.contains("expected cpu, cuda or cuda:N"), "{bad}: {e}");
        }
        assert_eq!(DeviceSpec::Cuda(2).to_string(), "cuda:2");
        let j = serde_json::to_string(&DeviceSpec::Cuda(1)).unwrap();
        assert_eq!(j, "\"cuda:1\"");
        assert_eq!(
            serde_json::from_str::<DeviceSpec>(&j).unwrap(),
            DeviceSpec::Cuda(1)
        );
        assert_eq!("bf16".parse::<Precision>().unwrap(), Precision::Bf16);
        assert!(
            "f16"
                .parse::<Precision>()
                .unwrap_err()
                .to_string()
                .contains("f32 or bf16")
        );
    }

    #[test]
    fn bf16_on_the_cpu_is_refused() {
        let e = open(DeviceSpec::Cpu, Precision::Bf16)
            .unwrap_err()
            .to_string();
        assert!(e.contains("GPUs only"), "{e}");
        assert!(open(DeviceSpec::Cpu, Precision::F32).is_ok());
    }

    #[cfg(not(feature = "cuda"))]
    #[test]
    fn cuda_without_the_feature_says_how_to_get_it() {
        let e = DeviceSpec::Cuda(0).open().unwrap_err().to_string();
        assert!(e.contains("built without CUDA support"), "{e}");
        assert!(e.contains("--features cuda"), "{e}");
    }
}
