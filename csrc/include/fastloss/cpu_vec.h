// CPU-only: the fl:: math of common.h for at::vec::Vectorized lanes, so the per-element
// templates in csrc/kernels/ run 8 (AVX2) or 16 (AVX-512) fp32 lanes at a time on the CPU.
// Built with CPU_CAPABILITY_AVX2 / _AVX512 (setup.py), ATen maps exp/log1p to SLEEF's vector
// routines.
#pragma once

#include <ATen/cpu/vec/functional.h>  // vec_reduce_all
#include <ATen/cpu/vec/vec.h>

#include <cstdint>
#include <limits>
#if defined(CPU_CAPABILITY_AVX2) || defined(CPU_CAPABILITY_AVX512)
#include <immintrin.h>
#endif

#include "fastloss/common.h"

namespace fastloss {
namespace fl {

template <typename S>
using Vec = at::vec::Vectorized<S>;

template <typename S>
inline Vec<S> exp(const Vec<S>& x) { return x.exp(); }
template <typename S>
inline Vec<S> log1p(const Vec<S>& x) { return x.log1p(); }
#if defined(CPU_CAPABILITY_AVX2) || defined(CPU_CAPABILITY_AVX512)
// u = 2^k m with m in [sqrt(1/2), sqrt(2)), for finite u > 0 (no subnormals); k as float lanes.
inline Vec<float> split_exponent(const Vec<float>& u, Vec<float>& k) {
  // k = (bits(u) - bits(sqrt(1/2))) >> 23 (arithmetic), then m's exponent field is lowered by k
#if defined(CPU_CAPABILITY_AVX512)
  const __m512i bits = _mm512_castps_si512(u);
  const __m512i ki = _mm512_srai_epi32(_mm512_sub_epi32(bits, _mm512_set1_epi32(0x3f3504f3)), 23);
  k = _mm512_cvtepi32_ps(ki);
  return _mm512_castsi512_ps(_mm512_sub_epi32(bits, _mm512_slli_epi32(ki, 23)));
#else
  const __m256i bits = _mm256_castps_si256(u);
  const __m256i ki = _mm256_srai_epi32(_mm256_sub_epi32(bits, _mm256_set1_epi32(0x3f3504f3)), 23);
  k = _mm256_cvtepi32_ps(ki);
  return _mm256_castsi256_ps(_mm256_sub_epi32(bits, _mm256_slli_epi32(ki, 23)));
#endif
}
// log(1 + x) in fp32 lanes without SLEEF: SLEEF's AVX-512 log1pf took 10 ns per element on a
// Zen 5 VM (20 ms per 2M floats against 1.9 ms for its AVX2 one, and most of the row-wise
// engine's time).  u = 1 + x rounded; log1p(x) = log(u) + (x - (u - 1)) / u, the second term
// restoring what rounding u lost (all of log1p for |x| < 2^-24).  log(u) = k ln 2 + log(1 + f),
// f = m - 1 in [-0.29, 0.41], log(1 + f) = f - f^2 / 2 + f^3 P(f) with Cephes' degree-8 P
// (S. Moshier's logf; this function's error measured <= 1.44 ulp against fp64 log1p over 12M
// arguments from 2^-150 to 2^30, negative ones included) and ln 2 = 0.693359375 - 2.12194440e-4 (k hi exact).
// Special lanes: x = inf -> inf, x = -1 -> -inf, x < -1 -> NaN, NaN -> NaN.
inline Vec<float> log1p(const Vec<float>& x) {
  using V = Vec<float>;
  const V one(1.0f);
  const V u = x + one;
  const V corr = (x - (u - one)) / u;
  V k;
  const V f = split_exponent(u, k) - one;
  const V z = f * f;
  V p(7.0376836292e-2f);
  p = at::vec::fmadd(p, f, V(-1.1514610310e-1f));
  p = at::vec::fmadd(p, f, V(1.1676998740e-1f));
  p = at::vec::fmadd(p, f, V(-1.2420140846e-1f));
  p = at::vec::fmadd(p, f, V(1.4249322787e-1f));
  p = at::vec::fmadd(p, f, V(-1.6668057665e-1f));
  p = at::vec::fmadd(p, f, V(2.0000714765e-1f));
  p = at::vec::fmadd(p, f, V(-2.4999993993e-1f));
  p = at::vec::fmadd(p, f, V(3.3333331174e-1f));
  V y = p * f * z;
  y = at::vec::fmadd(k, V(-2.12194440e-4f), y);
  y = at::vec::fnmadd(V(0.5f), z, y);
  const V r = at::vec::fmadd(k, V(0.693359375f), f + y) + corr;  // NaN x: corr is NaN
  const V inf(std::numeric_limits<float>::infinity());
  const V special = V::blendv(V::blendv(V(std::numeric_limits<float>::quiet_NaN()), -inf, u == V(0.0f)), inf, u == inf);
  return V::blendv(r, special, (u <= V(0.0f)) | (u == inf));
}
#endif
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
#if defined(CPU_CAPABILITY_AVX2) || defined(CPU_CAPABILITY_AVX512)
// 2^n as float lanes from t = n + 1.5 * 2^23 (n integral, -127 <= n <= 127; -127 gives 0):
// t's bits are those of 1.5 * 2^23 plus n, so (bits(t) + 127) << 23 is n + 127 in the exponent
// field (the shift drops 1.5 * 2^23's own bits).
inline Vec<float> exp2_magic(const Vec<float>& t) {
#if defined(CPU_CAPABILITY_AVX512)
  return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_add_epi32(_mm512_castps_si512(t), _mm512_set1_epi32(127)), 23));
#else
  return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_add_epi32(_mm256_castps_si256(t), _mm256_set1_epi32(127)), 23));
#endif
}
#endif
// e^x for x <= 0 or NaN (a softmax's exp(x - max)): 2^n e^r with n = round(x log2 e) and
// r = x - n ln 2 (Cody-Waite: ln 2 = hi + lo, hi with 9 significant bits so n hi is exact),
// |r| <= ln(2) / 2, e^r by its degree-6 Taylor polynomial (truncation <= 1.7e-7 relative):
// <= 3 ulp in fp32 against exp_u20's 20.  n is rounded by adding 1.5 * 2^23 (the sum's low
// mantissa bits are then n, in round-to-nearest) and 2^n formed from those bits: 13 vector
// operations against 17 with a round, a conversion and a select (this is the row-wise engine's
// inner loop).  x is first clamped at -88 (a NaN stays NaN): there n = -127 and 2^n's bits are
// 0, so every x <= -87.68 (-inf included) gives exactly 0, and (-87.68, ln(FLT_MIN)) a
// subnormal.  fp64 (and builds without AVX2) keep ATen's exp_u20.
inline Vec<float> exp_nonpos(const Vec<float>& x) {
#if defined(CPU_CAPABILITY_AVX2) || defined(CPU_CAPABILITY_AVX512)
  using V = Vec<float>;
  const V magic(12582912.0f);                     // 1.5 * 2^23
  const V xc = at::vec::clamp_min(x, V(-88.0f));  // max(-88, x), NaN kept
  const V t = at::vec::fmadd(xc, V(1.44269504088896341f), magic);
  const V n = t - magic;
  V r = at::vec::fnmadd(n, V(0.693359375f), xc);
  r = at::vec::fnmadd(n, V(-2.12194440e-4f), r);
  V p(1.0f / 720.0f);
  p = at::vec::fmadd(p, r, V(1.0f / 120.0f));
  p = at::vec::fmadd(p, r, V(1.0f / 24.0f));
  p = at::vec::fmadd(p, r, V(1.0f / 6.0f));
  p = at::vec::fmadd(p, r, V(0.5f));
  p = at::vec::fmadd(p, r, V(1.0f));
  p = at::vec::fmadd(p, r, V(1.0f));
  return p * exp2_magic(t);
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
