// Hungarian matching cost blocks (family `match_cost`; spec: fastloss/reference/match_cost.py,
// design: ../shared/assigners.md 7 and 11.4): the per-pair math shared by csrc/cpu and csrc/cuda.
//
// One (query, target) pair of one image, in the peer's float operations and order, so the
// result equals the peer's full-matrix element bit for bit:
//   l1   = sum of |p_k - t_k|                                    torch.cdist(p=1)'s order (l1 below)
//   cls  = table[b, q, label]                                      the precomputed class term
//   giou = DETR's generalized_box_iou or mmdet's bbox_overlaps(mode="giou") (giou below)
//   cost = (w_a term_a + w_b term_b) + w_c term_c,  terms (cls, l1, -giou) in the peer's order
// Every product and sum is rounded on its own: the CPU build compiles with -ffp-contract=off,
// CUDA device code calls rn_mul / rn_add / rn_sub (kernels/assign.h), as torch's separate
// elementwise kernels round.
#pragma once

#include <cstdint>

#include "fastloss/common.h"
#include "kernels/assign.h"  // rn_mul / rn_add / rn_sub

namespace fastloss {
namespace match_cost {

using assign::rn_add;
using assign::rn_mul;
using assign::rn_sub;

constexpr int kGiouDetr = 0;   // DETR: areas clamped at 0, no eps, 0 / 0 -> 0
constexpr int kGiouMmdet = 1;  // mmdet bbox_overlaps: signed areas, max(U, 1e-6), max(E, 1e-6)
constexpr double kMmdetEps = 1e-6;

// torch.maximum / torch.minimum / clamp(min=0): NaN in either argument propagates
template <typename T>
FL_HOST_DEVICE FL_INLINE T nan_max(T a, T b) { return a > b || a != a ? a : b; }
template <typename T>
FL_HOST_DEVICE FL_INLINE T nan_min(T a, T b) { return a < b || a != a ? a : b; }
template <typename T>
FL_HOST_DEVICE FL_INLINE T clamp0(T x) { return x < T(0) ? T(0) : x; }

// cdist(p=1) of two 4-vectors in torch's summation order on the device that runs it (the
// zeros it starts from add exactly):
//   CPU (Distance.cpp, a sequential reduction):           ((|d0| + |d1|) + |d2|) + |d3|
//   CUDA (DistanceKernel.cu: lane k holds |d_k|, then a shuffle-down tree, offsets 16 .. 1):
//                                                         (|d0| + |d2|) + (|d1| + |d3|)
template <typename T>
FL_HOST_DEVICE FL_INLINE T l1(const T* p, const T* t) {
  T d[4];
  for (int k = 0; k < 4; ++k) d[k] = fl::abs(rn_sub(p[k], t[k]));
#if defined(__CUDA_ARCH__)
  return rn_add(rn_add(d[0], d[2]), rn_add(d[1], d[3]));
#else
  return rn_add(rn_add(rn_add(d[0], d[1]), d[2]), d[3]);
#endif
}

// GIoU of xyxy boxes p (the query) and t (the target):
//   A = w h per box (DETR: w, h clamped at 0 -- equal to its unclamped area for every valid box;
//   mmdet: signed), I = clamp(min(x2) - max(x1), 0) clamp(min(y2) - max(y1), 0),
//   U = (A_p + A_t) - I, E = clamp(max(x2) - min(x1), 0) clamp(max(y2) - min(y1), 0),
//   giou = I / U - (E - U) / E
// DETR: I / U := 0 when U = 0 and (E - U) / E := 0 when E = 0 (DETR's 0 / 0 = NaN);
// mmdet: U and E floored at eps = 1e-6 rounded to T.
template <typename T>
FL_HOST_DEVICE FL_INLINE T giou(const T* p, const T* t, int mode) {
  const bool detr = mode == kGiouDetr;
  T pw = rn_sub(p[2], p[0]), ph = rn_sub(p[3], p[1]);
  T tw = rn_sub(t[2], t[0]), th = rn_sub(t[3], t[1]);
  if (detr) {
    pw = clamp0(pw), ph = clamp0(ph), tw = clamp0(tw), th = clamp0(th);
  }
  const T ap = rn_mul(pw, ph), at = rn_mul(tw, th);
  const T iw = clamp0(rn_sub(nan_min(p[2], t[2]), nan_max(p[0], t[0])));
  const T ih = clamp0(rn_sub(nan_min(p[3], t[3]), nan_max(p[1], t[1])));
  const T inter = rn_mul(iw, ih);
  T uni = rn_sub(rn_add(ap, at), inter);
  const T ew = clamp0(rn_sub(nan_max(p[2], t[2]), nan_min(p[0], t[0])));
  const T eh = clamp0(rn_sub(nan_max(p[3], t[3]), nan_min(p[1], t[1])));
  T enclose = rn_mul(ew, eh);
  if (detr) {
    const T iou = uni == T(0) ? T(0) : inter / uni;
    return rn_sub(iou, enclose == T(0) ? T(0) : rn_sub(enclose, uni) / enclose);
  }
  const T eps = static_cast<T>(kMmdetEps);
  uni = nan_max(uni, eps);
  enclose = nan_max(enclose, eps);
  return rn_sub(inter / uni, rn_sub(enclose, uni) / enclose);
}

// The weighted terms of one pair, added in `order` (indices into (class, bbox, giou)).
template <typename T>
FL_HOST_DEVICE FL_INLINE T pair_cost(T cls, const T* pl1, const T* tl1, const T* pxy, const T* txy, T w_class, T w_bbox, T w_giou, int mode,
                                     int o0, int o1, int o2) {
  const T terms[3] = {rn_mul(w_class, cls), rn_mul(w_bbox, l1(pl1, tl1)), rn_mul(w_giou, -giou(pxy, txy, mode))};
  return rn_add(rn_add(terms[o0], terms[o1]), terms[o2]);
}

}  // namespace match_cost
}  // namespace fastloss

#include <ATen/core/Tensor.h>

#include <vector>

namespace fastloss {
namespace match_cost {

// The op's arguments (calling convention: csrc/fastloss.cpp), checked on the host by both
// kernels; returns (B, Q, C, N).
inline std::vector<int64_t> check_args(const at::Tensor& table, const at::Tensor& pred_l1, const at::Tensor& pred_xyxy, const at::Tensor& tgt_l1,
                                       const at::Tensor& tgt_xyxy, const at::Tensor& labels, const at::Tensor& image, const at::Tensor& offsets,
                                       int64_t mode, at::IntArrayRef order) {
  for (const at::Tensor* t : {&pred_l1, &pred_xyxy, &tgt_l1, &tgt_xyxy, &labels, &image, &offsets})  // the dispatcher checks no custom op's devices
    TORCH_CHECK(t->device() == table.device(), "fastloss match_cost: every tensor must be on table's device");
  TORCH_CHECK(table.dim() == 3 && table.is_contiguous() && at::isFloatingType(table.scalar_type()),
              "fastloss match_cost: table must be a contiguous floating (B, Q, C) tensor");
  const int64_t B = table.size(0), Q = table.size(1), C = table.size(2), N = labels.numel();
  for (const at::Tensor* t : {&pred_l1, &pred_xyxy}) {
    TORCH_CHECK(t->is_contiguous() && t->scalar_type() == table.scalar_type() && t->sizes() == at::IntArrayRef({B, Q, 4}),
                "fastloss match_cost: pred boxes must be contiguous (B, Q, 4) of table's dtype");
  }
  for (const at::Tensor* t : {&tgt_l1, &tgt_xyxy}) {
    TORCH_CHECK(t->is_contiguous() && t->scalar_type() == table.scalar_type() && t->sizes() == at::IntArrayRef({N, 4}),
                "fastloss match_cost: target boxes must be contiguous (N, 4) of table's dtype");
  }
  TORCH_CHECK(labels.dim() == 1 && labels.scalar_type() == at::kLong && labels.is_contiguous(), "fastloss match_cost: tgt_labels must be contiguous int64 (N,)");
  TORCH_CHECK(image.scalar_type() == at::kLong && image.is_contiguous() && image.sizes() == at::IntArrayRef({N}),
              "fastloss match_cost: tgt_image must be contiguous int64 (N,)");
  TORCH_CHECK(offsets.scalar_type() == at::kLong && offsets.is_contiguous() && offsets.sizes() == at::IntArrayRef({B + 1}),
              "fastloss match_cost: offsets must be contiguous int64 (B + 1,)");
  TORCH_CHECK(mode == kGiouDetr || mode == kGiouMmdet, "fastloss match_cost: giou_mode must be 0 (DETR) or 1 (mmdet)");
  TORCH_CHECK(order.size() == 3 && order[0] + order[1] + order[2] == 3 && order[0] != order[1] && order[1] != order[2] && order[0] != order[2] &&
                  order[0] >= 0 && order[1] >= 0 && order[2] >= 0,
              "fastloss match_cost: order must be a permutation of (0, 1, 2)");
  return {B, Q, C, N};
}

}  // namespace match_cost
}  // namespace fastloss
