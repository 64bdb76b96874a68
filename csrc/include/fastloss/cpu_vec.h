// CPU-only: the fl:: math of common.h for at::vec::Vectorized lanes, so the per-element
// templates in csrc/kernels/ run 8 (AVX2) lanes at a time on the CPU.  Built with
// CPU_CAPABILITY_AVX2, ATen maps exp/log1p to SLEEF's vector routines.
#pragma once

#include <ATen/cpu/vec/vec.h>

#include "fastloss/common.h"

namespace fastloss {
namespace fl {

template <typename S>
using Vec = at::vec::Vectorized<S>;

template <typename S>
inline Vec<S> exp(const Vec<S>& x) { return x.exp(); }
template <typename S>
inline Vec<S> log1p(const Vec<S>& x) { return x.log1p(); }
template <typename S>
inline Vec<S> log(const Vec<S>& x) { return x.log(); }
template <typename S>
inline Vec<S> sqrt(const Vec<S>& x) { return x.sqrt(); }
template <typename S>
inline Vec<S> atan2(const Vec<S>& y, const Vec<S>& x) { return y.atan2(x); }
template <typename S>
inline Vec<S> abs(const Vec<S>& x) { return x.abs(); }
template <typename S>
inline Vec<S> pow(const Vec<S>& x, S p) { return x.pow(Vec<S>(p)); }
// mask lanes are all-ones where true (the result of a Vectorized comparison).
template <typename S>
inline Vec<S> select(const Vec<S>& mask, const Vec<S>& a, const Vec<S>& b) { return Vec<S>::blendv(b, a, mask); }
template <typename S>
inline Vec<S> relu(const Vec<S>& x) { return select(x < Vec<S>(S(0)), Vec<S>(S(0)), x); }

}  // namespace fl
}  // namespace fastloss
