use half::f16;

use crate::simd::{Simd, L};

/// A stored key/value element: f32, f16, or a `q8_0` code (`SCALED`: times its block's scale).
pub(super) trait Elem: Copy {
    const SCALED: bool;
    const ZERO: Self;
    /// Sixteen consecutive elements as f32 (exact conversions).
    unsafe fn load<V: Simd>(p: *const Self) -> V;
    /// The first `n` of sixteen, the rest 0.
    unsafe fn load_part<V: Simd>(p: *const Self, n: usize) -> V {
        let mut a = [Self::ZERO; L];
        std::ptr::copy_nonoverlapping(p, a.as_mut_ptr(), n);
        Self::load(a.as_ptr())
    }
}

impl Elem for f32 {
    const SCALED: bool = false;
    const ZERO: Self = 0.0;
    #[inline(always)]
    unsafe fn load<V: Simd>(p: *const Self) -> V {
        V::load(p)
    }
    #[inline(always)]
    unsafe fn load_part<V: Simd>(p: *const Self, n: usize) -> V {
        V::load_part(p, n)
    }
}

impl Elem for f16 {
    const SCALED: bool = false;
    const ZERO: Self = f16::ZERO;
    #[inline(always)]
    unsafe fn load<V: Simd>(p: *const Self) -> V {
        V::load_f16(p)
    }
}

impl Elem for i8 {
    const SCALED: bool = true;
    const ZERO: Self = 0;
    #[inline(always)]
    unsafe fn load<V: Simd>(p: *const Self) -> V {
        V::load_i8(p)
    }
}
