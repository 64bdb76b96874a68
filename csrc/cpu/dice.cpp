// Dice / Tversky / Jaccard (+ fused cross entropy), C++ CPU kernels: two passes over
// (N, C, S) logits read in place (channel-first, no permute), vectorised along S with ATen's
// Vectorized, at::parallel_for over fixed (image, spatial block) work items.
//   pass 1: per-(image, block, class) partial sums of I, P', G' (+ per-(image, block) CE sum
//           and count) accumulated in fp32 (fp64 for fp64) lanes, then added in block order
//           in fp64: bitwise identical for any thread count.
//   pass 2: dL/dlogits through the softmax/sigmoid Jacobian, recomputing the softmax.
// Integer label maps (uint8 / int32 / int64) are compared with the class index in
// registers; no one-hot, no probabilities are materialised.  Math (plain, squared and
// soft-label sums): csrc/kernels/dice.h.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <torch/library.h>

#include <limits>
#include <tuple>
#include <vector>

#include "fastloss/cpu_loop.h"
#include "kernels/dice.h"

namespace fastloss {
namespace {

using cpu::Vec;
using dice::Args;

// pixels per deterministic reduction block (a multiple of every Vec size): each fp32 lane adds
// at most kPix / V terms in sequence (64 with AVX2) before the block's partial goes to fp64
constexpr int64_t kPix = 512;

// Per chunk of <= V pixels: the label (as acc_t, -1 for ignored / tail lanes) and the mask.
// Labels were validated by the op (fastloss/ops/dice.py) before any backend ran; an
// out-of-range one matches no class here.
template <typename acc_t, typename label_t>
inline void load_labels(const Args& a, const label_t* lab, int64_t n, Vec<acc_t>& labf, Vec<acc_t>& mask) {
  constexpr int64_t V = Vec<acc_t>::size();
  alignas(64) acc_t lb[V], mb[V];
  const bool binary = a.C == 1 && a.activation != dice::kSoftmax;
  const int64_t hi = binary ? 2 : a.C;
  for (int64_t j = 0; j < V; ++j) {
    if (j >= n) {
      lb[j] = acc_t(-1);
      mb[j] = acc_t(0);
      continue;
    }
    const int64_t l = static_cast<int64_t>(lab[j]);
    if (a.has_ignore && l == a.ignore_index) {
      lb[j] = acc_t(-1);
      mb[j] = acc_t(0);
      continue;
    }
    lb[j] = (l >= 0 && l < hi) ? static_cast<acc_t>(l) : acc_t(-1);
    mb[j] = acc_t(1);
  }
  labf = Vec<acc_t>::loadu(lb);
  mask = Vec<acc_t>::loadu(mb);
}

template <typename acc_t>
inline Vec<acc_t> target_of(const Vec<acc_t>& labf, int64_t c, bool binary) {  // eq(): 1.0 / 0.0 lanes
  return labf.eq(Vec<acc_t>(static_cast<acc_t>(binary ? 1 : c)));
}

template <typename acc_t>
inline Vec<acc_t> tail01(int64_t n) {  // 1 in the first n lanes, 0 after
  return Vec<acc_t>::set(Vec<acc_t>(acc_t(0)), Vec<acc_t>(acc_t(1)), n);
}

// Float target chunk: g (0 on ignored and tail lanes) and the 0/1 element mask mc, given
// the 0/1 pixel mask m (the tail).
template <typename acc_t, typename scalar_t>
inline void load_float_target(const Args& a, const scalar_t* t, int64_t n, const Vec<acc_t>& m, Vec<acc_t>& g, Vec<acc_t>& mc) {
  g = cpu::load<acc_t>(t, n);
  mc = m;
  if (a.has_ignore) {
    mc = mc * g.ne(Vec<acc_t>(static_cast<acc_t>(a.ignore_index)));  // ne(): 1.0 / 0.0 lanes
    g = g * mc;
  }
}

// Softmax numerators of one chunk of k pixels over the C channels of image xn (channel
// stride S): x[c] = the logits, e[c] = exp(x[c] - mx) (e may alias x), sum = sum_c e[c].
// With `amax` / `rest`: the first argmax class (as a float lane) and the sum of e over the
// other classes, so 1 - p of the argmax class is rest / sum without the cancellation of
// 1 - p (dice::one_minus_p).
template <typename acc_t, typename scalar_t>
inline void softmax_exp(const scalar_t* xn, int64_t s, int64_t k, int64_t C, int64_t S, Vec<acc_t>* x, Vec<acc_t>* e, Vec<acc_t>& mx,
                        Vec<acc_t>& sum, Vec<acc_t>* amax = nullptr, Vec<acc_t>* rest = nullptr) {
  mx = Vec<acc_t>(-std::numeric_limits<acc_t>::infinity());
  Vec<acc_t> am(acc_t(0));
  for (int64_t c = 0; c < C; ++c) {
    x[c] = cpu::load<acc_t>(xn + c * S + s, k);
    if (amax != nullptr) am = Vec<acc_t>::blendv(am, Vec<acc_t>(static_cast<acc_t>(c)), x[c] > mx);
    mx = at::vec::maximum(mx, x[c]);
  }
  sum = Vec<acc_t>(acc_t(0));
  Vec<acc_t> others(acc_t(0));
  for (int64_t c = 0; c < C; ++c) {
    e[c] = fl::exp_nonpos(x[c] - mx);  // <= 3 ulp, argument <= 0 (or NaN)
    sum = sum + e[c];
    if (rest != nullptr) others = others + Vec<acc_t>::blendv(e[c], Vec<acc_t>(acc_t(0)), am == Vec<acc_t>(static_cast<acc_t>(c)));
  }
  if (amax != nullptr) *amax = am;
  if (rest != nullptr) *rest = others;
}

// ------------------------------------------------------------------ pass 1

template <typename scalar_t, typename label_t>
void sums_cpu(const Args& a, bool with_ce, at::Tensor& sums, at::Tensor& ce) {
  using acc_t = at::opmath_type<scalar_t>;
  constexpr int64_t V = Vec<acc_t>::size();
  const int64_t N = a.N, C = a.C, S = a.S;
  const int64_t nblk = (S + kPix - 1) / kPix;
  const scalar_t* x_ptr = a.input.const_data_ptr<scalar_t>();
  const label_t* lab_ptr = a.labels ? a.target.const_data_ptr<label_t>() : nullptr;
  const scalar_t* t_ptr = a.labels ? nullptr : a.target.const_data_ptr<scalar_t>();
  const bool softmax = a.activation == dice::kSoftmax, binary = a.C == 1 && !softmax, sq = a.squared, soft = a.soft;
  std::vector<double> part(static_cast<size_t>(N * nblk * C * 3), 0.0);
  std::vector<double> cpart(static_cast<size_t>(N * nblk * 2), 0.0);

  at::parallel_for(0, N * nblk, 1, [&](int64_t w0, int64_t w1) {
    std::vector<Vec<acc_t>> acc(static_cast<size_t>(3 * C));
    std::vector<Vec<acc_t>> xbuf(static_cast<size_t>(softmax ? C : 0)), ebuf(static_cast<size_t>(softmax ? C : 0));
    for (int64_t w = w0; w < w1; ++w) {
      const int64_t n = w / nblk, blk = w % nblk;
      const int64_t s0 = blk * kPix, s1 = std::min(S, s0 + kPix);
      for (auto& v : acc) v = Vec<acc_t>(acc_t(0));
      Vec<acc_t> ce_acc(acc_t(0)), cnt_acc(acc_t(0));
      const scalar_t* xn = x_ptr + n * C * S;
      for (int64_t s = s0; s < s1; s += V) {
        const int64_t k = std::min(V, s1 - s);
        Vec<acc_t> labf, m = tail01<acc_t>(k);
        if (a.labels) load_labels<acc_t>(a, lab_ptr + n * S + s, k, labf, m);
        auto target = [&](int64_t c, Vec<acc_t>& g, Vec<acc_t>& mc) {
          if (a.labels) {
            g = target_of(labf, c, binary);
            mc = m;
          } else {
            load_float_target<acc_t>(a, t_ptr + (n * C + c) * S + s, k, m, g, mc);
          }
        };
        if (softmax) {
          Vec<acc_t> mx, sum, amax, rest;
          softmax_exp<acc_t>(xn, s, k, C, S, xbuf.data(), ebuf.data(), mx, sum, &amax, &rest);
          const Vec<acc_t> inv = Vec<acc_t>(acc_t(1)) / sum;
          Vec<acc_t> gsum(acc_t(0)), gd(acc_t(0));
          for (int64_t c = 0; c < C; ++c) {
            const Vec<acc_t> p = ebuf[c] * inv;
            Vec<acc_t> g, mc;
            target(c, g, mc);
            acc[3 * c + 0] = acc[3 * c + 0] + mc * dice::inter_term(p, g, soft);
            acc[3 * c + 1] = acc[3 * c + 1] + mc * dice::card_term(p, sq, soft);
            acc[3 * c + 2] = acc[3 * c + 2] + mc * dice::card_term(g, sq, soft);
            if (with_ce) {
              gsum = gsum + g;
              gd = gd + rowwise::dense_term(g, mx, xbuf[c]);  // 0 for a class without target mass, even at x = -inf
            }
          }
          if (with_ce) {
            // CE = sum_c g_c (mx - x_c) + (sum_c g_c) log1p(rest): no cancellation for a confident pixel
            const Vec<acc_t> ce_px = rowwise::dense_cross_entropy(gd, gsum, rest.log1p());
            // blend, not multiply: padded / ignored lanes must add exactly 0
            ce_acc = ce_acc + Vec<acc_t>::blendv(Vec<acc_t>(acc_t(0)), ce_px, (m != Vec<acc_t>(acc_t(0))));
            cnt_acc = cnt_acc + m;
          }
        } else {
          for (int64_t c = 0; c < C; ++c) {
            const Vec<acc_t> x = cpu::load<acc_t>(xn + c * S + s, k);
            Vec<acc_t> g, mc;
            target(c, g, mc);
            Vec<acc_t> p = x;
            if (a.activation == dice::kSigmoid) {
              Vec<acc_t> sn;
              dice::sigmoid2(x, p, sn);
            }
            acc[3 * c + 0] = acc[3 * c + 0] + mc * dice::inter_term(p, g, soft);
            acc[3 * c + 1] = acc[3 * c + 1] + mc * dice::card_term(p, sq, soft);
            acc[3 * c + 2] = acc[3 * c + 2] + mc * dice::card_term(g, sq, soft);
            if (with_ce) {
              ce_acc = ce_acc + Vec<acc_t>::blendv(Vec<acc_t>(acc_t(0)), dice::bce(x, g), (mc != Vec<acc_t>(acc_t(0))));
              cnt_acc = cnt_acc + mc;
            }
          }
        }
      }
      double* out = part.data() + (n * nblk + blk) * C * 3;
      for (int64_t j = 0; j < 3 * C; ++j) out[j] = cpu::hsum(acc[j]);
      cpart[(n * nblk + blk) * 2 + 0] = cpu::hsum(ce_acc);
      cpart[(n * nblk + blk) * 2 + 1] = cpu::hsum(cnt_acc);
    }
  });

  acc_t* so = sums.mutable_data_ptr<acc_t>();
  for (int64_t n = 0; n < N; ++n) {
    for (int64_t j = 0; j < 3 * C; ++j) {
      double t = 0;
      for (int64_t b = 0; b < nblk; ++b) t += part[(n * nblk + b) * C * 3 + j];
      so[n * C * 3 + j] = static_cast<acc_t>(t);
    }
  }
  if (with_ce) {
    acc_t* co = ce.mutable_data_ptr<acc_t>();
    for (int64_t n = 0; n < N; ++n) {
      for (int64_t j = 0; j < 2; ++j) {
        double t = 0;
        for (int64_t b = 0; b < nblk; ++b) t += cpart[(n * nblk + b) * 2 + j];
        co[n * 2 + j] = static_cast<acc_t>(t);
      }
    }
  }
}

// ------------------------------------------------------------------ pass 2

template <typename scalar_t, typename label_t>
void grad_cpu(const Args& a, const at::Tensor& gsums, const at::Tensor& gce, at::Tensor& out) {
  using acc_t = at::opmath_type<scalar_t>;
  constexpr int64_t V = Vec<acc_t>::size();
  const int64_t N = a.N, C = a.C, S = a.S;
  const int64_t nblk = (S + kPix - 1) / kPix;
  const scalar_t* x_ptr = a.input.const_data_ptr<scalar_t>();
  const label_t* lab_ptr = a.labels ? a.target.const_data_ptr<label_t>() : nullptr;
  const scalar_t* t_ptr = a.labels ? nullptr : a.target.const_data_ptr<scalar_t>();
  const acc_t* coef = gsums.const_data_ptr<acc_t>();
  const bool with_ce = gce.numel() > 0;
  const acc_t* ce_coef = with_ce ? gce.const_data_ptr<acc_t>() : nullptr;
  scalar_t* o_ptr = out.mutable_data_ptr<scalar_t>();
  const bool softmax = a.activation == dice::kSoftmax, binary = a.C == 1 && !softmax, sq = a.squared, soft = a.soft;

  at::parallel_for(0, N * nblk, 1, [&](int64_t w0, int64_t w1) {
    std::vector<Vec<acc_t>> pbuf(static_cast<size_t>(softmax ? C : 0)), dbuf(static_cast<size_t>(softmax ? C : 0));
    for (int64_t w = w0; w < w1; ++w) {
      const int64_t n = w / nblk, blk = w % nblk;
      const int64_t s0 = blk * kPix, s1 = std::min(S, s0 + kPix);
      const scalar_t* xn = x_ptr + n * C * S;
      scalar_t* on = o_ptr + n * C * S;
      const acc_t* cn = coef + n * C * 3;
      const Vec<acc_t> e_ce(with_ce ? ce_coef[n * 2] : acc_t(0));
      for (int64_t s = s0; s < s1; s += V) {
        const int64_t k = std::min(V, s1 - s);
        Vec<acc_t> labf, m = tail01<acc_t>(k);
        if (a.labels) load_labels<acc_t>(a, lab_ptr + n * S + s, k, labf, m);
        auto target = [&](int64_t c, Vec<acc_t>& g, Vec<acc_t>& mc) {
          if (a.labels) {
            g = target_of(labf, c, binary);
            mc = m;
          } else {
            load_float_target<acc_t>(a, t_ptr + (n * C + c) * S + s, k, m, g, mc);
          }
        };
        if (softmax) {
          Vec<acc_t> mx, sum, amax, rest;
          softmax_exp<acc_t>(xn, s, k, C, S, pbuf.data(), pbuf.data(), mx, sum, &amax, &rest);
          const Vec<acc_t> inv = Vec<acc_t>(acc_t(1)) / sum;
          Vec<acc_t> dot(acc_t(0)), gsum(acc_t(0));
          for (int64_t c = 0; c < C; ++c) {
            Vec<acc_t> g, mc;
            target(c, g, mc);
            pbuf[c] = pbuf[c] * inv;
            dbuf[c] = dice::dloss_dp(pbuf[c], g, mc, Vec<acc_t>(cn[3 * c]), Vec<acc_t>(cn[3 * c + 1]), sq, soft);
            dot = dot + pbuf[c] * dbuf[c];
            if (with_ce) gsum = gsum + g;
          }
          const rowwise::Row<Vec<acc_t>> ce_row = rowwise::cross_entropy_row(gsum);
          for (int64_t c = 0; c < C; ++c) {
            Vec<acc_t> r = pbuf[c] * (dbuf[c] - dot);
            if (with_ce) {
              Vec<acc_t> g, mc;
              target(c, g, mc);
              const Vec<acc_t> q = Vec<acc_t>::blendv(Vec<acc_t>(acc_t(1)) - pbuf[c], rest * inv, amax == Vec<acc_t>(static_cast<acc_t>(c)));
              r = r + e_ce * mc * rowwise::grad_elem(ce_row, pbuf[c], q, g);
            }
            cpu::store<acc_t>(on + c * S + s, r, k);
          }
        } else {
          for (int64_t c = 0; c < C; ++c) {
            const Vec<acc_t> x = cpu::load<acc_t>(xn + c * S + s, k);
            Vec<acc_t> g, mc;
            target(c, g, mc);
            Vec<acc_t> r;
            if (a.activation == dice::kSigmoid) {
              Vec<acc_t> sp, sn;
              dice::sigmoid2(x, sp, sn);
              r = sp * sn * dice::dloss_dp(sp, g, mc, Vec<acc_t>(cn[3 * c]), Vec<acc_t>(cn[3 * c + 1]), sq, soft);
              if (with_ce) r = r + e_ce * mc * dice::p_minus_t(sp, sn, g);
            } else {
              r = dice::dloss_dp(x, g, mc, Vec<acc_t>(cn[3 * c]), Vec<acc_t>(cn[3 * c + 1]), sq, soft);
            }
            cpu::store<acc_t>(on + c * S + s, r, k);
          }
        }
      }
    }
  });
}

template <typename F>
void dispatch_labels(const Args& a, const F& f) {
  if (!a.labels) return f(static_cast<int64_t*>(nullptr));
  switch (a.target.scalar_type()) {
    case at::kByte: return f(static_cast<uint8_t*>(nullptr));
    case at::kInt: return f(static_cast<int32_t*>(nullptr));
    default: return f(static_cast<int64_t*>(nullptr));
  }
}

std::tuple<at::Tensor, at::Tensor> sums_cpu_op(const at::Tensor& input, const at::Tensor& target, int64_t activation, bool squared,
                                               bool soft, c10::optional<int64_t> ignore_index, bool with_ce) {
  const Args a = dice::make_args(input, target, activation, squared, soft, ignore_index);
  const auto acc_opt = input.options().dtype(input.scalar_type() == at::kDouble ? at::kDouble : at::kFloat);
  at::Tensor sums = at::empty({a.N, a.C, 3}, acc_opt);
  at::Tensor ce = at::empty({with_ce ? a.N : 0, 2}, acc_opt);
  if (with_ce) ce.zero_();
  if (a.N * a.C * a.S == 0) {
    sums.zero_();
    return {sums, with_ce ? ce : at::empty({0}, acc_opt)};
  }
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, input.scalar_type(), "dice_sums_cpu", [&] {
    dispatch_labels(a, [&](auto* tag) {
      using label_t = std::remove_pointer_t<decltype(tag)>;
      sums_cpu<scalar_t, label_t>(a, with_ce, sums, ce);
    });
  });
  return {sums, with_ce ? ce : at::empty({0}, acc_opt)};
}

at::Tensor grad_cpu_op(const at::Tensor& grad_sums, const at::Tensor& grad_ce, const at::Tensor& input, const at::Tensor& target,
                       int64_t activation, bool squared, bool soft, c10::optional<int64_t> ignore_index) {
  const Args a = dice::make_args(input, target, activation, squared, soft, ignore_index);
  const auto acc_t = input.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  TORCH_CHECK(grad_sums.scalar_type() == acc_t && grad_sums.is_contiguous() && grad_sums.numel() == a.N * a.C * 3,
              "fastloss dice: grad_sums must be a contiguous (N, C, 3) tensor in the accumulation dtype");
  TORCH_CHECK(grad_ce.numel() == 0 || (grad_ce.scalar_type() == acc_t && grad_ce.is_contiguous() && grad_ce.numel() == a.N * 2),
              "fastloss dice: grad_ce must be empty or a contiguous (N, 2) tensor in the accumulation dtype");
  at::Tensor out = at::empty_like(input);
  if (out.numel() == 0) return out;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, input.scalar_type(), "dice_grad_cpu", [&] {
    dispatch_labels(a, [&](auto* tag) {
      using label_t = std::remove_pointer_t<decltype(tag)>;
      grad_cpu<scalar_t, label_t>(a, grad_sums, grad_ce, out);
    });
  });
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(fastloss, CPU, m) {
  m.impl("dice_sums_native", &sums_cpu_op);
  m.impl("dice_grad_native", &grad_cpu_op);
}

}  // namespace fastloss
