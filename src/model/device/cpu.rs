//! What the CPU offers a forward pass: the bf16 matrix units (AMX-bf16, AVX512-BF16) that a
//! bf16 matmul on the CPU needs, and the vector features that say what it has instead.

use std::fmt;

/// The CPU features that decide which data types a forward pass on the CPU can run.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct CpuFeatures {
    /// AMX tiles with bf16 dot products, enabled by the OS (Sapphire Rapids and newer).
    pub amx_bf16: bool,
    /// AVX512-BF16 (`vdpbf16ps`): Cooper Lake, Sapphire Rapids, Zen 4 and newer.
    pub avx512_bf16: bool,
    /// AVX-512 foundation.
    pub avx512f: bool,
    /// AVX2.
    pub avx2: bool,
    /// Fused multiply-add.
    pub fma: bool,
    /// f16 <-> f32 conversions.
    pub f16c: bool,
    /// ARM's NEON (aarch64).
    pub neon: bool,
}

impl CpuFeatures {
    /// The features of the CPU this process runs on.
    pub(crate) fn detect() -> Self {
        detect()
    }

    /// True when a bf16 matmul with f32 accumulation has hardware to run on.
    pub(crate) fn has_bf16_matmul(&self) -> bool {
        self.amx_bf16 || self.avx512_bf16
    }
}

impl fmt::Display for CpuFeatures {
    /// The features present, by their usual names: `AVX2, FMA, F16C (no AVX-512)`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let names = [
            (self.amx_bf16, "AMX-bf16"),
            (self.avx512_bf16, "AVX512-BF16"),
            (self.avx512f, "AVX-512F"),
            (self.avx2, "AVX2"),
            (self.fma, "FMA"),
            (self.f16c, "F16C"),
            (self.neon, "NEON"),
        ];
        let present: Vec<&str> = names.iter().filter(|(on, _)| *on).map(|(_, n)| *n).collect();
        if present.is_empty() {
            f.write_str("none of AMX, AVX-512, AVX2, FMA, F16C, NEON")?;
        } else {
            f.write_str(&present.join(", "))?;
        }
        if cfg!(target_arch = "x86_64") && !self.avx512f {
            f.write_str(" (no AVX-512)")?;
        }
        Ok(())
    }
}

#[cfg(target_arch = "x86_64")]
fn detect() -> CpuFeatures {
    use std::arch::is_x86_feature_detected as has;
    CpuFeatures {
        amx_bf16: amx_bf16(),
        avx512_bf16: has!("avx512bf16"),
        avx512f: has!("avx512f"),
        avx2: has!("avx2"),
        fma: has!("fma"),
        f16c: has!("f16c"),
        neon: false,
    }
}

/// AMX-bf16: CPUID.(EAX=7,ECX=0):EDX bit 22, and the OS saves the tile state (XCR0 bits 17
/// and 18). std cannot detect it on stable Rust yet.
#[cfg(target_arch = "x86_64")]
fn amx_bf16() -> bool {
    use std::arch::x86_64::{__cpuid_count, __get_cpuid_max};
    if __get_cpuid_max(0).0 < 7 || __cpuid_count(7, 0).edx & (1 << 22) == 0 {
        return false;
    }
    if !std::arch::is_x86_feature_detected!("xsave") || __cpuid_count(1, 0).ecx & (1 << 27) == 0 {
        return false;
    }
    const TILES: u64 = (1 << 17) | (1 << 18);
    // SAFETY: XSAVE is present and the OS has enabled it (OSXSAVE), so XGETBV(0) is valid.
    let xcr0 = unsafe { xcr0() };
    xcr0 & TILES == TILES
}

/// XCR0, the state components the OS saves.
///
/// # Safety
/// The CPU must have XSAVE and the OS must have set CR4.OSXSAVE.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "xsave")]
unsafe fn xcr0() -> u64 {
    std::arch::x86_64::_xgetbv(0)
}

#[cfg(target_arch = "aarch64")]
fn detect() -> CpuFeatures {
    CpuFeatures {
        neon: std::arch::is_aarch64_feature_detected!("neon"),
        ..CpuFeatures::default()
    }
}

#[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
fn detect() -> CpuFeatures {
    CpuFeatures::default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn features_are_named() {
        let avx2 = CpuFeatures {
            avx2: true,
            fma: true,
            f16c: true,
            ..CpuFeatures::default()
        };
        assert!(!avx2.has_bf16_matmul());
        let spr = CpuFeatures {
            amx_bf16: true,
            avx512_bf16: true,
            avx512f: true,
            ..avx2
        };
        assert!(spr.has_bf16_matmul());
        assert_eq!(
            spr.to_string(),
            "AMX-bf16, AVX512-BF16, AVX-512F, AVX2, FMA, F16C"
        );
        if cfg!(target_arch = "x86_64") {
            assert_eq!(avx2.to_string(), "AVX2, FMA, F16C (no AVX-512)");
        }
        // Whatever this machine has, detection runs and names something consistent.
        let here = CpuFeatures::detect();
        assert!(!here.avx512_bf16 || here.avx512f, "{here}");
    }
}
