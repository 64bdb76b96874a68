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
// log(1 + e) for e in [0, 1] (softplus: log1p(exp(-|x|)) in every logit loss): e times a
// degree-9 polynomial fitted to log1p(e) / e at the Chebyshev nodes of [0, 1] -- relative
// error <= 1.6e-7 (about 2 ulp of the result) in fp32, and ~5x faster than SLEEF's log1p, which
// took most of the logit losses' CPU time.  fp64 keeps SLEEF's.
inline Vec<float> log1p_unit(const Vec<float>& e) {
  using V = Vec<float>;
  V p(-0.0031760570127516985f);
  p = at::vec::fmadd(p, e, V(0.019542526453733444f));
  p = at::vec::fmadd(p, e, V(-0.056373611092567444f));
  p = at::vec::fmadd(p, e, V(0.10543623566627502f));
  p = at::vec::fmadd(p, e, V(-0.1526966691017151f));
  p = at::vec::fmadd(p, e, V(0.1966327428817749f));
  p = at::vec::fmadd(p, e, V(-0.24951615929603577f));
  p = at::vec::fmadd(p, e, V(0.33329710364341736f));
  p = at::vec::fmadd(p, e, V(-0.49999892711639404f));
  p = at::vec::fmadd(p, e, V(1.0f));
  return p * e;
}
inline Vec<double> log1p_unit(const Vec<double>& e) { return e.log1p(); }
// e^x for x <= 0 or NaN (a softmax's exp(x - max)): 2^n e^r with n = round(x log2 e) and
// r = x - n ln 2 (Cody-Waite: ln 2 = hi + lo, hi with 9 significant bits so n hi is exact),
// |r| <= ln(2) / 2, e^r by its degree-6 Taylor polynomial (truncation <= 1.7e-7 relative):
// <= 3 ulp in fp32 against exp_u20's 20, and 0 below ln(FLT_MIN) as exp_u20 (no denormals);
// a NaN stays NaN.  Fewer operations than exp_u20, which skips no overflow checks.
inline Vec<float> exp_nonpos(const Vec<float>& x) {
#if defined(CPU_CAPABILITY_AVX2)
  using V = Vec<float>;
  const V n = (x * V(1.44269504088896341f)).round();
  V r = at::vec::fnmadd(n, V(0.693359375f), x);
  r = at::vec::fnmadd(n, V(-2.12194440e-4f), r);
  V p(1.0f / 720.0f);
  p = at::vec::fmadd(p, r, V(1.0f / 120.0f));
  p = at::vec::fmadd(p, r, V(1.0f / 24.0f));
  p = at::vec::fmadd(p, r, V(1.0f / 6.0f));
  p = at::vec::fmadd(p, r, V(0.5f));
  p = at::vec::fmadd(p, r, V(1.0f));
  p = at::vec::fmadd(p, r, V(1.0f));
  // 2^n from its exponent bits (n >= -126 where the result is kept)
  const __m256i two_n = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
  return V::blendv(p * V(_mm256_castsi256_ps(two_n)), V(0.0f), x < V(-87.3365402f));
#else
  return x.exp_u20();
#endif
}
inline Vec<double> exp_nonpos(const Vec<double>& x) { return x.exp_u20(); }
template <typename S>
inline Vec<S> sqrt(const Vec<S>& x) { return x.sqrt(); }
template <typename S>
inline Vec<S> atan2(const Vec<S>& y, const Vec<S>& x) { return y.atan2(x); }
template <typename S>
inline Vec<S> abs(const Vec<S>& x) { return x.abs(); }
template <typename S>
inline Vec<S> floor(const Vec<S>& x) { return x.floor(); }
template <typename S>
inline Vec<S> pow(const Vec<S>& x, S p) { return x.pow(Vec<S>(p)); }
// mask lanes are all-ones where true (the result of a Vectorized comparison).
template <typename S>
inline Vec<S> select(const Vec<S>& mask, const Vec<S>& a, const Vec<S>& b) { return Vec<S>::blendv(b, a, mask); }
template <typename S>
inline Vec<S> relu(const Vec<S>& x) { return select(x < Vec<S>(S(0)), Vec<S>(S(0)), x); }

}  // namespace fl
}  // namespace fastloss
