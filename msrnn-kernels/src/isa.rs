//! Instruction-set variants, chosen at run time.
//!
//! The active variant is, in order: the one forced by [`force`], else the one named by the `MSRNN_ISA` environment
//! variable (`scalar`, `avx2`, `avx512` or `neon`; ignored when unknown or unsupported, see [`from_env`] for the error), else
//! the best this CPU supports. Every variant returns the same bits, so forcing one changes speed only.

use crate::error::{KernelError, Result};
use std::sync::atomic::{AtomicU8, Ordering};

/// An instruction-set variant of the kernels.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Isa {
    /// Portable Rust, any CPU.
    Scalar,
    /// x86-64 AVX2 + FMA + F16C.
    Avx2,
    /// x86-64 AVX-512 F/BW/VL with VNNI (`vpdpbusd`).
    Avx512,
    /// aarch64 NEON (Advanced SIMD, on every aarch64 CPU).
    Neon,
}

impl Isa {
    pub const ALL: [Isa; 4] = [Isa::Scalar, Isa::Avx2, Isa::Avx512, Isa::Neon];

    pub fn name(self) -> &'static str {
        match self {
            Isa::Scalar => "scalar",
            Isa::Avx2 => "avx2",
            Isa::Avx512 => "avx512",
            Isa::Neon => "neon",
        }
    }

    /// Whether this CPU can run the variant.
    pub fn is_supported(self) -> bool {
        match self {
            Isa::Scalar => true,
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2 => {
                is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") && is_x86_feature_detected!("f16c")
            }
            #[cfg(target_arch = "x86_64")]
            Isa::Avx512 => {
                Isa::Avx2.is_supported()
                    && is_x86_feature_detected!("avx512f")
                    && is_x86_feature_detected!("avx512bw")
                    && is_x86_feature_detected!("avx512vl")
                    && is_x86_feature_detected!("avx512vnni")
            }
            #[cfg(target_arch = "aarch64")]
            Isa::Neon => std::arch::is_aarch64_feature_detected!("neon"),
            _ => false,
        }
    }

    /// The best variant this CPU supports.
    pub fn detected() -> Isa {
        *Self::ALL.iter().rev().find(|i| i.is_supported()).unwrap_or(&Isa::Scalar)
    }

    /// Every variant this CPU supports, the fallback first.
    pub fn supported() -> Vec<Isa> {
        Self::ALL.into_iter().filter(|i| i.is_supported()).collect()
    }

    fn code(self) -> u8 {
        self as u8 + 1
    }

    fn from_code(c: u8) -> Option<Isa> {
        Self::ALL.into_iter().find(|i| i.code() == c)
    }
}

impl std::fmt::Display for Isa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for Isa {
    type Err = KernelError;
    fn from_str(s: &str) -> Result<Self> {
        Self::ALL
            .into_iter()
            .find(|i| i.name().eq_ignore_ascii_case(s))
            .ok_or_else(|| KernelError::UnknownIsa(s.into()))
    }
}

/// 0: not decided yet; otherwise `Isa::code`.
static ACTIVE: AtomicU8 = AtomicU8::new(0);

/// The variant the kernels use now.
pub fn active() -> Isa {
    if let Some(isa) = Isa::from_code(ACTIVE.load(Ordering::Relaxed)) {
        return isa;
    }
    let isa = from_env().ok().flatten().unwrap_or_else(Isa::detected);
    ACTIVE.store(isa.code(), Ordering::Relaxed);
    isa
}

/// Forces a variant (`None`: back to `MSRNN_ISA` or detection). Errors when the CPU does not support it.
pub fn force(isa: Option<Isa>) -> Result<()> {
    match isa {
        Some(i) if !i.is_supported() => Err(KernelError::UnsupportedIsa(i.name())),
        Some(i) => {
            ACTIVE.store(i.code(), Ordering::Relaxed);
            Ok(())
        }
        None => {
            ACTIVE.store(0, Ordering::Relaxed);
            Ok(())
        }
    }
}

/// The variant `MSRNN_ISA` names, if set; an error when it names no variant or one this CPU lacks.
pub fn from_env() -> Result<Option<Isa>> {
    match std::env::var("MSRNN_ISA") {
        Ok(v) if !v.trim().is_empty() => {
            let isa: Isa = v.trim().parse()?;
            if !isa.is_supported() {
                return Err(KernelError::UnsupportedIsa(isa.name()));
            }
            Ok(Some(isa))
        }
        _ => Ok(None),
    }
}
