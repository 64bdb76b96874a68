// IoU family, C++ CPU kernels (at::vec::Vectorized lanes, at::parallel_for, fixed reduction
// blocks).  The geometry and its derivatives are csrc/kernels/box_iou.h (shared with CUDA);
// the calling convention of the *_native ops is in csrc/fastloss.cpp.
//
// Boxes are stored (n, 4) or, 3-D, (n, 6) (array of structures): each chunk of V boxes is
// gathered into one vector per coordinate, the loss and its gradient (reverse mode, box_iou.h) are computed V boxes
// at a time, and gradients are scattered back to (n, 4).  On the CPU the loss is
// compute-bound (atan2/exp/divisions), so, as for the focal loss, the forward writes
// dL/dpred when asked (with_grad) and the backward only scales it.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/scalar_tensor.h>
#include <torch/library.h>

#include <algorithm>
#include <limits>
#include <tuple>
#include <type_traits>
#include <vector>

#include "fastloss/cpu_loop.h"
#include "fastloss/op_checks.h"
#include "kernels/box_iou.h"

namespace fastloss {
namespace {

using cpu::Vec;

struct BoxLossArgs {
  at::Tensor pred, target, weight;
  int64_t n = 0;
  box::Params<double> prm{};
  Reduction reduction = Reduction::Mean;
  bool terms = false;  // reduction code kTermsCode: bounded_iou's 4 terms per box, (n, 4)
};

// reduction code of the per-term output (fastloss/ops/box_iou.py TERMS): kind bounded_iou, 2-D;
// the forward writes (n, 4) terms (times the box's weight), the backward takes an (n, 4)
// upstream gradient
constexpr int64_t kTermsCode = 3;

void check_kind_fmt(int64_t kind, int64_t max_kind, int64_t fmt, int64_t convention) {
  TORCH_CHECK(kind >= 0 && kind <= max_kind, "fastloss: box kind code out of range");
  TORCH_CHECK(fmt >= 0 && fmt <= 2, "fastloss: box fmt code must be 0 (xyxy), 1 (xywh) or 2 (cxcywh)");
  TORCH_CHECK(convention >= box::kConvFastloss && convention <= box::kConvTorchvision, "fastloss: box convention code out of range");
}

BoxLossArgs make_args(const at::Tensor& pred, const at::Tensor& target, const c10::optional<at::Tensor>& weight, int64_t kind, int64_t fmt,
                      int64_t convention, double eps, double power, double gamma, int64_t reduction) {
  BoxLossArgs a;
  TORCH_CHECK(pred.is_floating_point() && pred.is_contiguous() && pred.dim() == 2 && (pred.size(1) == 4 || pred.size(1) == 6),
              "fastloss: `pred` must be a contiguous floating (n, 4) or 3-D (n, 6) tensor");
  TORCH_CHECK(target.sizes() == pred.sizes() && target.scalar_type() == pred.scalar_type() && target.is_contiguous() &&
                  target.device() == pred.device(),
              "fastloss: `target` must match `pred` in shape, dtype and device and be contiguous");
  TORCH_CHECK(reduction >= 0 && reduction <= kTermsCode, "fastloss: reduction code must be 0 (none), 1 (sum), 2 (mean) or 3 (terms)");
  TORCH_CHECK(reduction != kTermsCode || (kind == box::kBoundedIoU && pred.size(1) == 4),
              "fastloss: the per-term output (reduction code 3) is bounded_iou's, of 2-D boxes");
  check_kind_fmt(kind, box::kBoundedIoU, fmt, convention);
  TORCH_CHECK(pred.size(1) == 4 || box::paired_nd_supported(static_cast<int>(kind), static_cast<int>(fmt), static_cast<int>(convention)),
              "fastloss: 3-D boxes (n, 6): kinds iou / giou / diou, fmt xyxy, convention fastloss only");
  a.pred = pred;
  a.target = target;
  a.n = pred.size(0);
  a.prm = box::Params<double>{static_cast<int>(kind), static_cast<int>(fmt), eps, power, gamma, static_cast<int>(convention)};
  a.terms = reduction == kTermsCode;
  a.reduction = a.terms ? Reduction::None : static_cast<Reduction>(reduction);
  if (weight.has_value() && weight->defined()) {
    const at::Tensor& w = *weight;
    TORCH_CHECK(w.device() == pred.device() && w.is_contiguous() && w.scalar_type() == reduced_dtype(pred.scalar_type()) && w.numel() == a.n,
                "fastloss: `weight` must be contiguous on pred's device, fp32 (fp64 for fp64 pred), one value per box");
    a.weight = w;
  }
  return a;
}

// Gather the NC coordinates of boxes [j, j + cnt) into lanes (lanes past cnt: zero boxes).
// Full chunks of fp32/fp64 2-D boxes are transposed in registers (two rounds of deinterleave2:
// [x1 y1 x2 y2]... -> x1..., y1..., x2..., y2...); tails, fp16/bf16 and 3-D boxes go through a
// buffer.
template <typename acc_t, int NC = 4, typename scalar_t>
inline void gather(const scalar_t* src, int64_t j, int64_t cnt, Vec<acc_t> out[NC]) {
  constexpr int64_t V = Vec<acc_t>::size();
  if constexpr (std::is_same_v<acc_t, scalar_t> && NC == 4) {
    if (cnt == V) {
      const acc_t* s = src + j * 4;
      const auto lo = at::vec::deinterleave2(Vec<acc_t>::loadu(s), Vec<acc_t>::loadu(s + V));          // (x1 x2 ..., y1 y2 ...)
      const auto hi = at::vec::deinterleave2(Vec<acc_t>::loadu(s + 2 * V), Vec<acc_t>::loadu(s + 3 * V));
      const auto xs = at::vec::deinterleave2(lo.first, hi.first);
      const auto ys = at::vec::deinterleave2(lo.second, hi.second);
      out[0] = xs.first;
      out[1] = ys.first;
      out[2] = xs.second;
      out[3] = ys.second;
      return;
    }
  }
  alignas(64) acc_t buf[NC][V];
  for (int64_t i = 0; i < cnt; ++i)
    for (int k = 0; k < NC; ++k) buf[k][i] = static_cast<acc_t>(src[(j + i) * NC + k]);
  for (int64_t i = cnt; i < V; ++i)
    for (int k = 0; k < NC; ++k) buf[k][i] = acc_t(0);
  for (int k = 0; k < NC; ++k) out[k] = Vec<acc_t>::loadu(buf[k]);
}

template <typename acc_t, int NC = 4, typename out_t>
inline void scatter(out_t* dst, int64_t j, int64_t cnt, const Vec<acc_t> g[NC]) {
  constexpr int64_t V = Vec<acc_t>::size();
  if constexpr (std::is_same_v<acc_t, out_t> && NC == 4) {
    if (cnt == V) {  // the inverse of gather's transposition
      const auto xs = at::vec::interleave2(g[0], g[2]);
      const auto ys = at::vec::interleave2(g[1], g[3]);
      const auto lo = at::vec::interleave2(xs.first, ys.first);
      const auto hi = at::vec::interleave2(xs.second, ys.second);
      acc_t* d = dst + j * 4;
      lo.first.store(d);
      lo.second.store(d + V);
      hi.first.store(d + 2 * V);
      hi.second.store(d + 3 * V);
      return;
    }
  }
  alignas(64) acc_t buf[NC][V];
  for (int k = 0; k < NC; ++k) g[k].store(buf[k]);
  for (int64_t i = 0; i < cnt; ++i)
    for (int k = 0; k < NC; ++k) dst[(j + i) * NC + k] = static_cast<out_t>(buf[k][i]);
}

// forward (kBackward = false): per-box loss into `out` or its sum, dL/dpred * weight into
// `cache` if defined; backward: dL/dpred * weight * upstream into `out` (n, NC).
// kGeneric: the box math's instantiation (box_iou.h Pair), false for convention "fastloss";
// NC: 4 (2-D boxes) or 6 (3-D); kTerms: bounded_iou's (n, 4) terms (out and the upstream
// gradient (n, 4)); all chosen once per call (run_paired), outside the loops.
template <typename scalar_t, bool kBackward, bool kGeneric, int NC, bool kTerms = false>
double paired_cpu(const BoxLossArgs& a, const at::Tensor& upstream, at::Tensor& out, at::Tensor& cache) {
  using acc_t = at::opmath_type<scalar_t>;
  using V = Vec<acc_t>;
  const scalar_t* p_ptr = a.pred.const_data_ptr<scalar_t>();
  const scalar_t* t_ptr = a.target.const_data_ptr<scalar_t>();
  const acc_t* w_ptr = a.weight.defined() ? a.weight.const_data_ptr<acc_t>() : nullptr;
  const bool store = kBackward || a.reduction == Reduction::None;
  scalar_t* o_ptr = store ? out.mutable_data_ptr<scalar_t>() : nullptr;
  acc_t* c_ptr = cache.defined() ? cache.mutable_data_ptr<acc_t>() : nullptr;
  const bool need_grad = kBackward || c_ptr != nullptr;
  const bool per_box_upstream = kBackward && a.reduction == Reduction::None;
  const scalar_t* g_ptr = per_box_upstream ? upstream.const_data_ptr<scalar_t>() : nullptr;
  acc_t g_scale = acc_t(1);
  if (kBackward && !per_box_upstream) {
    g_scale = upstream.item<acc_t>();  // a CPU scalar: no device sync
    if (a.reduction == Reduction::Mean) g_scale = static_cast<acc_t>(static_cast<double>(g_scale) / mean_count(a.n));
  }
  const box::Params<acc_t> prm{a.prm.kind, a.prm.fmt, static_cast<acc_t>(a.prm.eps), static_cast<acc_t>(a.prm.power),
                               static_cast<acc_t>(a.prm.gamma), a.prm.conv};

  return cpu::for_each_chunk<acc_t>(a.n, a.n, [&](int64_t, int64_t, int64_t j, int64_t cnt) {
    V p[NC], t[NC];
    gather<acc_t, NC>(p_ptr, j, cnt, p);
    gather<acc_t, NC>(t_ptr, j, cnt, t);
    const V w = w_ptr != nullptr ? cpu::load<acc_t>(w_ptr + j, cnt) : V(acc_t(1));
    if constexpr (kTerms) {
      V up[4], terms[4], g[4];
      if constexpr (kBackward) gather<acc_t>(g_ptr, j, cnt, up);
      box::bounded_iou_terms<kBackward>(p, t, prm, up, terms, g);
      V* res = kBackward ? g : terms;
      for (int k = 0; k < 4; ++k) res[k] = res[k] * w;
      scatter<acc_t>(o_ptr, j, cnt, res);
      return V(acc_t(0));
    }
    V loss;
    if (need_grad) {
      V g[NC];
      loss = box::paired_loss_coords<true, kGeneric, NC>(p, t, prm, g);
      if constexpr (kBackward) {
        const V up = per_box_upstream ? cpu::load<acc_t>(g_ptr + j, cnt) : V(g_scale);
        for (int k = 0; k < NC; ++k) g[k] = g[k] * w * up;
        scatter<acc_t, NC>(o_ptr, j, cnt, g);
        return V(acc_t(0));
      } else {
        for (int k = 0; k < NC; ++k) g[k] = g[k] * w;
        scatter<acc_t, NC>(c_ptr, j, cnt, g);
      }
    } else {
      loss = box::paired_loss_coords<false, kGeneric, NC>(p, t, prm, static_cast<V*>(nullptr));
    }
    loss = loss * w;
    if (store) {
      cpu::store<acc_t>(o_ptr + j, loss, cnt);
      return V(acc_t(0));
    }
    return V::set(V(acc_t(0)), loss, cnt);
  });
}

// paired_cpu's instantiation for this call: bounded_iou's terms, 3-D boxes (convention fastloss
// only), 2-D boxes without or with the runtime convention (box::loss_is_generic)
template <typename scalar_t, bool kBackward>
double run_paired(const BoxLossArgs& a, const at::Tensor& upstream, at::Tensor& out, at::Tensor& cache) {
  if (a.terms) return paired_cpu<scalar_t, kBackward, false, 4, true>(a, upstream, out, cache);
  if (a.pred.size(1) == 6) return paired_cpu<scalar_t, kBackward, false, 6>(a, upstream, out, cache);
  if (!box::loss_is_generic(a.prm.conv, a.prm.kind)) return paired_cpu<scalar_t, kBackward, false, 4>(a, upstream, out, cache);
  return paired_cpu<scalar_t, kBackward, true, 4>(a, upstream, out, cache);
}

std::tuple<at::Tensor, at::Tensor> loss_forward_cpu(const at::Tensor& pred, const at::Tensor& target, const c10::optional<at::Tensor>& weight,
                                                    int64_t kind, int64_t fmt, int64_t convention, double eps, double power, double gamma,
                                                    int64_t reduction, bool with_grad) {
  const BoxLossArgs a = make_args(pred, target, weight, kind, fmt, convention, eps, power, gamma, reduction);
  TORCH_CHECK(!(a.terms && with_grad), "fastloss: the per-term output stores no gradient (the backward recomputes it)");
  const auto acc_options = pred.options().dtype(reduced_dtype(pred.scalar_type()));
  at::Tensor out = a.terms                              ? cpu::empty_output({a.n, 4}, pred.options())
                   : a.reduction == Reduction::None ? cpu::empty_output({a.n}, pred.options())
                                                    : at::Tensor();
  at::Tensor cache = with_grad ? cpu::empty_output({a.n, pred.size(1)}, acc_options) : at::Tensor();
  double total = 0;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, pred.scalar_type(), "box_iou_loss_forward_cpu",
                                  [&] { total = run_paired<scalar_t, false>(a, at::Tensor(), out, cache); });
  if (!with_grad) cache = at::empty({0}, acc_options);
  if (a.reduction == Reduction::None) return {out, cache};
  if (a.reduction == Reduction::Mean) total /= mean_count(a.n);
  return {at::scalar_tensor(total, acc_options), cache};
}

at::Tensor loss_backward_cpu(const at::Tensor& grad, const at::Tensor& pred, const at::Tensor& target, const c10::optional<at::Tensor>& weight,
                             int64_t kind, int64_t fmt, int64_t convention, double eps, double power, double gamma, int64_t reduction) {
  const BoxLossArgs a = make_args(pred, target, weight, kind, fmt, convention, eps, power, gamma, reduction);
  TORCH_CHECK(grad.device() == pred.device() && grad.is_contiguous(), "fastloss: upstream gradient must be contiguous on pred's device");
  if (a.reduction == Reduction::None) {
    TORCH_CHECK(grad.numel() == a.n * (a.terms ? 4 : 1) && grad.scalar_type() == pred.scalar_type(),
                "fastloss: upstream gradient must have one value per box (per term: 4)");
  } else {
    TORCH_CHECK(grad.numel() == 1 && grad.scalar_type() == reduced_dtype(pred.scalar_type()), "fastloss: upstream gradient must be a scalar");
  }
  at::Tensor out = cpu::empty_output({a.n, pred.size(1)}, pred.options()), no_cache;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, pred.scalar_type(), "box_iou_loss_backward_cpu",
                                  [&] { run_paired<scalar_t, true>(a, grad, out, no_cache); });
  return out;
}


// ======================================================================================
// Pairwise / aligned matrices and the fused max
// ======================================================================================

struct MatrixArgs {
  at::Tensor b1, b2;
  int64_t B = 0, N = 0, M = 0;
  int kind = 0, fmt = 0, conv = 0;
  double eps = 0;
};

MatrixArgs make_matrix_args(const at::Tensor& b1, const at::Tensor& b2, int64_t kind, int64_t fmt, int64_t convention, double eps, bool aligned) {
  TORCH_CHECK(b1.is_floating_point() && b1.is_contiguous() && b1.dim() == 3 && b1.size(2) == 4,
              "fastloss: `boxes1` must be a contiguous floating (B, N, 4) tensor");
  TORCH_CHECK(b2.is_contiguous() && b2.dim() == 3 && b2.size(2) == 4 && b2.size(0) == b1.size(0) && b2.scalar_type() == b1.scalar_type() &&
                  b2.device() == b1.device(),
              "fastloss: `boxes2` must be a contiguous (B, M, 4) tensor of boxes1's dtype and device");
  TORCH_CHECK(!aligned || b2.size(1) == b1.size(1), "fastloss: aligned boxes need N == M");
  check_kind_fmt(kind, box::kMCIoU, fmt, convention);
  MatrixArgs a;
  a.b1 = b1;
  a.b2 = b2;
  a.B = b1.size(0);
  a.N = b1.size(1);
  a.M = b2.size(1);
  a.kind = static_cast<int>(kind);
  a.fmt = static_cast<int>(fmt);
  a.conv = static_cast<int>(convention);
  a.eps = eps;
  return a;
}

// boxes (B, M, 4) -> coordinate-major (B, 4, M) in acc_t, so the kernels load full vectors
template <typename acc_t, typename scalar_t>
std::vector<acc_t> soa(const at::Tensor& b) {
  const int64_t B = b.size(0), M = b.size(1);
  std::vector<acc_t> out(static_cast<size_t>(B * 4 * M));
  const scalar_t* src = b.const_data_ptr<scalar_t>();
  at::parallel_for(0, B * M, 4096, [&](int64_t i0, int64_t i1) {
    for (int64_t i = i0; i < i1; ++i) {
      const int64_t bb = i / M, m = i - bb * M;
      for (int k = 0; k < 4; ++k) out[static_cast<size_t>((bb * 4 + k) * M + m)] = static_cast<acc_t>(src[i * 4 + k]);
    }
  });
  return out;
}

template <typename acc_t>
inline void load_soa(const acc_t* base, int64_t M, int64_t m, int64_t cnt, Vec<acc_t> out[4]) {
  for (int k = 0; k < 4; ++k) out[k] = cpu::load<acc_t>(base + k * M + m, cnt);
}

// Aligned pairs boxes1[i] / boxes2[i], i over B * N: both are (B * N, 4) rows, so they are
// read as the paired losses read pred / target (gather: in-register transposition), V pairs
// at a time.  f(i, cnt, x, y).
template <typename acc_t, typename scalar_t, typename F>
void for_each_aligned(const MatrixArgs& a, const F& f) {
  constexpr int64_t W = Vec<acc_t>::size();
  const scalar_t* p1 = a.b1.const_data_ptr<scalar_t>();
  const scalar_t* p2 = a.b2.const_data_ptr<scalar_t>();
  at::parallel_for(0, a.B * a.N, 4096, [&](int64_t i0, int64_t i1) {
    for (int64_t i = i0; i < i1; i += W) {
      const int64_t cnt = std::min(W, i1 - i);
      Vec<acc_t> x[4], y[4];
      gather<acc_t>(p1, i, cnt, x);
      gather<acc_t>(p2, i, cnt, y);
      f(i, cnt, x, y);
    }
  });
}

template <typename scalar_t, bool kGeneric>
at::Tensor matrix_forward_impl(const MatrixArgs& a, bool aligned) {
  using acc_t = at::opmath_type<scalar_t>;
  using V = Vec<acc_t>;
  constexpr int64_t W = V::size();
  at::Tensor out = aligned ? cpu::empty_output({a.B, a.N}, a.b1.options()) : cpu::empty_output({a.B, a.N, a.M}, a.b1.options());
  if (out.numel() == 0) return out;
  scalar_t* o = out.mutable_data_ptr<scalar_t>();
  const acc_t eps = static_cast<acc_t>(a.eps);
  if (aligned) {
    for_each_aligned<acc_t, scalar_t>(a, [&](int64_t i, int64_t cnt, const V* x, const V* y) {
      cpu::store<acc_t>(o + i, box::metric_value<kGeneric>(x, y, a.kind, a.fmt, a.conv, eps), cnt);
    });
    return out;
  }
  const std::vector<acc_t> s2 = soa<acc_t, scalar_t>(a.b2);
  const scalar_t* p1 = a.b1.const_data_ptr<scalar_t>();
  const int64_t M = a.M;
  const int64_t grain = std::max<int64_t>(1, 32768 / std::max<int64_t>(M, 1));
  at::parallel_for(0, a.B * a.N, grain, [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      const int64_t bb = r / a.N;
      V x[4];
      for (int k = 0; k < 4; ++k) x[k] = V(static_cast<acc_t>(p1[r * 4 + k]));
      const acc_t* base = s2.data() + bb * 4 * M;
      scalar_t* orow = o + r * M;
      for (int64_t m = 0; m < M; m += W) {
        const int64_t cnt = std::min(W, M - m);
        V y[4];
        load_soa(base, M, m, cnt, y);
        cpu::store<acc_t>(orow + m, box::metric_value<kGeneric>(x, y, a.kind, a.fmt, a.conv, eps), cnt);
      }
    }
  });
  return out;
}

at::Tensor matrix_forward_cpu(const at::Tensor& b1, const at::Tensor& b2, int64_t kind, int64_t fmt, int64_t convention, double eps, bool aligned) {
  const MatrixArgs a = make_matrix_args(b1, b2, kind, fmt, convention, eps, aligned);
  at::Tensor out;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, b1.scalar_type(), "box_iou_cpu", [&] {
    out = a.conv == box::kConvFastloss ? matrix_forward_impl<scalar_t, false>(a, aligned) : matrix_forward_impl<scalar_t, true>(a, aligned);
  });
  return out;
}

template <typename scalar_t, bool kGeneric>
std::tuple<at::Tensor, at::Tensor> matrix_backward_impl(const at::Tensor& grad, const MatrixArgs& a, bool aligned) {
  using acc_t = at::opmath_type<scalar_t>;
  using V = Vec<acc_t>;
  constexpr int64_t W = V::size();
  at::Tensor g1 = at::empty({a.B, a.N, 4}, a.b1.options());
  at::Tensor g2 = at::empty({a.B, a.M, 4}, a.b1.options());
  scalar_t* o1 = g1.mutable_data_ptr<scalar_t>();
  scalar_t* o2 = g2.mutable_data_ptr<scalar_t>();
  const scalar_t* gp = grad.const_data_ptr<scalar_t>();
  const acc_t eps = static_cast<acc_t>(a.eps);
  if (aligned) {
    for_each_aligned<acc_t, scalar_t>(a, [&](int64_t i, int64_t cnt, const V* x, const V* y) {
      const V up = cpu::load<acc_t>(gp + i, cnt);
      V r1[4], r2[4];
      box::pair_metric_impl<true, kGeneric>(x, y, a.kind, a.fmt, a.conv, eps, r1, r2);
      for (int k = 0; k < 4; ++k) {
        r1[k] = r1[k] * up;
        r2[k] = r2[k] * up;
      }
      scatter<acc_t>(o1, i, cnt, r1);
      scatter<acc_t>(o2, i, cnt, r2);
    });
    return {g1, g2};
  }
  const std::vector<acc_t> s1 = soa<acc_t, scalar_t>(a.b1);
  const std::vector<acc_t> s2 = soa<acc_t, scalar_t>(a.b2);
  const int64_t N = a.N, M = a.M;
  // pass 1: grad1[b, n] = sum_m grad[b, n, m] d metric / d boxes1[b, n]   (lanes over m, fixed order)
  const int64_t grain1 = std::max<int64_t>(1, 8192 / std::max<int64_t>(M, 1));
  at::parallel_for(0, a.B * N, grain1, [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      const int64_t bb = r / N, n = r - bb * N;
      V x[4];
      for (int k = 0; k < 4; ++k) x[k] = V(s1[static_cast<size_t>((bb * 4 + k) * N + n)]);
      const acc_t* base = s2.data() + bb * 4 * M;
      const scalar_t* grow = gp + r * M;
      V acc[4] = {V(acc_t(0)), V(acc_t(0)), V(acc_t(0)), V(acc_t(0))};
      for (int64_t m = 0; m < M; m += W) {
        const int64_t cnt = std::min(W, M - m);
        V y[4];
        load_soa(base, M, m, cnt, y);
        const V up = cpu::load<acc_t>(grow + m, cnt);  // zero past cnt
        V dx[4], dy[4];
        box::pair_metric_impl<true, kGeneric>(x, y, a.kind, a.fmt, a.conv, eps, dx, dy);
        for (int k = 0; k < 4; ++k) acc[k] = acc[k] + V::set(V(acc_t(0)), dx[k] * up, cnt);
      }
      for (int k = 0; k < 4; ++k) o1[r * 4 + k] = static_cast<scalar_t>(cpu::hsum(acc[k]));
    }
  });
  // pass 2: grad2[b, m] = sum_n grad[b, n, m] d metric / d boxes2[b, m]   (lanes over m, loop over n in order)
  const int64_t chunks = (M + W - 1) / W;
  at::parallel_for(0, a.B * chunks, std::max<int64_t>(1, 256 / std::max<int64_t>(N, 1)), [&](int64_t c0, int64_t c1) {
    for (int64_t c = c0; c < c1; ++c) {
      const int64_t bb = c / chunks, m = (c - bb * chunks) * W;
      const int64_t cnt = std::min(W, M - m);
      V y[4];
      load_soa(s2.data() + bb * 4 * M, M, m, cnt, y);
      V acc[4] = {V(acc_t(0)), V(acc_t(0)), V(acc_t(0)), V(acc_t(0))};
      for (int64_t n = 0; n < N; ++n) {
        V x[4];
        for (int k = 0; k < 4; ++k) x[k] = V(s1[static_cast<size_t>((bb * 4 + k) * N + n)]);
        const V up = cpu::load<acc_t>(gp + (bb * N + n) * M + m, cnt);
        V dx[4], dy[4];
        box::pair_metric_impl<true, kGeneric>(x, y, a.kind, a.fmt, a.conv, eps, dx, dy);
        for (int k = 0; k < 4; ++k) acc[k] = acc[k] + dy[k] * up;
      }
      scatter<acc_t>(o2, bb * M + m, cnt, acc);
    }
  });
  return {g1, g2};
}

std::tuple<at::Tensor, at::Tensor> matrix_backward_cpu(const at::Tensor& grad, const at::Tensor& b1, const at::Tensor& b2, int64_t kind, int64_t fmt,
                                                       int64_t convention, double eps, bool aligned) {
  const MatrixArgs a = make_matrix_args(b1, b2, kind, fmt, convention, eps, aligned);
  TORCH_CHECK(grad.is_contiguous() && grad.scalar_type() == b1.scalar_type() && grad.device() == b1.device() &&
                  grad.numel() == (aligned ? a.B * a.N : a.B * a.N * a.M),
              "fastloss: upstream gradient of box_iou must be contiguous and match the output");
  std::tuple<at::Tensor, at::Tensor> out;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, b1.scalar_type(), "box_iou_backward_cpu",
                                  [&] {
    out = a.conv == box::kConvFastloss ? matrix_backward_impl<scalar_t, false>(grad, a, aligned) : matrix_backward_impl<scalar_t, true>(grad, a, aligned);
  });
  return out;
}

// max over dim: dim_code 1 -> over boxes2 (one result per box of boxes1, (B, N));
// dim_code 0 -> over boxes1 (one result per box of boxes2, (B, M)).  The first index wins ties;
// NaN is the maximum (as torch.max); values in the input dtype, indices int64.
template <typename scalar_t, bool kGeneric>
std::tuple<at::Tensor, at::Tensor> max_impl(const MatrixArgs& a, int64_t dim_code) {
  using acc_t = at::opmath_type<scalar_t>;
  using V = Vec<acc_t>;
  constexpr int64_t W = V::size();
  const acc_t eps = static_cast<acc_t>(a.eps);
  const int64_t N = a.N, M = a.M;
  const int64_t R = dim_code == 1 ? N : M;  // results per batch
  const int64_t L = dim_code == 1 ? M : N;  // reduced length
  at::Tensor vals = at::empty({a.B, R}, a.b1.options());
  at::Tensor idx = at::empty({a.B, R}, a.b1.options().dtype(at::kLong));
  if (vals.numel() == 0) return {vals, idx};
  TORCH_CHECK(L > 0, "fastloss: box_iou_max over an empty set of boxes");
  scalar_t* vo = vals.mutable_data_ptr<scalar_t>();
  int64_t* io = idx.mutable_data_ptr<int64_t>();
  const std::vector<acc_t> s1 = soa<acc_t, scalar_t>(a.b1);
  const std::vector<acc_t> s2 = soa<acc_t, scalar_t>(a.b2);
  const int64_t chunks = (R + W - 1) / W;
  // lanes over the results; loop over the reduced boxes in order (first max wins, NaN wins)
  at::parallel_for(0, a.B * chunks, 1, [&](int64_t c0, int64_t c1) {
    for (int64_t c = c0; c < c1; ++c) {
      const int64_t bb = c / chunks, r = (c - bb * chunks) * W;
      const int64_t cnt = std::min(W, R - r);
      const acc_t* own = (dim_code == 1 ? s1.data() + bb * 4 * N : s2.data() + bb * 4 * M);
      const acc_t* other = (dim_code == 1 ? s2.data() + bb * 4 * M : s1.data() + bb * 4 * N);
      V x[4];
      load_soa(own, R, r, cnt, x);
      // The argmax rides in float lanes as (block, offset in block), both exact integers
      // (blocks of kBlock indices): any L fits.
      constexpr int64_t kBlock = int64_t(1) << (std::numeric_limits<acc_t>::digits - 1);
      V best(-std::numeric_limits<acc_t>::infinity()), best_blk(acc_t(0)), best_off(acc_t(0));
      V found_nan(acc_t(0));
      for (int64_t l0 = 0; l0 < L; l0 += kBlock) {
        const V blk(static_cast<acc_t>(l0 / kBlock));
        const int64_t l1 = std::min(L, l0 + kBlock);
        for (int64_t l = l0; l < l1; ++l) {
          V y[4];
          for (int k = 0; k < 4; ++k) y[k] = V(other[k * L + l]);
          const V v = dim_code == 1 ? box::metric_value<kGeneric>(x, y, a.kind, a.fmt, a.conv, eps) : box::metric_value<kGeneric>(y, x, a.kind, a.fmt, a.conv, eps);
          const V win = ((v > best) | (v != v)) & (found_nan == V(acc_t(0)));
          best = V::blendv(best, v, win);
          best_blk = V::blendv(best_blk, blk, win);
          best_off = V::blendv(best_off, V(static_cast<acc_t>(l - l0)), win);
          found_nan = found_nan | (v != v);
        }
      }
      alignas(64) acc_t bv[W], blk_out[W], bo[W];
      best.store(bv);
      best_blk.store(blk_out);
      best_off.store(bo);
      for (int64_t i = 0; i < cnt; ++i) {
        vo[bb * R + r + i] = static_cast<scalar_t>(bv[i]);
        io[bb * R + r + i] = static_cast<int64_t>(blk_out[i]) * kBlock + static_cast<int64_t>(bo[i]);
      }
    }
  });
  return {vals, idx};
}

std::tuple<at::Tensor, at::Tensor> max_cpu(const at::Tensor& b1, const at::Tensor& b2, int64_t kind, int64_t fmt, int64_t convention, double eps,
                                           int64_t dim_code) {
  const MatrixArgs a = make_matrix_args(b1, b2, kind, fmt, convention, eps, false);
  TORCH_CHECK(dim_code == 0 || dim_code == 1, "fastloss: box_iou_max dim code must be 0 (over boxes1) or 1 (over boxes2)");
  std::tuple<at::Tensor, at::Tensor> out;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, b1.scalar_type(), "box_iou_max_cpu", [&] {
    out = a.conv == box::kConvFastloss ? max_impl<scalar_t, false>(a, dim_code) : max_impl<scalar_t, true>(a, dim_code);
  });
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(fastloss, CPU, m) {
  m.impl("box_iou_loss_forward_native", &loss_forward_cpu);
  m.impl("box_iou_loss_backward_native", &loss_backward_cpu);
  m.impl("box_iou_native", &matrix_forward_cpu);
  m.impl("box_iou_backward_native", &matrix_backward_cpu);
  m.impl("box_iou_max_native", &max_cpu);
}

}  // namespace fastloss
