// Dice / Tversky / Jaccard CUDA kernels and their launchers, shared by dice.cu (the ops) and the
// per-dtype instantiation files dice_<dtype>.cu.  The kernels are described in dice.cu.
#pragma once

#include <ATen/OpMathType.h>
#include <ATen/core/Tensor.h>
#include <c10/cuda/CUDAException.h>

#include <cmath>

#include "fastloss/cuda_reduce.cuh"
#include "kernels/dice.h"

namespace fastloss {
namespace dice_cuda {

constexpr int kThreads = 256;
constexpr int kPPT = 4;                        // pixels per thread
constexpr int64_t kPix = kThreads * kPPT;      // pixels per block

// The label map's dtype (uint8 / int32 / int64) is read at run time, not a template parameter:
// one kernel per logits dtype instead of three cut the Dice family's CUDA compile time about 3x
// (cicc ~89 s -> ~26 s per dtype and arch), for a warp-uniform branch once per pixel.
template <typename scalar_t>
struct DicePtrs {
  const scalar_t* x;
  const void* labels;  // (N, S) or nullptr
  int label_bytes;     // 1, 4 or 8
  const scalar_t* t;   // (N, C, S) float target or nullptr
};

template <typename scalar_t>
__device__ __forceinline__ int64_t label_at(const DicePtrs<scalar_t>& p, int64_t i) {
  if (p.label_bytes == 1) return static_cast<const uint8_t*>(p.labels)[i];
  if (p.label_bytes == 4) return static_cast<const int32_t*>(p.labels)[i];
  return static_cast<const int64_t*>(p.labels)[i];
}

struct DiceDims {
  int64_t C, S, nblk;
  int activation;
  bool squared, soft, has_ignore, binary;
  int64_t ignore_index;
};

// Per-pixel state of a thread: pixel mask, label, softmax max and 1/sum, and the first argmax
// class with the sum of the other classes' exponentials (1 - p of the argmax class without
// cancellation).
template <typename acc_t>
struct Pixel {
  bool in;
  acc_t m;
  int64_t lab;
  acc_t mx, inv, rest;
  int64_t amax;
};

template <typename acc_t, typename scalar_t>
__device__ __forceinline__ void pixel_setup(const DicePtrs<scalar_t>& p, const DiceDims& d, int64_t n, int64_t s,
                                            Pixel<acc_t>& px) {
  px.in = s < d.S;
  px.m = acc_t(px.in ? 1 : 0);
  px.lab = -1;
  px.mx = acc_t(0);
  px.inv = acc_t(1);
  px.rest = acc_t(0);
  px.amax = 0;
  if (!px.in) return;
  if (p.labels != nullptr) {
    const int64_t l = label_at(p, n * d.S + s);
    if (d.has_ignore && l == d.ignore_index) {
      px.m = acc_t(0);
    } else {
      px.lab = l;
    }
  }
  if (d.activation == dice::kSoftmax) {
    const scalar_t* xp = p.x + n * d.C * d.S + s;
    // the engine's online softmax (rowwise::softmax_push), one read of the pixel's logits
    acc_t mx = -static_cast<acc_t>(INFINITY), rest = acc_t(0), scale;
    int64_t amax = 0;
    for (int64_t c = 0; c < d.C; ++c) rowwise::softmax_push(mx, rest, amax, c, static_cast<acc_t>(xp[c * d.S]), scale);
    px.mx = mx;
    px.rest = rest;
    px.amax = amax;
    px.inv = acc_t(1) / (rest + acc_t(1));
  }
}

// g and the element mask of class c at pixel s.
template <typename acc_t, typename scalar_t>
__device__ __forceinline__ void target_at(const DicePtrs<scalar_t>& p, const DiceDims& d, const Pixel<acc_t>& px,
                                          int64_t idx, int64_t c, acc_t& g, acc_t& mc) {
  if (p.labels != nullptr) {
    g = acc_t(px.lab == (d.binary ? 1 : c) ? 1 : 0);
    mc = px.m;
  } else {
    g = static_cast<acc_t>(p.t[idx]);
    mc = px.m;
    if (d.has_ignore && g == static_cast<acc_t>(d.ignore_index)) mc = acc_t(0);
    g = mc != acc_t(0) ? g : acc_t(0);
  }
}

template <typename acc_t>
__device__ __forceinline__ acc_t prob(acc_t x, const Pixel<acc_t>& px, int activation) {
  if (activation == dice::kSoftmax) return fl::exp(x - px.mx) * px.inv;
  if (activation == dice::kSigmoid) {
    acc_t sp, sn;
    dice::sigmoid2(x, sp, sn);
    return sp;
  }
  return x;
}

template <typename scalar_t>
__global__ void __launch_bounds__(kThreads) dice_sums_kernel(DicePtrs<scalar_t> p, DiceDims d, bool with_ce,
                                                             at::opmath_type<scalar_t>* part, at::opmath_type<scalar_t>* cepart) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t blk = blockIdx.x, n = blockIdx.y;
  Pixel<acc_t> px[kPPT];
#pragma unroll
  for (int k = 0; k < kPPT; ++k) pixel_setup(p, d, n, blk * kPix + k * kThreads + threadIdx.x, px[k]);
  acc_t ce = acc_t(0), cnt = acc_t(0), gsum[kPPT], gd[kPPT];
#pragma unroll
  for (int k = 0; k < kPPT; ++k) gsum[k] = gd[k] = acc_t(0);
  acc_t* out = part + (n * d.nblk + blk) * d.C * 3;
  for (int64_t c = 0; c < d.C; ++c) {
    acc_t I = 0, P = 0, G = 0;
#pragma unroll
    for (int k = 0; k < kPPT; ++k) {
      const int64_t s = blk * kPix + k * kThreads + threadIdx.x;
      if (!px[k].in) continue;
      const int64_t idx = (n * d.C + c) * d.S + s;
      const acc_t x = static_cast<acc_t>(p.x[idx]);
      acc_t g, mc;
      target_at(p, d, px[k], idx, c, g, mc);
      const acc_t pr = prob(x, px[k], d.activation);
      I += mc * dice::inter_term(pr, g, d.soft);
      P += mc * dice::card_term(pr, d.squared, d.soft);
      G += mc * dice::card_term(g, d.squared, d.soft);
      if (with_ce) {
        if (d.activation == dice::kSoftmax) {
          gsum[k] += g;
          gd[k] += rowwise::dense_term(g, px[k].mx, x);  // 0 for a class without target mass, even at x = -inf
        } else if (mc != acc_t(0)) {
          ce += dice::bce(x, g);
          cnt += mc;
        }
      }
    }
    I = block_sum<kThreads>(I);
    P = block_sum<kThreads>(P);
    G = block_sum<kThreads>(G);
    if (threadIdx.x == 0) {
      out[3 * c] = I;
      out[3 * c + 1] = P;
      out[3 * c + 2] = G;
    }
  }
  if (with_ce) {
    if (d.activation == dice::kSoftmax) {
#pragma unroll
      for (int k = 0; k < kPPT; ++k) {
        if (px[k].in && px[k].m != acc_t(0)) {
          // CE = sum_c g_c (mx - x_c) + (sum_c g_c) log1p(rest): no cancellation for a confident pixel
          ce += rowwise::dense_cross_entropy(gd[k], gsum[k], fl::log1p(px[k].rest));
          cnt += px[k].m;
        }
      }
    }
    ce = block_sum<kThreads>(ce);
    cnt = block_sum<kThreads>(cnt);
    if (threadIdx.x == 0) {
      cepart[(n * d.nblk + blk) * 2] = ce;
      cepart[(n * d.nblk + blk) * 2 + 1] = cnt;
    }
  }
}

template <typename scalar_t>
__global__ void __launch_bounds__(kThreads) dice_grad_kernel(DicePtrs<scalar_t> p, DiceDims d,
                                                             const at::opmath_type<scalar_t>* coef,
                                                             const at::opmath_type<scalar_t>* cecoef, scalar_t* out) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t blk = blockIdx.x, n = blockIdx.y;
  const acc_t e = cecoef != nullptr ? cecoef[n * 2] : acc_t(0);
  const acc_t* cn = coef + n * d.C * 3;
#pragma unroll
  for (int k = 0; k < kPPT; ++k) {
    const int64_t s = blk * kPix + k * kThreads + threadIdx.x;
    Pixel<acc_t> px;
    pixel_setup(p, d, n, s, px);
    if (!px.in) continue;
    if (d.activation == dice::kSoftmax) {
      acc_t dot = 0, gs = 0;
      for (int64_t c = 0; c < d.C; ++c) {
        const int64_t idx = (n * d.C + c) * d.S + s;
        acc_t g, mc;
        target_at(p, d, px, idx, c, g, mc);
        const acc_t pr = prob(static_cast<acc_t>(p.x[idx]), px, d.activation);
        dot += pr * dice::dloss_dp(pr, g, mc, cn[3 * c], cn[3 * c + 1], d.squared, d.soft);
        gs += g;
      }
      const rowwise::Row<acc_t> ce_row = rowwise::cross_entropy_row(gs);
      for (int64_t c = 0; c < d.C; ++c) {
        const int64_t idx = (n * d.C + c) * d.S + s;
        acc_t g, mc;
        target_at(p, d, px, idx, c, g, mc);
        const acc_t pr = prob(static_cast<acc_t>(p.x[idx]), px, d.activation);
        acc_t r = pr * (dice::dloss_dp(pr, g, mc, cn[3 * c], cn[3 * c + 1], d.squared, d.soft) - dot);
        if (cecoef != nullptr) {
          const acc_t q = c == px.amax ? px.rest * px.inv : acc_t(1) - pr;  // 1 - p
          r += e * mc * rowwise::grad_elem(ce_row, pr, q, g);
        }
        out[idx] = static_cast<scalar_t>(r);
      }
    } else {
      for (int64_t c = 0; c < d.C; ++c) {
        const int64_t idx = (n * d.C + c) * d.S + s;
        const acc_t x = static_cast<acc_t>(p.x[idx]);
        acc_t g, mc;
        target_at(p, d, px, idx, c, g, mc);
        acc_t r;
        if (d.activation == dice::kSigmoid) {
          acc_t sp, sn;
          dice::sigmoid2(x, sp, sn);
          r = sp * sn * dice::dloss_dp(sp, g, mc, cn[3 * c], cn[3 * c + 1], d.squared, d.soft);
          if (cecoef != nullptr) r += e * mc * dice::p_minus_t(sp, sn, g);
        } else {
          r = dice::dloss_dp(x, g, mc, cn[3 * c], cn[3 * c + 1], d.squared, d.soft);
        }
        out[idx] = static_cast<scalar_t>(r);
      }
    }
  }
}

inline DiceDims make_dims(const dice::Args& a) {
  DiceDims d;
  d.C = a.C;
  d.S = a.S;
  d.nblk = (a.S + kPix - 1) / kPix;
  d.activation = static_cast<int>(a.activation);
  d.squared = a.squared;
  d.soft = a.soft;
  d.has_ignore = a.has_ignore;
  d.ignore_index = a.ignore_index;
  d.binary = a.C == 1 && a.activation != dice::kSoftmax;
  return d;
}

template <typename scalar_t>
DicePtrs<scalar_t> make_ptrs(const dice::Args& a) {
  DicePtrs<scalar_t> p;
  p.x = a.input.const_data_ptr<scalar_t>();
  p.labels = a.labels ? a.target.const_data_ptr() : nullptr;
  p.label_bytes = a.labels ? static_cast<int>(a.target.element_size()) : 8;
  p.t = a.labels ? nullptr : a.target.const_data_ptr<scalar_t>();
  return p;
}

// One launch per scalar type; each fp32-accumulating type is instantiated in its own translation
// unit (dice_float.cu, dice_half.cu, dice_bfloat16.cu): cicc spends most of the time on the
// unrolled pixel loop of the sums kernel with its runtime branches, so a parallel build compiles
// the family in a fraction of the time.  dice.cu instantiates double (a few seconds).
template <typename scalar_t>
void launch_sums(const dice::Args& a, const DiceDims& d, bool with_ce, at::Tensor& part, at::Tensor& cepart, cudaStream_t stream) {
  using acc_t = at::opmath_type<scalar_t>;
  const dim3 grid(static_cast<unsigned>(d.nblk), static_cast<unsigned>(a.N));
  dice_sums_kernel<scalar_t><<<grid, kThreads, 0, stream>>>(make_ptrs<scalar_t>(a), d, with_ce, part.mutable_data_ptr<acc_t>(),
                                                            cepart.mutable_data_ptr<acc_t>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

template <typename scalar_t>
void launch_grad(const dice::Args& a, const DiceDims& d, const at::Tensor& grad_sums, const at::Tensor& grad_ce, bool with_ce,
                 at::Tensor& out, cudaStream_t stream) {
  using acc_t = at::opmath_type<scalar_t>;
  const dim3 grid(static_cast<unsigned>(d.nblk), static_cast<unsigned>(a.N));
  dice_grad_kernel<scalar_t><<<grid, kThreads, 0, stream>>>(make_ptrs<scalar_t>(a), d, grad_sums.const_data_ptr<acc_t>(),
                                                            with_ce ? grad_ce.const_data_ptr<acc_t>() : nullptr,
                                                            out.mutable_data_ptr<scalar_t>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

#define FL_DICE_CUDA_INSTANTIATE(EXTERN, T)                                                                              \
  EXTERN template void launch_sums<T>(const dice::Args&, const DiceDims&, bool, at::Tensor&, at::Tensor&, cudaStream_t); \
  EXTERN template void launch_grad<T>(const dice::Args&, const DiceDims&, const at::Tensor&, const at::Tensor&, bool,    \
                                      at::Tensor&, cudaStream_t);
FL_DICE_CUDA_INSTANTIATE(extern, float)
FL_DICE_CUDA_INSTANTIATE(extern, at::Half)
FL_DICE_CUDA_INSTANTIATE(extern, at::BFloat16)

}  // namespace dice_cuda
}  // namespace fastloss
