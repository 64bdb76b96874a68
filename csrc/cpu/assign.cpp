// Label assigners, C++ CPU kernels (math: csrc/kernels/assign.h; spec:
// fastloss/reference/assign.py; calling convention: csrc/fastloss.cpp).
//
// Max-IoU assignment (mmdetection's MaxIoUAssigner) for B images of A priors and M padded
// ground truths, without the (M, A) IoU matrix: work items are (image, block of kBlock priors);
// a block's priors sit in L1 as columns (x1, y1, x2, y2, area), and the valid ground truths are
// swept over them V priors per vector.
//   pass 1: per prior the best IoU and its first gt; per (gt, block) the best IoU over the
//           block's priors and its first prior -- added over the blocks in block order after
//           the pass, so every result is independent of the thread count;
//   pass 2 (low-quality matches with tie-sharing): the IoUs again, bit for bit (the same
//           function on the same lanes), and per prior the last qualifying gt it ties;
//   then mmdetection's threshold rules per prior.
// Memory: the outputs, B M (A / kBlock) partials and B (A + M) state.
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/mul.h>
#include <ATen/ops/pow.h>
#include <ATen/ops/sqrt.h>
#include <ATen/ops/zeros.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <tuple>
#include <utility>
#include <vector>

#include "fastloss/cpu_loop.h"
#include "kernels/assign.h"

namespace fastloss {
namespace {

using cpu::Vec;

constexpr int64_t kBlock = 256;  // priors per work item (a multiple of every V)

// torch's CPU top-k selection (aten/src/ATen/native/TopKImpl.h, sorted=True) on (value, index)
// pairs q of a row of n values: the k best first -- std::partial_sort when k 64 <= n (its heap
// select: among equal values the winners depend on the heap's structure), else std::nth_element
// then std::sort of the first k - 1; torch's comparators (NaN ranks best).  q may hold fewer than
// the row's n values when the caller knows the rest cannot enter (the task-aligned rows).
template <typename T>
void torch_cpu_topk(std::vector<std::pair<T, int64_t>>& q, int64_t k, int64_t n, bool largest) {
  using elem_t = std::pair<T, int64_t>;
  auto best_largest = [](const elem_t& x, const elem_t& y) { return assign::topk_greater(x.first, y.first); };
  auto best_smallest = [](const elem_t& x, const elem_t& y) { return assign::topk_greater(y.first, x.first); };  // NaN last
  auto select = [&](auto comp) {
    if (k * 64 <= n) {
      std::partial_sort(q.begin(), q.begin() + k, q.end(), comp);
    } else {
      std::nth_element(q.begin(), q.begin() + k - 1, q.end(), comp);
      std::sort(q.begin(), q.begin() + k - 1, comp);
    }
  };
  if (largest) {
    select(best_largest);
  } else {
    select(best_smallest);
  }
}

template <typename T>
struct MaxIoUArgs {
  const T* priors;  // (Bp, A, 4), Bp in {1, B}
  const T* gt;      // (B, M, 4)
  const bool* valid;    // (B, M)
  const bool* ignored;  // (B, A)
  int64_t B, A, M, prior_stride;
};

// A block's priors as columns: x1, y1, x2, y2, area, ignored (1 / 0), padded to whole vectors.
template <typename T>
struct BlockPriors {
  std::vector<T> col[6];
  int64_t n = 0;
  void load(const MaxIoUArgs<T>& a, int64_t b, int64_t a0, int64_t a1) {
    n = a1 - a0;
    const int64_t padded = (n + Vec<T>::size() - 1) / Vec<T>::size() * Vec<T>::size();
    for (auto& c : col) c.assign(static_cast<size_t>(padded), T(0));
    const T* p = a.priors + b * a.prior_stride + a0 * 4;
    for (int64_t i = 0; i < n; ++i) {
      for (int k = 0; k < 4; ++k) col[k][i] = p[i * 4 + k];
      col[4][i] = assign::area(p[i * 4], p[i * 4 + 1], p[i * 4 + 2], p[i * 4 + 3]);
      col[5][i] = a.ignored[b * a.A + a0 + i] ? T(1) : T(0);
    }
  }
  // the IoU of gt box g (its 4 coordinates broadcast, area ga) with priors i .. i + V, -1 where
  // the prior is ignored
  Vec<T> iou(const Vec<T> g[4], const Vec<T>& ga, int64_t i) const {
    const Vec<T> zero(T(0)), eps(static_cast<T>(assign::kOverlapsEps));
    auto mx = [](const Vec<T>& x, const Vec<T>& y) { return at::vec::maximum(x, y); };
    auto mn = [](const Vec<T>& x, const Vec<T>& y) { return at::vec::minimum(x, y); };
    const Vec<T> v = assign::iou(g[0], g[1], g[2], g[3], ga, Vec<T>::loadu(&col[0][i]), Vec<T>::loadu(&col[1][i]),
                                 Vec<T>::loadu(&col[2][i]), Vec<T>::loadu(&col[3][i]), Vec<T>::loadu(&col[4][i]), eps, zero, mx, mn);
    return Vec<T>::blendv(v, Vec<T>(T(-1)), Vec<T>::loadu(&col[5][i]) != zero);
  }
};

template <typename T>
void gt_lanes(const MaxIoUArgs<T>& a, int64_t b, int64_t g, Vec<T> out[4], Vec<T>& ga) {
  const T* q = a.gt + (b * a.M + g) * 4;
  for (int k = 0; k < 4; ++k) out[k] = Vec<T>(q[k]);
  ga = Vec<T>(assign::area(q[0], q[1], q[2], q[3]));
}

template <typename T>
std::tuple<at::Tensor, at::Tensor> max_iou_impl(const MaxIoUArgs<T>& a, const at::TensorOptions& opts, double pos_thr, double neg_lo,
                                                double neg_hi, double min_pos, bool low_quality, bool assign_all) {
  constexpr int64_t V = Vec<T>::size();
  const int64_t B = a.B, A = a.A, M = a.M;
  const int64_t nblk = (A + kBlock - 1) / kBlock;
  at::Tensor gt_inds = at::empty({B, A}, opts.dtype(at::kLong));
  at::Tensor max_ov = at::empty({B, A}, opts);
  if (B * A == 0) return {gt_inds, max_ov};
  int64_t* inds = gt_inds.mutable_data_ptr<int64_t>();
  T* best = max_ov.mutable_data_ptr<T>();
  constexpr T kNegInf = -std::numeric_limits<T>::infinity();
  std::vector<int64_t> best_g(static_cast<size_t>(B * A), 0);
  std::vector<T> part_max(static_cast<size_t>(B * nblk * M), kNegInf);  // per (image, block, gt)
  std::vector<int64_t> part_arg(static_cast<size_t>(B * nblk * M), 0);
  std::vector<std::vector<int64_t>> gts(static_cast<size_t>(B));  // the valid gts of each image, in order
  for (int64_t b = 0; b < B; ++b)
    for (int64_t g = 0; g < M; ++g)
      if (a.valid[b * M + g]) gts[b].push_back(g);

  // pass 1
  at::parallel_for(0, B * nblk, 1, [&](int64_t w0, int64_t w1) {
    BlockPriors<T> pr;
    std::vector<T> bv;
    std::vector<T> bg;  // first argmax gt per prior, as exact small integers in T lanes
    for (int64_t w = w0; w < w1; ++w) {
      const int64_t b = w / nblk, blk = w % nblk, a0 = blk * kBlock, a1 = std::min(A, a0 + kBlock);
      pr.load(a, b, a0, a1);
      const int64_t padded = static_cast<int64_t>(pr.col[0].size());
      bv.assign(static_cast<size_t>(padded), kNegInf);
      bg.assign(static_cast<size_t>(padded), T(0));
      for (const int64_t g : gts[b]) {
        Vec<T> gl[4], ga;
        gt_lanes(a, b, g, gl, ga);
        const Vec<T> gf(static_cast<T>(g));
        Vec<T> gmax(kNegInf), garg(T(0));  // this gt's best over the block, per lane, and its prior
        for (int64_t i = 0; i < padded; i += V) {
          Vec<T> v = pr.iou(gl, ga, i);
          const Vec<T> lane_ok = Vec<T>(static_cast<T>(i)) + Vec<T>::arange(T(0), T(1)) < Vec<T>(static_cast<T>(pr.n));
          v = Vec<T>::blendv(Vec<T>(kNegInf), v, lane_ok);  // padding lanes never win
          const Vec<T> old = Vec<T>::loadu(&bv[i]);
          const Vec<T> up = v > old;  // strict: the first gt keeps a tie
          Vec<T>::blendv(old, v, up).store(&bv[i]);
          Vec<T>::blendv(Vec<T>::loadu(&bg[i]), gf, up).store(&bg[i]);
          const Vec<T> gup = v > gmax;  // strict: the first prior of a lane keeps a tie
          gmax = Vec<T>::blendv(gmax, v, gup);
          garg = Vec<T>::blendv(garg, Vec<T>(static_cast<T>(i)) + Vec<T>::arange(T(0), T(1)), gup);
        }
        alignas(64) T mv[V], mi[V];
        gmax.store(mv);
        garg.store(mi);
        T m = kNegInf;
        int64_t arg = 0;
        for (int64_t l = 0; l < V; ++l) {  // the lanes' best, the smallest prior among ties
          const int64_t idx = static_cast<int64_t>(mi[l]);
          if (mv[l] > m || (mv[l] == m && idx < arg)) m = mv[l], arg = idx;
        }
        part_max[(b * nblk + blk) * M + g] = m;
        part_arg[(b * nblk + blk) * M + g] = a0 + arg;
      }
      for (int64_t i = 0; i < pr.n; ++i) {
        best[b * A + a0 + i] = bv[i];
        best_g[b * A + a0 + i] = static_cast<int64_t>(bg[i]);
      }
    }
  });
  // each gt's best over all priors: the blocks in order, an earlier block keeping a tie
  std::vector<T> gt_max(static_cast<size_t>(B * M), kNegInf);
  std::vector<int64_t> gt_arg(static_cast<size_t>(B * M), 0);
  for (int64_t b = 0; b < B; ++b)
    for (const int64_t g : gts[b])
      for (int64_t blk = 0; blk < nblk; ++blk) {
        const T v = part_max[(b * nblk + blk) * M + g];
        if (v > gt_max[b * M + g]) gt_max[b * M + g] = v, gt_arg[b * M + g] = part_arg[(b * nblk + blk) * M + g];
      }
  // thresholds are compared in T, as torch compares a tensor with a Python number
  const T pos = static_cast<T>(pos_thr), lo = static_cast<T>(neg_lo), hi = static_cast<T>(neg_hi), mp = static_cast<T>(min_pos);
  std::vector<int64_t> last(static_cast<size_t>(B * A), 0);  // low-quality: the last qualifying g + 1 per prior
  if (low_quality && !assign_all) {
    for (int64_t b = 0; b < B; ++b)
      for (const int64_t g : gts[b])
        if (gt_max[b * M + g] >= mp) last[b * A + gt_arg[b * M + g]] = g + 1;
  }
  // pass 2 (tie-sharing low-quality matches) and the rules
  at::parallel_for(0, B * nblk, 1, [&](int64_t w0, int64_t w1) {
    BlockPriors<T> pr;
    std::vector<T> lq;
    for (int64_t w = w0; w < w1; ++w) {
      const int64_t b = w / nblk, blk = w % nblk, a0 = blk * kBlock, a1 = std::min(A, a0 + kBlock);
      if (low_quality && assign_all) {
        pr.load(a, b, a0, a1);
        const int64_t padded = static_cast<int64_t>(pr.col[0].size());
        lq.assign(static_cast<size_t>(padded), T(0));
        for (const int64_t g : gts[b]) {
          if (!(gt_max[b * M + g] >= mp)) continue;
          Vec<T> gl[4], ga;
          gt_lanes(a, b, g, gl, ga);
          const Vec<T> target(gt_max[b * M + g]), gp1(static_cast<T>(g + 1));
          for (int64_t i = 0; i < padded; i += V) {
            const Vec<T> hit = pr.iou(gl, ga, i) == target;
            Vec<T>::blendv(Vec<T>::loadu(&lq[i]), gp1, hit).store(&lq[i]);  // later gts overwrite
          }
        }
        for (int64_t i = 0; i < pr.n; ++i) last[b * A + a0 + i] = static_cast<int64_t>(lq[i]);
      }
      for (int64_t i = a0; i < a1; ++i) {
        const int64_t k = b * A + i;
        if (gts[b].empty()) {  // mmdetection: no gts -> every prior background, overlap 0
          inds[k] = 0, best[k] = T(0);
          continue;
        }
        inds[k] = assign::max_iou_rule(best[k], best_g[k], last[k], pos, lo, hi);
      }
    }
  });
  return {gt_inds, max_ov};
}

std::tuple<at::Tensor, at::Tensor> max_iou_assign_cpu(const at::Tensor& priors, const at::Tensor& gt_bboxes, const at::Tensor& gt_valid,
                                                      const at::Tensor& ignored, double pos_iou_thr, double neg_lo, double neg_hi,
                                                      double min_pos_iou, bool match_low_quality, bool gt_max_assign_all) {
  int64_t B, A, M;
  std::tie(B, A, M) = assign::check_max_iou_args(priors, gt_bboxes, gt_valid, ignored);
  std::tuple<at::Tensor, at::Tensor> out;
  AT_DISPATCH_FLOATING_TYPES(priors.scalar_type(), "max_iou_assign_cpu", [&] {
    const MaxIoUArgs<scalar_t> a{priors.const_data_ptr<scalar_t>(), gt_bboxes.const_data_ptr<scalar_t>(), gt_valid.const_data_ptr<bool>(),
                                 ignored.const_data_ptr<bool>(), B, A, M, priors.size(0) == 1 ? 0 : A * 4};
    out = max_iou_impl<scalar_t>(a, priors.options(), pos_iou_thr, neg_lo, neg_hi, min_pos_iou, match_low_quality, gt_max_assign_all);
  });
  return out;
}

// ------------------------------------------------------------------ task-aligned (ultralytics)
//
// 1. Per (image, gt) row: the candidate test over the anchors and, for candidates only,
//    ultralytics' CIoU (its arithmetic; the aspect arctangents from torch's own atan).
// 2. The metrics s^alpha o^beta by torch's own pow and mul over all candidates, flat, in
//    ultralytics' (image, gt, anchor) order: torch's CPU pow rounds by position (vector body /
//    scalar remainder), so the same list in the same order gives ultralytics' bits.
// 3. Per row the top-k under torch's CPU rule (TopKImpl.h): a (value, index) pair array through
//    std::partial_sort when k 64 <= A, else std::nth_element.  Only the first k entries and the
//    later positive ones enter the partial sort: its heap select admits a later entry only if it
//    beats the heap's minimum, which is >= 0, so a zero never enters -- the selected set and
//    its order are those of the whole row.  With tie_rule 1: torch's CUDA rule instead
//    (cuda_rule_claims, the CUDA kernel's radix selection), ultralytics' result on a GPU.
// 4. Per image: claims, the resolution of multiply claimed anchors by the first argmax of the
//    overlap over all gts, the per-gt maxima and the targets.
// Memory: the candidates (O(candidates)), (B, M, k) claims, O(B (A + M)) state and the outputs.

// ultralytics' candidate test of every anchor against one widened box, min(x - x1, y - y1,
// x2 - x, y2 - y) > 1e-9 (assign::tal_inside, the CUDA kernel's per-anchor form), as 0 / 1 flags: the anchors are columns (ax, ay) and the four
// comparisons are combined without branches, so the compiler runs the loop V anchors per
// instruction (the test is the bulk of the work: B M A of them, ~1 % candidates).
template <typename T>
void inside_flags(const T* ax, const T* ay, int64_t A, const T box[4], uint8_t* flag) {
  const T e = static_cast<T>(1e-9), x1 = box[0], y1 = box[1], x2 = box[2], y2 = box[3];
  for (int64_t i = 0; i < A; ++i)
    flag[i] = static_cast<uint8_t>((ax[i] - x1 > e) & (ay[i] - y1 > e) & (x2 - ax[i] > e) & (y2 - ay[i] > e));
}

// ultralytics' overlap of gt row r = (b, g) with anchor i: its CIoU, clamped at 0
template <typename T>
T overlap(const assign::TalArgs<T>& a, int64_t r, int64_t b, int64_t i) {
  return assign::ciou_ultralytics(a.gt + r * 4, a.pd + (b * a.A + i) * 4, a.atan_gt[r], a.atan_pd[b * a.A + i]);
}

// The candidates of one gt row: anchors (ascending), their overlaps, scores and metrics.
template <typename T>
struct Candidates {
  std::vector<int64_t> idx;
  std::vector<T> ov, score, metric;
  // position of anchor i in idx, or -1
  int64_t find(int64_t i) const {
    const auto it = std::lower_bound(idx.begin(), idx.end(), i);
    return it != idx.end() && *it == i ? it - idx.begin() : -1;
  }
};

// A row's claims under torch's CUDA top-k rule, by the radix selection the CUDA kernel runs
// (assign.h tal_cuda_topk_threshold): here the histograms come from one thread's pass over the
// row's positive metrics.  Then the selected anchors in index order; the candidates among them
// claim (slots in anchor order).
template <typename T>
void cuda_rule_claims(const Candidates<T>& c, int64_t A, int64_t K, int64_t* slots) {
  using Key = assign::TalKey<T>;
  int32_t hist[assign::kRadixBins];
  auto hist_pass = [&](int shift, typename Key::type prefix) -> const int32_t* {
    std::fill(hist, hist + assign::kRadixBins, 0);
    for (const T v : c.metric) {
      const auto key = assign::tal_radix_key(v);
      if (assign::topk_greater(v, T(0)) && assign::tal_radix_match(key, prefix, shift)) ++hist[assign::tal_radix_digit(key, shift)];
    }
    return hist;
  };
  T thr;
  int64_t need;
  assign::tal_cuda_topk_threshold<T>(K, hist_pass, thr, need);
  int64_t ties = 0, n = 0;
  size_t j = 0;  // next candidate
  for (int64_t i = 0; i < A; ++i) {
    const bool is_c = j < c.idx.size() && c.idx[j] == i;
    const T v = is_c ? c.metric[j] : T(0);
    j += is_c;
    if (assign::tal_cuda_selected(v, thr, ties, need) && is_c) slots[n++] = i;
    ties += assign::topk_equal(v, thr);
    if (j >= c.idx.size() && (assign::topk_greater(thr, T(0)) || ties >= need)) break;  // only unselected zeros follow
  }
}

template <typename T>
std::vector<at::Tensor> task_aligned_impl(const assign::TalArgs<T>& a, const at::TensorOptions& opts) {
  const int64_t B = a.B, A = a.A, M = a.M, K = a.k, nc = a.nc;
  std::vector<T> boxes(static_cast<size_t>(B * M * 4));  // the candidate test's widened boxes
  for (int64_t r = 0; r < B * M; ++r) assign::tal_widened(a.gt + r * 4, a.valid[r], a.stride_val, &boxes[r * 4]);
  // 1. per valid gt row: the candidates, their CIoU and score
  std::vector<Candidates<T>> rows(static_cast<size_t>(B * M));
  std::vector<T> ax(static_cast<size_t>(A)), ay(static_cast<size_t>(A));  // the anchors as columns
  for (int64_t i = 0; i < A; ++i) ax[i] = a.anc[i * 2], ay[i] = a.anc[i * 2 + 1];
  at::parallel_for(0, B * M, 1, [&](int64_t r0, int64_t r1) {
    std::vector<uint8_t> flag(static_cast<size_t>(A + 8), 0);  // + 8: whole 8-byte words below
    for (int64_t r = r0; r < r1; ++r) {
      if (!a.valid[r]) continue;
      const int64_t b = r / M, label = std::min(std::max(a.labels[r], int64_t(0)), nc - 1);
      Candidates<T>& c = rows[r];
      inside_flags(ax.data(), ay.data(), A, &boxes[r * 4], flag.data());
      for (int64_t i = 0; i < A; ++i) {
        if (i % 8 == 0) {  // skip 8 non-candidates at a time
          uint64_t word;
          std::memcpy(&word, flag.data() + i, sizeof(word));
          if (word == 0) {
            i += 7;
            continue;
          }
        }
        if (!flag[i]) continue;
        c.idx.push_back(i);
        c.ov.push_back(overlap(a, r, b, i));
        c.score.push_back(a.scores[(b * A + i) * nc + label]);
      }
    }
  });
  // 2. the metric s^alpha o^beta of every candidate by torch's own pow and mul over ultralytics'
  // flat candidate list -- the same values in the same (image, gt, anchor) order, so torch's
  // position-dependent vector / scalar pow rounds each exactly as in ultralytics
  std::vector<int64_t> offset(static_cast<size_t>(B * M + 1), 0);
  for (int64_t r = 0; r < B * M; ++r) offset[r + 1] = offset[r] + static_cast<int64_t>(rows[r].idx.size());
  const int64_t P = offset[B * M];
  at::Tensor s_flat = at::empty({P}, opts), o_flat = at::empty({P}, opts);
  for (int64_t r = 0; r < B * M; ++r) {
    std::copy(rows[r].score.begin(), rows[r].score.end(), s_flat.mutable_data_ptr<T>() + offset[r]);
    std::copy(rows[r].ov.begin(), rows[r].ov.end(), o_flat.mutable_data_ptr<T>() + offset[r]);
  }
  const at::Tensor t_flat = at::mul(at::pow(s_flat, a.alpha), at::pow(o_flat, a.beta)).contiguous();
  for (int64_t r = 0; r < B * M; ++r)
    rows[r].metric.assign(t_flat.const_data_ptr<T>() + offset[r], t_flat.const_data_ptr<T>() + offset[r + 1]);
  // 3. per valid gt row: its top-k under torch's CPU rule (or its CUDA rule), the claimed candidates
  using elem_t = std::pair<T, int64_t>;
  std::vector<int64_t> claims(static_cast<size_t>(B * M * K), -1);
  at::parallel_for(0, B * M, 1, [&](int64_t r0, int64_t r1) {
    std::vector<elem_t> q;
    for (int64_t r = r0; r < r1; ++r) {
      if (!a.valid[r]) continue;  // a padded row claims nothing (ultralytics zeroes its top-k)
      const Candidates<T>& c = rows[r];
      if (a.cuda_rule) {
        cuda_rule_claims(c, A, K, &claims[r * K]);
        continue;
      }
      const bool partial = K * 64 <= A;
      q.clear();
      size_t j = 0;  // next candidate
      for (int64_t i = 0; i < (partial ? K : A); ++i) {  // the first k (all of a short row) with their zeros
        const bool is_c = j < c.idx.size() && c.idx[j] == i;
        q.emplace_back(is_c ? c.metric[j] : T(0), i);
        j += is_c;
      }
      for (; partial && j < c.idx.size(); ++j)  // past the first k only what outranks a zero: positive or NaN (torch's topk ranks NaN first)
        if (assign::topk_greater(c.metric[j], T(0))) q.emplace_back(c.metric[j], c.idx[j]);
      torch_cpu_topk(q, K, A, true);
      for (int64_t k = 0; k < K; ++k)
        if (c.find(q[k].second) >= 0) claims[r * K + k] = q[k].second;  // a top-k slot claims a candidate
    }
  });
  // 4. per image: claims, resolution, the per-gt maxima, the targets
  at::Tensor labels = at::empty({B, A}, opts.dtype(at::kLong));
  at::Tensor tboxes = at::empty({B, A, 4}, opts);
  at::Tensor tscores = a.compact ? at::zeros({B, A}, opts) : at::zeros({B, A, nc}, opts);
  at::Tensor fg = at::empty({B, A}, opts.dtype(at::kBool));
  at::Tensor gt_idx = at::empty({B, A}, opts.dtype(at::kLong));
  int64_t* lab_o = labels.mutable_data_ptr<int64_t>();
  T* box_o = tboxes.mutable_data_ptr<T>();
  T* sc_o = tscores.mutable_data_ptr<T>();
  bool* fg_o = fg.mutable_data_ptr<bool>();
  int64_t* idx_o = gt_idx.mutable_data_ptr<int64_t>();
  const T eps = static_cast<T>(a.eps);
  at::parallel_for(0, B, 1, [&](int64_t b0, int64_t b1) {
    std::vector<int64_t> count(static_cast<size_t>(A)), claimant(static_cast<size_t>(A));
    std::vector<T> t_a(static_cast<size_t>(A)), pos_o(static_cast<size_t>(M)), pos_t(static_cast<size_t>(M)), best(static_cast<size_t>(A));
    for (int64_t b = b0; b < b1; ++b) {
      std::fill(count.begin(), count.end(), 0);
      for (int64_t g = 0; g < M; ++g)
        for (int64_t k = 0; k < K; ++k) {
          const int64_t i = claims[(b * M + g) * K + k];
          if (i >= 0) ++count[i], claimant[i] = g;
        }
      // An anchor claimed more than once goes to the first argmax over ALL gts of the overlap,
      // which is 0 off a gt's candidates (and >= 0 on them): one sweep over the image's
      // candidates in gt order keeps the largest overlap (NaN above every number, as torch's
      // argmax) and its first gt; a column whose max is 0 goes to gt 0, the first of its zeros.
      // O(candidates), not O(anchors x gts).
      std::fill(best.begin(), best.end(), T(0));
      for (int64_t i = 0; i < A; ++i)
        if (count[i] > 1) claimant[i] = 0;
      for (int64_t h = 0; h < M; ++h) {
        const Candidates<T>& c = rows[b * M + h];
        for (size_t p = 0; p < c.idx.size(); ++p) {
          const int64_t i = c.idx[p];
          if (count[i] > 1 && assign::topk_greater(c.ov[p], best[i])) best[i] = c.ov[p], claimant[i] = h;  // torch's argmax: the first NaN wins
        }
      }
      std::fill(pos_o.begin(), pos_o.end(), T(0));
      std::fill(pos_t.begin(), pos_t.end(), T(0));
      for (int64_t i = 0; i < A; ++i) {
        const int64_t g = count[i] > 0 ? claimant[i] : 0;
        idx_o[b * A + i] = g;
        fg_o[b * A + i] = count[i] > 0;
        t_a[i] = T(0);
        if (count[i] > 0) {  // the assigned pair's metric and overlap (0 unless a candidate of its gt)
          const Candidates<T>& c = rows[b * M + g];
          const int64_t p = c.find(i);
          if (p >= 0) {
            t_a[i] = c.metric[p];
            pos_o[g] = std::max(pos_o[g], c.ov[p]);
            pos_t[g] = std::max(pos_t[g], c.metric[p]);
          }
        }
      }
      for (int64_t i = 0; i < A; ++i) {
        const int64_t g = idx_o[b * A + i];
        const int64_t l = std::max(a.labels[b * M + g], int64_t(0));
        lab_o[b * A + i] = l;
        for (int c = 0; c < 4; ++c) box_o[(b * A + i) * 4 + c] = a.gt[(b * M + g) * 4 + c];
        if (fg_o[b * A + i] && (a.compact || l < nc))  // a label >= nc (a padded gt's) matches no class
          sc_o[a.compact ? b * A + i : (b * A + i) * nc + l] = assign::tal_norm(t_a[i], pos_o[g], pos_t[g], eps);
      }
    }
  });
  return {labels, tboxes, tscores, fg, gt_idx};
}

std::vector<at::Tensor> task_aligned_assign_cpu(const at::Tensor& pd_scores, const at::Tensor& pd_bboxes, const at::Tensor& anc_points,
                                                const at::Tensor& gt_labels, const at::Tensor& gt_bboxes, const at::Tensor& gt_valid, int64_t topk,
                                                int64_t num_classes, double alpha, double beta, double stride_val, double eps, int64_t tie_rule,
                                                bool compact) {
  int64_t B, A, M;
  std::tie(B, A, M) = assign::check_task_aligned_args(pd_scores, pd_bboxes, anc_points, gt_labels, gt_bboxes, gt_valid, topk, num_classes, tie_rule);
  const auto dt = pd_scores.scalar_type();
  const at::Tensor atan_gt = assign::tal_aspect_atan(gt_bboxes), atan_pd = assign::tal_aspect_atan(pd_bboxes);
  std::vector<at::Tensor> out;
  AT_DISPATCH_FLOATING_TYPES(dt, "task_aligned_assign_cpu", [&] {
    const assign::TalArgs<scalar_t> a{pd_scores.const_data_ptr<scalar_t>(), pd_bboxes.const_data_ptr<scalar_t>(), anc_points.const_data_ptr<scalar_t>(),
                              gt_labels.const_data_ptr<int64_t>(), gt_bboxes.const_data_ptr<scalar_t>(), gt_valid.const_data_ptr<bool>(),
                              atan_gt.const_data_ptr<scalar_t>(), atan_pd.const_data_ptr<scalar_t>(),
                              B, A, M, num_classes, topk, alpha, beta, stride_val, eps, tie_rule == 1, compact};
    out = task_aligned_impl<scalar_t>(a, pd_scores.options());
  });
  return out;
}

// ------------------------------------------------------------------ ATSS (mmdetection)
//
// 1. Per (image, valid gt), independently (parallel over the B M rows): the centre distances of
//    all priors (V at a time), then per level torch's CPU top-k of the min(topk, n) smallest
//    (atss_level_topk: the same set as mmdetection's distances.topk), re-ordered by
//    (distance, index) -- the spec's canonical order, which fixes the threshold's summation
//    order; then the candidates' IoU, their mean and variance (assign::atss_moments).  The
//    square roots (distances, std) are torch's own CPU sqrt, position-independent but not the
//    correctly rounded one on every machine (AVX-512: 15 % of fp32 values differ by an ulp),
//    so that the distances -- and their ties -- are mmdetection's bit for bit.
//    Then per row the threshold and the positives (IoU >= threshold, centre inside).
// 2. Per image (parallel over B): each prior's largest positive IoU over the gts in order,
//    strict > so that the first gt keeps a tie; gt_inds / max_overlaps.
// Deterministic at any thread count (no shared accumulation).  Memory: B M Lk positives, a
// distance row of A per thread and the outputs -- never the (A, M) matrices.

template <typename T>
struct AtssArgs {
  const T* priors;  // (Bp, A, 4)
  const T* gt;      // (B, M, 4)
  const bool* valid;    // (B, M)
  const bool* ignored;  // (B, A)
  int64_t B, A, M, prior_stride, topk, lk;
};

// One (gt, level) row of torch's CPU top-k of the k smallest distances d[0..n) (NaN-free), as
// (distance, index) pairs in q.  torch's heap path (k 64 <= n: std::partial_sort's heap select)
// admits a later entry only if it is strictly below the heap's top, the k-th smallest distance so
// far -- so only the first k entries and those below the running k-th smallest (tracked in
// `kth`, k sorted values) enter q: the heap sees the same entries in the same order, and selects
// the same set in the same order as on the whole row.
template <typename T>
void atss_level_topk(const T* d, int64_t n, int64_t k, std::vector<std::pair<T, int64_t>>& q, std::vector<T>& kth) {
  q.clear();
  if (k * 64 > n) {
    for (int64_t i = 0; i < n; ++i) q.emplace_back(d[i], i);
  } else {
    kth.assign(d, d + k);
    std::sort(kth.begin(), kth.end());
    for (int64_t i = 0; i < k; ++i) q.emplace_back(d[i], i);
    for (int64_t i = k; i < n; ++i) {
      if (!(d[i] < kth[k - 1])) continue;
      q.emplace_back(d[i], i);
      int64_t p = k - 1;  // the new value replaces the largest, kept sorted
      while (p > 0 && d[i] < kth[p - 1]) kth[p] = kth[p - 1], --p;
      kth[p] = d[i];
    }
  }
  torch_cpu_topk(q, k, n, false);
}

template <typename T>
std::tuple<at::Tensor, at::Tensor> atss_impl(const AtssArgs<T>& a, const std::vector<int64_t>& levels, const at::TensorOptions& opts) {
  constexpr int64_t V = Vec<T>::size();
  const int64_t B = a.B, A = a.A, M = a.M, Lk = a.lk, Bp = a.prior_stride ? B : 1;
  at::Tensor gt_inds = at::empty({B, A}, opts.dtype(at::kLong));
  at::Tensor max_ov = at::empty({B, A}, opts);
  if (B * A == 0) return {gt_inds, max_ov};
  int64_t* inds = gt_inds.mutable_data_ptr<int64_t>();
  T* best = max_ov.mutable_data_ptr<T>();
  const T inf = static_cast<T>(assign::kAtssInf);
  // the priors' centres as columns, per image of the priors
  std::vector<T> pcx(static_cast<size_t>(Bp * A)), pcy(static_cast<size_t>(Bp * A));
  bool finite = true;  // finite centres: NaN-free distances, so the heap path's filter (atss_level_topk) applies
  for (int64_t k = 0; k < Bp * A; ++k) {
    const T* p = a.priors + k * 4;
    pcx[k] = assign::centre(p[0], p[2]), pcy[k] = assign::centre(p[1], p[3]);
    finite = finite && std::isfinite(pcx[k]) && std::isfinite(pcy[k]);
  }
  // 1a. per (image, gt) row: the candidates, their IoU, the mean and variance
  std::vector<int64_t> cand(static_cast<size_t>(B * M * Lk));
  std::vector<T> ov(static_cast<size_t>(B * M * Lk)), mean(static_cast<size_t>(B * M));
  at::Tensor var = at::empty({B * M}, opts.dtype(at::kDouble));
  double* var_p = var.mutable_data_ptr<double>();
  at::parallel_for(0, B * M, 1, [&](int64_t r0, int64_t r1) {
    std::vector<std::pair<T, int64_t>> q;
    std::vector<T> kth;
    at::Tensor d2 = at::empty({A}, opts), dist = at::empty({A}, opts);  // squared distances, distances
    T* d2_p = d2.mutable_data_ptr<T>();
    T* dist_p = dist.mutable_data_ptr<T>();
    for (int64_t r = r0; r < r1; ++r) {
      var_p[r] = NAN;
      if (!a.valid[r]) continue;
      const int64_t b = r / M, pb = a.prior_stride ? b : 0;
      const T* g = a.gt + r * 4;
      const T gcx = assign::centre(g[0], g[2]), gcy = assign::centre(g[1], g[3]);
      const T* cx = pcx.data() + pb * A;
      const T* cy = pcy.data() + pb * A;
      int64_t i = 0;  // the squared distances, V at a time, then the tail; torch's own sqrt (position-free)
      for (; i + V <= A; i += V) assign::centre_distance2(Vec<T>::loadu(cx + i), Vec<T>::loadu(cy + i), Vec<T>(gcx), Vec<T>(gcy)).store(d2_p + i);
      for (; i < A; ++i) d2_p[i] = assign::centre_distance2(cx[i], cy[i], gcx, gcy);
      at::sqrt_out(dist, d2);
      for (i = 0; i < A; ++i)
        if (a.ignored[b * A + i]) dist_p[i] = inf;
      int64_t* c = cand.data() + r * Lk;
      int64_t nc = 0, start = 0;
      for (const int64_t n : levels) {
        const int64_t k = std::min(a.topk, n);
        if (k > 0) {
          if (finite && std::isfinite(gcx) && std::isfinite(gcy)) {
            atss_level_topk(dist_p + start, n, k, q, kth);
          } else {  // NaN coordinates: the whole row through torch's rule
            q.clear();
            for (int64_t j = 0; j < n; ++j) q.emplace_back(dist_p[start + j], j);
            torch_cpu_topk(q, k, n, false);
          }
          std::sort(q.begin(), q.begin() + k);  // the canonical order: (distance, index)
          for (int64_t j = 0; j < k; ++j) c[nc++] = start + q[j].second;
        }
        start += n;
      }
      const T ga = assign::area(g[0], g[1], g[2], g[3]);
      auto mx = [](T x, T y) { return x > y || x != x ? x : y; };  // torch.max / torch.min: NaN propagates
      auto mn = [](T x, T y) { return x < y || x != x ? x : y; };
      T* o = ov.data() + r * Lk;
      for (int64_t j = 0; j < Lk; ++j) {
        const T* p = a.priors + pb * a.prior_stride + c[j] * 4;
        o[j] = assign::iou(g[0], g[1], g[2], g[3], ga, p[0], p[1], p[2], p[3], assign::area(p[0], p[1], p[2], p[3]),
                           static_cast<T>(assign::kOverlapsEps), T(0), mx, mn);
      }
      mean[r] = assign::atss_moments(o, Lk, var_p[r]);
    }
  });
  // the std by torch's own sqrt, as the spec
  const at::Tensor sd = at::sqrt(var);
  const double* sd_p = sd.const_data_ptr<double>();
  // 1b. per row: the threshold and the positives (prior, IoU), npos of them (in place of the candidates)
  std::vector<int64_t> npos(static_cast<size_t>(B * M), 0);
  at::parallel_for(0, B * M, 1, [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      if (!a.valid[r]) continue;
      const int64_t pb = a.prior_stride ? r / M : 0;
      const T thr = assign::atss_threshold(mean[r], sd_p[r]);
      int64_t* c = cand.data() + r * Lk;
      T* o = ov.data() + r * Lk;
      int64_t n_pos = 0;
      for (int64_t j = 0; j < Lk; ++j)
        if (o[j] >= thr && assign::atss_inside(pcx[pb * A + c[j]], pcy[pb * A + c[j]], a.gt + r * 4)) c[n_pos] = c[j], o[n_pos] = o[j], ++n_pos;
      npos[r] = n_pos;
    }
  });
  // 2. per image: the largest IoU over the gts holding a prior as positive, the first gt on ties
  at::parallel_for(0, B, 1, [&](int64_t b0, int64_t b1) {
    for (int64_t b = b0; b < b1; ++b) {
      bool any = false;
      for (int64_t i = 0; i < A; ++i) best[b * A + i] = -inf, inds[b * A + i] = a.ignored[b * A + i] ? -1 : 0;
      for (int64_t g = 0; g < M; ++g) {
        any = any || a.valid[b * M + g];
        const int64_t r = b * M + g;
        for (int64_t j = 0; j < npos[r]; ++j) {
          const int64_t i = cand[r * Lk + j];
          if (ov[r * Lk + j] > best[b * A + i]) best[b * A + i] = ov[r * Lk + j], inds[b * A + i] = g + 1;
        }
      }
      if (!any)  // mmdetection: no gts -> every prior background, overlap 0
        for (int64_t i = 0; i < A; ++i) best[b * A + i] = T(0), inds[b * A + i] = 0;
    }
  });
  return {gt_inds, max_ov};
}

std::tuple<at::Tensor, at::Tensor> atss_assign_cpu(const at::Tensor& priors, at::IntArrayRef num_level_priors, const at::Tensor& gt_bboxes,
                                                   const at::Tensor& gt_valid, const at::Tensor& ignored, int64_t topk) {
  int64_t B, A, M, Lk;
  std::tie(B, A, M, Lk) = assign::check_atss_args(priors, num_level_priors, gt_bboxes, gt_valid, ignored, topk);
  const std::vector<int64_t> levels(num_level_priors.begin(), num_level_priors.end());
  std::tuple<at::Tensor, at::Tensor> out;
  AT_DISPATCH_FLOATING_TYPES(priors.scalar_type(), "atss_assign_cpu", [&] {
    const AtssArgs<scalar_t> a{priors.const_data_ptr<scalar_t>(), gt_bboxes.const_data_ptr<scalar_t>(), gt_valid.const_data_ptr<bool>(),
                               ignored.const_data_ptr<bool>(), B, A, M, priors.size(0) == 1 ? 0 : A * 4, topk, Lk};
    out = atss_impl<scalar_t>(a, levels, priors.options());
  });
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(fastloss, CPU, m) {
  m.impl("max_iou_assign_native", &max_iou_assign_cpu);
  m.impl("task_aligned_assign_native", &task_aligned_assign_cpu);
  m.impl("atss_assign_native", &atss_assign_cpu);
}

}  // namespace fastloss
