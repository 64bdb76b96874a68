// Host+device helpers shared by the CPU (C++) and CUDA kernels.
//
// The per-element math in csrc/kernels/<family>.h is written once, as templates over
// a "lane" type T, using only the functions below plus + - * / and comparisons.  T is
// a scalar (float / double) on CUDA and in CPU tails, and at::vec::Vectorized<float|double>
// in the CPU vector loops (overloads in cpu_vec.h).  A comparison yields a "mask" (bool
// for scalars, an all-ones-lanes vector for Vectorized) that only fl::select consumes.
#pragma once

#include <cmath>
#include <cstdint>

#if defined(__CUDACC__) || defined(__HIPCC__)
#define FL_HOST_DEVICE __host__ __device__
#define FL_INLINE __forceinline__
#else
#define FL_HOST_DEVICE
#define FL_INLINE inline
#endif

namespace fastloss {
namespace fl {

FL_HOST_DEVICE FL_INLINE float exp(float x) { return ::expf(x); }
FL_HOST_DEVICE FL_INLINE double exp(double x) { return ::exp(x); }
FL_HOST_DEVICE FL_INLINE float log1p(float x) { return ::log1pf(x); }
FL_HOST_DEVICE FL_INLINE double log1p(double x) { return ::log1p(x); }
// log(1 + e) for e in [0, 1] (the softplus term of the logit losses); the CPU's vector form is
// a faster polynomial (cpu_vec.h)
FL_HOST_DEVICE FL_INLINE float log1p_unit(float x) { return ::log1pf(x); }
FL_HOST_DEVICE FL_INLINE double log1p_unit(double x) { return ::log1p(x); }
FL_HOST_DEVICE FL_INLINE float log(float x) { return ::logf(x); }
FL_HOST_DEVICE FL_INLINE double log(double x) { return ::log(x); }
FL_HOST_DEVICE FL_INLINE float sqrt(float x) { return ::sqrtf(x); }
FL_HOST_DEVICE FL_INLINE double sqrt(double x) { return ::sqrt(x); }
FL_HOST_DEVICE FL_INLINE float atan2(float y, float x) { return ::atan2f(y, x); }
FL_HOST_DEVICE FL_INLINE double atan2(double y, double x) { return ::atan2(y, x); }
FL_HOST_DEVICE FL_INLINE float abs(float x) { return ::fabsf(x); }
FL_HOST_DEVICE FL_INLINE float floor(float x) { return ::floorf(x); }
FL_HOST_DEVICE FL_INLINE double floor(double x) { return ::floor(x); }
FL_HOST_DEVICE FL_INLINE double abs(double x) { return ::fabs(x); }
// x ** p for x >= 0 (p is a uniform scalar exponent).
FL_HOST_DEVICE FL_INLINE float pow(float x, float p) { return ::powf(x, p); }
FL_HOST_DEVICE FL_INLINE double pow(double x, double p) { return ::pow(x, p); }

// Branch-free choice; the scalar form of Vectorized::blendv.
template <typename T>
FL_HOST_DEVICE FL_INLINE T select(bool cond, T a, T b) { return cond ? a : b; }

// max(x, 0) that propagates NaN (std::fmax would hide it): NaN < 0 is false, so x is kept.
template <typename T>
FL_HOST_DEVICE FL_INLINE T relu(T x) { return select(x < T(0), T(0), x); }

}  // namespace fl

// Reduction codes shared by every op ("none" / "sum" / "mean").
enum class Reduction : int64_t { None = 0, Sum = 1, Mean = 2 };

// The divisor of a "mean": the element count, 1 for an empty input (the mean of nothing is 0,
// not NaN: an image without positives must not turn the loss into NaN).
FL_HOST_DEVICE FL_INLINE double mean_count(int64_t n) { return n > 0 ? static_cast<double>(n) : 1.0; }

}  // namespace fastloss
