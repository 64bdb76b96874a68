// Hungarian matching cost blocks on the CPU (family `match_cost`; per-pair math:
// csrc/kernels/match_cost.h; spec: fastloss/reference/match_cost.py).
//
// Work items are (image b, query q) rows: the row's T_b costs are contiguous in the output
// (image b's block starts at Q * o_b), so each item writes one run of T_b elements.  Each
// element is computed on its own (no reduction across elements): the result does not depend on
// the thread count.
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include <cstdint>
#include <limits>

#include "kernels/match_cost.h"

namespace fastloss {
namespace {

template <typename scalar_t>
void blocks_cpu(const at::Tensor& table, const at::Tensor& pred_l1, const at::Tensor& pred_xyxy, const at::Tensor& tgt_l1,
                const at::Tensor& tgt_xyxy, const at::Tensor& labels, const at::Tensor& offsets, at::Tensor& out, int64_t B, int64_t Q,
                int64_t C, double w_class, double w_bbox, double w_giou, int mode, at::IntArrayRef order) {
  const scalar_t* tab = table.const_data_ptr<scalar_t>();
  const scalar_t* pl1 = pred_l1.const_data_ptr<scalar_t>();
  const scalar_t* pxy = pred_xyxy.const_data_ptr<scalar_t>();
  const scalar_t* tl1 = tgt_l1.const_data_ptr<scalar_t>();
  const scalar_t* txy = tgt_xyxy.const_data_ptr<scalar_t>();
  const int64_t* lab = labels.const_data_ptr<int64_t>();
  const int64_t* off = offsets.const_data_ptr<int64_t>();
  scalar_t* dst = out.data_ptr<scalar_t>();
  // weights rounded to the dtype once, as torch rounds a Python scalar operand
  const scalar_t wc = static_cast<scalar_t>(w_class), wb = static_cast<scalar_t>(w_bbox), wg = static_cast<scalar_t>(w_giou);
  const int o0 = static_cast<int>(order[0]), o1 = static_cast<int>(order[1]), o2 = static_cast<int>(order[2]);
  const scalar_t nan = std::numeric_limits<scalar_t>::quiet_NaN();
  at::parallel_for(0, B * Q, 16, [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      const int64_t b = r / Q, q = r % Q;
      const int64_t first = off[b], T = off[b + 1] - first;
      const scalar_t* row = tab + r * C;
      scalar_t* o = dst + Q * first + q * T;
      for (int64_t k = 0; k < T; ++k) {
        const int64_t j = first + k, label = lab[j];
        const scalar_t cls = label >= 0 && label < C ? row[label] : nan;  // out-of-range label: NaN costs, never a stray read
        o[k] = match_cost::pair_cost<scalar_t>(cls, pl1 + r * 4, tl1 + j * 4, pxy + r * 4, txy + j * 4, wc, wb, wg, mode, o0, o1, o2);
      }
    }
  });
}

at::Tensor match_cost_cpu(const at::Tensor& table, const at::Tensor& pred_l1, const at::Tensor& pred_xyxy, const at::Tensor& tgt_l1,
                          const at::Tensor& tgt_xyxy, const at::Tensor& labels, const at::Tensor& image, const at::Tensor& offsets, double w_class,
                          double w_bbox, double w_giou, int64_t giou_mode, at::IntArrayRef order) {
  const auto dims = match_cost::check_args(table, pred_l1, pred_xyxy, tgt_l1, tgt_xyxy, labels, image, offsets, giou_mode, order);
  const int64_t B = dims[0], Q = dims[1], C = dims[2], N = dims[3];
  const int64_t* off = offsets.const_data_ptr<int64_t>();
  TORCH_CHECK(off[0] == 0 && off[B] == N, "fastloss match_cost: offsets must run from 0 to N");
  for (int64_t b = 0; b < B; ++b) TORCH_CHECK(off[b + 1] >= off[b], "fastloss match_cost: offsets must be non-decreasing");
  at::Tensor out = at::empty({Q * N}, table.options());
  AT_DISPATCH_FLOATING_TYPES(table.scalar_type(), "match_cost_cpu", [&] {
    blocks_cpu<scalar_t>(table, pred_l1, pred_xyxy, tgt_l1, tgt_xyxy, labels, offsets, out, B, Q, C, w_class, w_bbox, w_giou,
                         static_cast<int>(giou_mode), order);
  });
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(fastloss, CPU, m) { m.impl("match_cost_native", &match_cost_cpu); }

}  // namespace fastloss
