// The row-wise (softmax) engine, C++ CPU kernels.  The math is csrc/kernels/rowwise.h (shared
// with the CUDA kernels and the Dice family); the calling convention is in csrc/fastloss.cpp.
//
// The rows (pixels / boxes) are processed V at a time, one per lane of an ATen Vectorized
// (8 fp32 lanes with AVX2, 16 with AVX-512): a tile holds the C logits of V rows, loaded straight
// from the (B, C, S) view -- a vector load per class for contiguous NCHW (rows adjacent along S),
// V x V register transposes of whole row blocks for channels_last and (N, C) inputs (classes
// adjacent, rows C apart; a gather for other strides) -- so every layout runs the same lane
// code without a permute or a copy of the input.  Per tile: one sweep for the max, one
// for the exponentials and the loss's sums (kept in the tile: the gradient pass needs no
// second exp), the row's loss from finish_row(), then the gradient written in the same call
// (the CPU is compute-bound here: fastloss/_backend.py STORE_GRAD_IN_FORWARD).  Work items are
// fixed (image, block of kRows rows) pieces; their partial sums are added in item order in
// fp64: bitwise identical results for any thread count.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <ATen/ops/zeros.h>
#include <torch/library.h>

#include <cstdint>
#include <limits>
#include <tuple>
#include <type_traits>
#include <vector>

#include "fastloss/cpu_loop.h"
#include "kernels/rowwise.h"

namespace fastloss {
namespace {

using cpu::Vec;
using rowwise::Args;
using rowwise::View;

constexpr int64_t kRows = 256;     // rows per work item / deterministic reduction block (a multiple of V)
constexpr int64_t kPrefetch = 64;  // elements ahead (4 cache lines of fp32) in each class row
// Classes summed per partial in sweep 2: each row's sums over the classes run in one vector
// lane, so a long class axis is summed in blocks whose partials are then added -- rounding
// error ~ (kSumBlock + C / kSumBlock) ulp instead of ~C ulp (fp32, C = 1e5: 3e-6 vs 7.7e-5
// relative in the loss).  C <= kSumBlock: one block, the plain sequential sum.
constexpr int64_t kSumBlock = 256;

// n <= V values at base, base + stride, ... as compute-type lanes (zeros past n).
template <typename acc_t, typename scalar_t>
inline Vec<acc_t> load_rows(const scalar_t* base, int64_t stride, int64_t n) {
  if (stride == 1) return cpu::load<acc_t>(base, n);
  alignas(64) acc_t buf[Vec<acc_t>::size()] = {};
  for (int64_t j = 0; j < n; ++j) buf[j] = static_cast<acc_t>(base[j * stride]);
  return Vec<acc_t>::loadu(buf);
}

template <typename acc_t, typename scalar_t>
inline void store_rows(scalar_t* base, int64_t stride, const Vec<acc_t>& v, int64_t n) {
  if (stride == 1) return cpu::store<acc_t>(base, v, n);
  alignas(64) acc_t buf[Vec<acc_t>::size()];
  v.store(buf);
  for (int64_t j = 0; j < n; ++j) base[j * stride] = static_cast<scalar_t>(buf[j]);
}

// Row-major layouts ((N, C), channels_last: the classes of a row adjacent, class stride 1):
// the n <= V rows x C classes at src (row stride ld) into the (C, V) tile buffer -- class c of
// row j at tile[c V + j], zeros in the lanes past n -- by V x V register transposes where the
// block is whole (fp32), instead of a gather per class.
template <typename acc_t, typename scalar_t>
inline void rows_to_tile(const scalar_t* src, int64_t ld, int64_t n, int64_t C, acc_t* tile) {
  constexpr int64_t V = Vec<acc_t>::size();
  int64_t c0 = 0;
  if constexpr (std::is_same_v<scalar_t, float> && std::is_same_v<acc_t, float>) {
#if defined(CPU_CAPABILITY_AVX512)
    // masked loads and stores take the last C % 16 classes too
    if (n == V) return at::vec::transpose_mxn<float>(src, ld, tile, V, V, static_cast<int>(C));
#else
    if constexpr (V == 8) {
      if (n == V)
        for (; c0 + 8 <= C; c0 += 8) at::vec::transpose_mxn<float, 8, 8>(src + c0, ld, tile + c0 * V, V);
    }
#endif
  }
  for (int64_t c = c0; c < C; ++c)
    for (int64_t j = 0; j < V; ++j) tile[c * V + j] = j < n ? static_cast<acc_t>(src[j * ld + c]) : acc_t(0);
}

// The reverse: the first n lanes of the (C, V) tile into n rows at dst (row stride ld).
template <typename acc_t, typename scalar_t>
inline void tile_to_rows(const acc_t* tile, int64_t n, int64_t C, scalar_t* dst, int64_t ld) {
  constexpr int64_t V = Vec<acc_t>::size();
  int64_t c0 = 0;
  if constexpr (std::is_same_v<scalar_t, float> && std::is_same_v<acc_t, float>) {
#if defined(CPU_CAPABILITY_AVX512)
    if (n == V) return at::vec::transpose_mxn<float>(tile, V, dst, ld, static_cast<int>(C), V);
#else
    if constexpr (V == 8) {
      if (n == V)
        for (; c0 + 8 <= C; c0 += 8) at::vec::transpose_mxn<float, 8, 8>(tile + c0 * V, V, dst + c0, ld);
    }
#endif
  }
  for (int64_t j = 0; j < n; ++j)
    for (int64_t c = c0; c < C; ++c) dst[j * ld + c] = static_cast<scalar_t>(tile[c * V + j]);
}

// Dense rows (ld == C, fp32): the tile's n rows are one contiguous run of n C values; it is
// formed in `stage` (L1) and streamed out with non-temporal stores (cpu::stream_copy) -- the
// gradient is not read again before it leaves the cache.  The caller fences
// (cpu::stream_fence) before its results are used.
template <typename acc_t, typename scalar_t>
inline void tile_to_dense_rows(const acc_t* tile, int64_t n, int64_t C, scalar_t* dst, acc_t* stage) {
#if defined(CPU_CAPABILITY_AVX2) || defined(CPU_CAPABILITY_AVX512)
  if constexpr (std::is_same_v<scalar_t, float> && std::is_same_v<acc_t, float>) {
    tile_to_rows(tile, n, C, stage, C);
    return cpu::stream_copy(dst, stage, n * C);
  }
#endif
  (void)stage;
  tile_to_rows(tile, n, C, dst, C);
}

// The per-row data of a tile of n rows starting at row index r0 (= b S + s).
template <typename acc_t>
struct RowData {
  Vec<acc_t> valid;   // 1.0 / 0.0 lanes
  Vec<acc_t> y;       // label (labels), left bin (bins); -1 where invalid
  Vec<acc_t> wy, ay;  // class weight and focal alpha at the label
  Vec<acc_t> r;       // sample weight, 0 where invalid
  Vec<acc_t> wl, wr;  // bins' weights
};

// Whether a row with label l counts (the loss, the mean's normalisers): 0 <= l < C in one
// unsigned compare, and l is not ignore_index.  skip: ignore_index, or -1 without one (never
// counted anyway).  Branch-free: ignored labels are scattered through a segmentation map.
inline bool label_counted(int64_t l, int64_t skip, int64_t C) {
  return (static_cast<uint64_t>(l) < static_cast<uint64_t>(C)) & (l != skip);
}

// The per-row operands of a call, resolved once.
template <typename acc_t, typename label_t>
struct RowOperands {
  const label_t* labels = nullptr;
  const acc_t* bins = nullptr;
  const acc_t* w = nullptr;
  const acc_t* alpha = nullptr;
  const acc_t* sw = nullptr;
  int64_t C = 0, skip = -1;  // label_counted's
  acc_t alpha0 = 1, bins_hi = 0;

  RowOperands(const Args& a, const rowwise::Params<acc_t>& p) {
    if (a.target_kind == rowwise::kLabels) labels = a.target.const_data_ptr<label_t>();
    if (a.target_kind == rowwise::kBins) bins = a.target.const_data_ptr<acc_t>();
    if (a.class_weight.defined()) w = a.class_weight.const_data_ptr<acc_t>();
    if (a.class_alpha.defined()) alpha = a.class_alpha.const_data_ptr<acc_t>();
    if (a.sample_weight.defined()) sw = a.sample_weight.const_data_ptr<acc_t>();
    C = a.C;
    skip = a.has_ignore ? a.ignore_index : -1;
    alpha0 = p.alpha;
    bins_hi = std::min(p.bins_hi, static_cast<acc_t>(a.C - 1));  // never past the last bin
  }

  RowData<acc_t> load(int64_t r0, int64_t n) const {
    constexpr int64_t V = Vec<acc_t>::size();
    RowData<acc_t> d;
    alignas(64) acc_t valid[V], y[V], wy[V], ay[V], r[V];
    for (int64_t j = 0; j < V; ++j) {
      bool ok = j < n;
      y[j] = acc_t(-1);
      wy[j] = acc_t(1);
      ay[j] = alpha0;
      if (ok && labels != nullptr) {
        const int64_t l = static_cast<int64_t>(labels[r0 + j]);
        // labels were validated by the op (fastloss/ops/rowwise.py) before any backend ran; an
        // out-of-range one (the unchecked CUDA rule) leaves its row out, as an ignored one
        ok = label_counted(l, skip, C);
        if (ok) {
          y[j] = static_cast<acc_t>(l);
          if (w != nullptr) wy[j] = w[l];
          if (alpha != nullptr) ay[j] = alpha[l];
        }
      }
      valid[j] = ok ? acc_t(1) : acc_t(0);
      r[j] = ok ? (sw != nullptr ? sw[r0 + j] : acc_t(1)) : acc_t(0);
    }
    d.valid = Vec<acc_t>::loadu(valid);
    d.y = Vec<acc_t>::loadu(y);
    d.wy = Vec<acc_t>::loadu(wy);
    d.ay = Vec<acc_t>::loadu(ay);
    d.r = Vec<acc_t>::loadu(r);
    d.wl = d.wr = Vec<acc_t>(acc_t(0));
    if (bins != nullptr) rowwise::bins_of(cpu::load<acc_t>(bins + r0, n), Vec<acc_t>(bins_hi), d.y, d.wl, d.wr);
    return d;
  }
};

// Sums of a work item: [loss, class weight of the counted rows, counted rows].
struct Partial {
  double loss = 0, weight = 0, count = 0;
};

// The V vectors at rows (rows[k V + j]: lane k of row j, rows_to_tile's layout) combined by op
// as a tree (pairs, then pairs of pairs): lane j of the result is row j's reduction over its
// lanes, with ~log2 V roundings for a sum instead of a chain's V - 1.
template <typename acc_t, typename Op>
inline Vec<acc_t> reduce_lanes_of_rows(const acc_t* rows, const Op& op) {
  constexpr int64_t V = Vec<acc_t>::size();
  Vec<acc_t> v[V];
  for (int64_t k = 0; k < V; ++k) v[k] = Vec<acc_t>::loadu(rows + k * V);
  for (int64_t w = V / 2; w >= 1; w /= 2)
    for (int64_t k = 0; k < w; ++k) v[k] = op(v[k], v[k + w]);
  return v[0];
}

// Row-major logits with labels (a detection head's (N, C), channels_last): the statistics of
// n <= V rows with the classes in the vector lanes, then each row's exponentials in its gradient
// row -- no per-class transposes.  The rows are taken V at a time: sweep 1 keeps each row's lane
// maxima and sweep 2 its lane sums, and each is reduced across lanes for all V rows at once by
// one V x V transpose (rows_to_tile) and a tree over its vectors (reduce_lanes_of_rows), not by
// a horizontal reduction per row between the max and the exps.  Sweep 2 (the exps) prefetches the next n_next <= V rows (at `next`), which sweep 1
// then finds in cache.  (100000, 81) fp32 on a 2-core Ice Lake VM: these statistics alone (a
// standalone loop) 65 -> 47 ns per row on one thread against one row at a time with two
// horizontal reductions; the whole forward without the gradient, class weights, 2 threads,
// medians of 200 calls interleaved in one process: 6.1 -> 5.4-5.55 ms.
// m (NaN if any logit is) and the label's logit xa (0 without a label); row j's exponentials go
// to tile[j C ...].  The sum leaves out the label's term, not the argmax's, so there is no search
// for the argmax: rest_y = sum_{c != y} e_c.  For finish_row:
//   x_y = m (the label is an argmax, e_y = 1):  amax = y, rest = rest_y -- the sweeps'
//     statistics, so a confident row's 1 - p_y = rest / Z keeps all its bits;
//   x_y < m:  amax = -1 (no class), rest = (rest_y - 1) + e_y = Z - 1 (rest_y >= 1 holds the
//     argmax's exact 1); its rounding is relative to Z >= 1, and there 1 - p_y >= 1/2 is formed
//     as 1 - p_y without cancellation.
// Rows j >= n get the sweeps' values for zero logits (their lanes are invalid).
template <typename acc_t>
inline void label_rows_stats(const acc_t* x0, int64_t ld, int64_t n, int64_t C, const acc_t* yl, const acc_t* next, int64_t n_next,
                             acc_t* tile, Vec<acc_t>& m_out, Vec<acc_t>& rest_out, Vec<acc_t>& amax_out, Vec<acc_t>& xa_out) {
  constexpr int64_t V = Vec<acc_t>::size();
  constexpr int64_t kLine = 64 / sizeof(acc_t);
  const int64_t full = C / V * V, tail = C - full;
  const Vec<acc_t> minus_inf(-std::numeric_limits<acc_t>::infinity()), zero(acc_t(0));
  const Vec<acc_t> lane = Vec<acc_t>::arange(acc_t(0), acc_t(1));
  const auto in_tail = lane < Vec<acc_t>(static_cast<acc_t>(tail));
  // the last C % V classes as one vector, -inf in the lanes past C: no part in the max, and
  // exp(-inf - m) = 0 in the sum
  auto tail_of = [&](const acc_t* xr) { return Vec<acc_t>::blendv(minus_inf, Vec<acc_t>::loadu(xr + full, tail), in_tail); };
  alignas(64) acc_t lanes[V * V], rows[V * V], ml[V], restl[V], amaxl[V], xal[V];
  // sweep 1: each row's lane maxima (maximum() keeps a NaN)
  for (int64_t j = 0; j < V; ++j) {
    Vec<acc_t> mv = minus_inf;
    if (j < n) {
      const acc_t* xr = x0 + j * ld;
      for (int64_t c = 0; c < full; c += V) mv = at::vec::maximum(mv, Vec<acc_t>::loadu(xr + c));
      if (tail > 0) mv = at::vec::maximum(mv, tail_of(xr));
    }
    mv.store(lanes + j * V);  // rows j >= n: -inf, replaced below
  }
  rows_to_tile(lanes, V, V, V, rows);  // lane k of row j at rows[k V + j]
  reduce_lanes_of_rows(rows, [](const Vec<acc_t>& a, const Vec<acc_t>& b) { return at::vec::maximum(a, b); }).store(ml);
  // sweep 2: the exponentials and their lane sums without the label's term (only the label's
  // vector is blended: a compare and blend per vector cost 10-15 % more than the branch)
  for (int64_t j = 0; j < V; ++j) {
    Vec<acc_t> sv = zero;
    if (j < n) {
      const acc_t* xr = x0 + j * ld;
      acc_t* e_row = tile + j * C;
      if (j < n_next) {  // every cache line of the next block's row j (C - 1: the last, whatever the row's alignment)
        for (int64_t c = 0; c < C; c += kLine) __builtin_prefetch(next + j * ld + c);
        __builtin_prefetch(next + j * ld + C - 1);
      }
      const Vec<acc_t> mb(ml[j]);
      const int64_t y = static_cast<int64_t>(yl[j]);
      const int64_t y_vec = y >= 0 ? y - y % V : -1;
      const auto at_y = lane == Vec<acc_t>(static_cast<acc_t>(y % V));
      for (int64_t c = 0; c < full; c += V) {
        Vec<acc_t> e = fl::exp_nonpos(Vec<acc_t>::loadu(xr + c) - mb);
        e.store(e_row + c);
        if (c == y_vec) e = Vec<acc_t>::blendv(e, zero, at_y);
        sv = sv + e;
      }
      if (tail > 0) {
        Vec<acc_t> e = fl::exp_nonpos(tail_of(xr) - mb);
        e.store(e_row + full, static_cast<int>(tail));
        if (full == y_vec) e = Vec<acc_t>::blendv(e, zero, at_y);
        sv = sv + e;
      }
    }
    sv.store(lanes + j * V);
  }
  rows_to_tile(lanes, V, V, V, rows);
  reduce_lanes_of_rows(rows, [](const Vec<acc_t>& a, const Vec<acc_t>& b) { return a + b; }).store(restl);
  for (int64_t j = 0; j < V; ++j) {
    if (j >= n) {
      ml[j] = acc_t(0), restl[j] = static_cast<acc_t>(C - 1), amaxl[j] = acc_t(0), xal[j] = acc_t(0);
      continue;
    }
    const acc_t* xr = x0 + j * ld;
    const int64_t y = static_cast<int64_t>(yl[j]);
    const bool top = y >= 0 && xr[y] == ml[j];
    restl[j] = top ? restl[j] : (restl[j] - acc_t(1)) + (y >= 0 ? tile[j * C + y] : acc_t(0));
    amaxl[j] = top ? static_cast<acc_t>(y) : acc_t(-1);
    xal[j] = y >= 0 ? xr[y] : acc_t(0);
  }
  m_out = Vec<acc_t>::loadu(ml), rest_out = Vec<acc_t>::loadu(restl), amax_out = Vec<acc_t>::loadu(amaxl), xa_out = Vec<acc_t>::loadu(xal);
}

// Forward (kBackward = false): per-row losses into `out` (reduction none) or the item's
// sums, and dL/dx of the summed loss into `grad_out` if defined.  Backward (kBackward = true):
// dL/dx times the upstream gradient (a scalar, or one per row) into `grad_out`.
// The target kind (kKind) and, for labels, whether the dense sums are needed (kDense: smoothing
// or Poly-1) are template parameters: each instance keeps only its own statistics live in
// registers (with every path in one loop, the unused accumulators spilled to the stack).
template <typename scalar_t, typename label_t, bool kBackward, int kKind, bool kDense>
std::vector<Partial> rowwise_cpu(const Args& a, const at::Tensor& upstream, at::Tensor& out, at::Tensor& grad_out) {
  using acc_t = at::opmath_type<scalar_t>;
  constexpr int64_t V = Vec<acc_t>::size();
  const int64_t B = a.B, C = a.C, S = a.S;
  const int64_t nblk = (S + kRows - 1) / kRows;
  const rowwise::Params<acc_t> p = rowwise::params_from<acc_t>(a.params);
  const int loss = a.loss, kind = kKind;
  const bool softmax = loss != rowwise::kNLL;
  constexpr bool labels = kKind == rowwise::kLabels, probs = kKind == rowwise::kProbs, bins = kKind == rowwise::kBins,
                 teacher = kKind == rowwise::kTeacher;
  constexpr bool label_dense = labels && kDense;  // the dense target sums (dsum, dmass, dexp) of smoothed labels / Poly-1
  const bool scaled = p.in_scale != acc_t(1);
  const bool poly1 = loss == rowwise::kPoly1CrossEntropy;  // only Poly-1 needs dexp
  // dmass of smoothed labels: sum_c w_c (C without class weights), the same for every row
  acc_t mass = acc_t(0);
  if constexpr (label_dense) {
    for (int64_t c = 0; c < C; ++c) mass += a.class_weight.defined() ? a.class_weight.const_data_ptr<acc_t>()[c] : acc_t(1);
  }
  const Vec<acc_t> label_mass(mass);
  const scalar_t* x_ptr = a.input.const_data_ptr<scalar_t>();
  const scalar_t* t_ptr = (probs || teacher) ? a.target.const_data_ptr<scalar_t>() : nullptr;
  const acc_t* w_ptr = a.class_weight.defined() ? a.class_weight.const_data_ptr<acc_t>() : nullptr;
  const View xv = a.x, tv = a.t;
  const View gv = grad_out.defined() ? rowwise::view_of(grad_out, a.fold) : View{};
  acc_t* g_ptr = nullptr;      // the forward's stored gradient: the accumulation dtype
  scalar_t* gs_ptr = nullptr;  // the backward's: input's dtype
  if constexpr (kBackward) {
    gs_ptr = grad_out.mutable_data_ptr<scalar_t>();
  } else if (grad_out.defined()) {
    g_ptr = grad_out.mutable_data_ptr<acc_t>();
  }
  scalar_t* o_ptr = (!kBackward && !a.reduced) ? out.mutable_data_ptr<scalar_t>() : nullptr;
  const bool per_row_up = kBackward && !a.reduced;
  const scalar_t* up_ptr = per_row_up ? upstream.const_data_ptr<scalar_t>() : nullptr;
  acc_t up_scalar = acc_t(1);
  if (kBackward && a.reduced) up_scalar = upstream.item<acc_t>();  // a CPU scalar: no device sync
  const bool write_grad = kBackward || g_ptr != nullptr;
  const acc_t grad_scale = p.in_scale * p.out_scale;

  const RowOperands<acc_t, label_t> rows(a, p);
  std::vector<Partial> parts(static_cast<size_t>(B * nblk));
  // classes adjacent in memory (row-major): whole tiles moved by transposes (rows_to_tile)
  const bool x_rows = xv.sc == 1 && xv.ss != 1;
  const bool g_rows = write_grad && gv.sc == 1 && gv.ss != 1;
  // row-major plain labels (no smoothing, no temperature; Poly-1 is always kDense), fp32 / fp64 in and out:
  // each row with its classes in the lanes (label_rows_stats), written straight to its gradient
  // row; a row's sum then runs over at most kSumBlock classes per lane, as the sweeps' blocks
  constexpr bool kLaneRows = labels && !kDense && std::is_same_v<scalar_t, acc_t>;
  const bool lane_rows = kLaneRows && softmax && !scaled && x_rows && (!write_grad || g_rows) && C <= kSumBlock * V;
  const bool g_dense = g_rows && gv.ss == C && !lane_rows;  // the rows of a tile are one contiguous run (tile_to_dense_rows)
  // lane rows into a dense fp32 gradient, AVX-512 builds: each row's gradient formed over its
  // exponentials in the tile, then the tile's n rows streamed out in one run (cpu::stream_copy).
  // (100000, 81) forward with the stored gradient, 2 threads, medians on a Zen 5 VM: AVX-512
  // 3.04-3.06 ms with plain 64-byte stores (each to a line not in cache), 2.63-2.68 streamed;
  // AVX2's plain 32-byte stores 2.68-2.71 ms, 2.79-3.16 streamed -- so AVX2 keeps them.
#if defined(CPU_CAPABILITY_AVX512)
  constexpr bool kLaneStream = std::is_same_v<acc_t, float>;
#else
  constexpr bool kLaneStream = false;
#endif
  const bool lane_stream = kLaneStream && lane_rows && write_grad && gv.ss == C;
  // by value: the loop-invariant flags and pointers stay in registers (a reference capture is
  // re-read after every store the compiler cannot prove unrelated)
  at::parallel_for(0, B * nblk, 1, [=, &parts](int64_t w0, int64_t w1) {
    std::vector<Vec<acc_t>> xb(static_cast<size_t>(C)), db(static_cast<size_t>((probs || teacher) ? C : 0));
    std::vector<acc_t> tile(static_cast<size_t>((x_rows || g_rows) ? C * V : 0)), stage(static_cast<size_t>(g_dense ? C * V : 0));
    for (int64_t w = w0; w < w1; ++w) {
      const int64_t b = w / nblk, blk = w % nblk;
      const int64_t s0 = blk * kRows, s1 = std::min(S, s0 + kRows);
      Vec<acc_t> acc_loss(acc_t(0)), acc_w(acc_t(0)), acc_n(acc_t(0));
      for (int64_t s = s0; s < s1; s += V) {
        const int64_t n = std::min(V, s1 - s);
        const int64_t r0 = b * S + s;
        const RowData<acc_t> d = rows.load(r0, n);
        const auto valid = d.valid != Vec<acc_t>(acc_t(0));
        const scalar_t* xr = x_ptr + b * xv.sb + s * xv.ss;
        const Vec<acc_t> zero(acc_t(0)), minus_inf(-std::numeric_limits<acc_t>::infinity());
        rowwise::Stats<Vec<acc_t>> st;
        if constexpr (kLaneRows) {
          if (lane_rows) {  // the tile holds the rows' exponentials, row-major (e of row j at tile[j C + c])
            alignas(64) acc_t yl[V];
            d.y.store(yl);
            const int64_t n_next = std::min(V, S - s - n);  // the image's next rows (none past its end)
            Vec<acc_t> m, rest, amax, xa;
            label_rows_stats<acc_t>(xr, xv.ss, n, C, yl, n_next > 0 ? xr + n * xv.ss : nullptr, n_next, tile.data(), m, rest, amax, xa);
            st = {m, rest, amax, xa, zero, zero, zero, zero, zero, minus_inf, zero, zero};
          }
        }
        if (!lane_rows) {
          // sweep 1: the logits into the tile, their max and first argmax (teacher: the same for z).
          // The sweeps accumulate in locals (st is formed after them): a struct member whose
          // address reaches finish_row() would be kept on the stack across the loop.
          if (x_rows) rows_to_tile(xr, xv.ss, n, C, tile.data());
          Vec<acc_t> m = minus_inf, amax = zero, mz = minus_inf, amaxz = zero;
          for (int64_t c = 0; c < C; ++c) {
            // the class rows are C streams kRows apart in memory (NCHW: S apart): more than the
            // hardware prefetchers follow, so fetch each a few tiles ahead
            if (xv.ss == 1 && s + kPrefetch < s1) __builtin_prefetch(xr + c * xv.sc + kPrefetch);
            Vec<acc_t> x = x_rows ? Vec<acc_t>::loadu(tile.data() + c * V) : load_rows<acc_t>(xr + c * xv.sc, xv.ss, n);
            if (scaled) x = x * Vec<acc_t>(p.in_scale);
            xb[c] = x;
            if (!softmax) continue;
            const Vec<acc_t> cf(static_cast<acc_t>(c));
            amax = Vec<acc_t>::blendv(amax, cf, x > m);
            m = at::vec::maximum(m, x);
            if constexpr (teacher) {
              Vec<acc_t> z = load_rows<acc_t>(t_ptr + b * tv.sb + s * tv.ss + c * tv.sc, tv.ss, n);
              if (scaled) z = z * Vec<acc_t>(p.in_scale);
              db[c] = z;
              amaxz = Vec<acc_t>::blendv(amaxz, cf, z > mz);
              mz = at::vec::maximum(mz, z);
            }
          }
          // sweep 2: exponentials (kept in the tile), the rest sum, the target's terms (summed in
          // blocks of kSumBlock classes: the *_b partials)
          Vec<acc_t> rest = zero, xa = zero, xbin = zero, dsum = zero, dmass = zero, dexp = zero, ent = zero, restz = zero, ez = zero;
          for (int64_t c0 = 0; c0 < C; c0 += kSumBlock) {
            Vec<acc_t> rest_b = zero, dsum_b = zero, dmass_b = zero, dexp_b = zero, ent_b = zero, restz_b = zero, ez_b = zero;
            for (int64_t c = c0, c1 = std::min(C, c0 + kSumBlock); c < c1; ++c) {
              const Vec<acc_t> cf(static_cast<acc_t>(c));
              const Vec<acc_t> x = xb[c];
              if constexpr (labels || bins) xa = Vec<acc_t>::blendv(xa, x, d.y == cf);
              if constexpr (bins) xbin = Vec<acc_t>::blendv(xbin, x, (d.y + Vec<acc_t>(acc_t(1))) == cf);
              if (!softmax) continue;
              const Vec<acc_t> e = fl::exp_nonpos(x - m);  // argument <= 0 (or NaN)
              rest_b = rest_b + Vec<acc_t>::blendv(e, zero, amax == cf);
              if constexpr (label_dense) {  // d_c = w_c: dmass is the call's constant (below)
                const Vec<acc_t> dc(w_ptr != nullptr ? w_ptr[c] : acc_t(1));
                dsum_b = dsum_b + rowwise::dense_term(dc, m, x);
                if (poly1) dexp_b = dexp_b + dc * e;
              } else if constexpr (probs) {
                const Vec<acc_t> t = load_rows<acc_t>(t_ptr + b * tv.sb + s * tv.ss + c * tv.sc, tv.ss, n);
                Vec<acc_t> dc = t;
                if (loss == rowwise::kKLDiv) {
                  ent_b = ent_b + rowwise::xlogx(t);
                } else {
                  dc = t * Vec<acc_t>(p.keep) + Vec<acc_t>(p.uniform);
                  if (w_ptr != nullptr) dc = dc * Vec<acc_t>(w_ptr[c]);
                }
                db[c] = dc;
                dsum_b = dsum_b + rowwise::dense_term(dc, m, x);
                dmass_b = dmass_b + dc;
                dexp_b = dexp_b + dc * e;
              } else if constexpr (teacher) {
                const Vec<acc_t> z = db[c];
                const Vec<acc_t> e_z = fl::exp_nonpos(z - mz);
                restz_b = restz_b + Vec<acc_t>::blendv(e_z, zero, amaxz == cf);
                ez_b = ez_b + rowwise::dense_term(e_z, z, x);  // 0 for a masked teacher class (z = -inf: e_z = 0), not 0 * -inf
                db[c] = e_z;
              }
              xb[c] = e;
            }
            rest = rest + rest_b, dsum = dsum + dsum_b, dmass = dmass + dmass_b, dexp = dexp + dexp_b, ent = ent + ent_b;
            restz = restz + restz_b, ez = ez + ez_b;
          }
          if constexpr (label_dense) dmass = label_mass;
          st = {m, rest, amax, xa, xbin, dsum, dmass, dexp, ent, mz, restz, ez};
        }
        const rowwise::Row<Vec<acc_t>> o = rowwise::finish_row(loss, kind, p, st, valid, d.r, d.y, d.wy, d.ay, d.wl, d.wr);
        if constexpr (!kBackward) {
          if (o_ptr != nullptr) {
            cpu::store<acc_t>(o_ptr + r0, o.loss, n);
          } else {
            acc_loss = acc_loss + o.loss;  // lanes past n are invalid: exactly 0
            acc_w = acc_w + Vec<acc_t>::blendv(zero, d.wy, valid);
            acc_n = acc_n + d.valid;
          }
        }
        if (!write_grad) continue;
        // the gradient pass, from the tile
        Vec<acc_t> scale(grad_scale * up_scalar);
        if (per_row_up) scale = scale * cpu::load<acc_t>(up_ptr + r0, n);
        const Vec<acc_t> hard = Vec<acc_t>(p.keep) * d.wy * d.r;  // keep = 1 for the focal loss and NLL
        const Vec<acc_t> uni = Vec<acc_t>(p.uniform) * d.r;
        const Vec<acc_t> rest_z = st.rest * o.inv_z;
        const Vec<acc_t> teacher_scale = d.r / (Vec<acc_t>(acc_t(1)) + st.restz);
        // labels, every loss but Poly-1: off the label a_k = uni w_k (0 without smoothing) and
        // E = 0, so there g_k = U p_k - a_k -- one multiply (and a subtract when smoothing) per
        // logit; the label class's g_y (from its own p_y -- the bits the loop would form -- and
        // q_y, with finish_row's Cy when smoothing) is blended in
        const bool label_fast = labels && softmax && !poly1;
        Vec<acc_t> off_label = zero, at_label = zero, uni_s = zero;
        if constexpr (labels) {
          if (label_fast) {
            off_label = o.U * o.inv_z * scale;
            uni_s = uni * scale;
            const Vec<acc_t> py = fl::exp_nonpos(st.xa - st.m) * o.inv_z;
            const Vec<acc_t> qy = Vec<acc_t>::blendv(Vec<acc_t>(acc_t(1)) - py, rest_z, st.amax == d.y);
            const Vec<acc_t> ay = label_dense ? hard + uni * d.wy : hard;
            // the header's label-class gradient (Cy when smoothing; plain labels: U - (E + F) a_y = 0 exactly)
            at_label = (label_dense ? rowwise::label_grad_elem(o, d.y, d.y, py, qy, ay) : rowwise::grad_elem(o, py, qy, ay)) * scale;
          }
        }
        if constexpr (kLaneRows) {
          if (lane_rows) {  // each row's gradient from its exponentials: e_c U / Z scale, the label's at_label
            alignas(64) acc_t offl[V], atl[V], yl[V], vl[V];
            off_label.store(offl);
            at_label.store(atl);
            d.y.store(yl);
            d.valid.store(vl);
            acc_t* gbase = nullptr;
            if constexpr (kBackward) {
              gbase = gs_ptr;
            } else {
              gbase = g_ptr;
            }
            for (int64_t j = 0; j < n; ++j) {
              acc_t* er = tile.data() + j * C;
              // dense rows: formed over the exponentials in the tile, then streamed out (below)
              acc_t* gr = lane_stream ? er : gbase + b * gv.sb + (s + j) * gv.ss;
              if (vl[j] == acc_t(0)) {  // an ignored row: exactly 0, also over NaN logits
                std::fill(gr, gr + C, acc_t(0));
                continue;
              }
              const Vec<acc_t> k(offl[j]);
              int64_t c = 0;
              for (; c + V <= C; c += V) (Vec<acc_t>::loadu(er + c) * k).store(gr + c);
              for (; c < C; ++c) gr[c] = er[c] * offl[j];
              gr[static_cast<int64_t>(yl[j])] = atl[j];
            }
            if constexpr (kLaneStream) {
              if (lane_stream) cpu::stream_copy(gbase + b * gv.sb + s * gv.ss, tile.data(), n * C);
            }
            continue;
          }
        }
        // class c's gradient lanes: into the tile (row-major output, transposed out below) or
        // straight to the output (the forward's stored gradient, or the backward's)
        auto store_class = [&](int64_t c, const Vec<acc_t>& g) {
          if (g_rows) {
            g.store(tile.data() + c * V);
          } else if constexpr (kBackward) {
            store_rows<acc_t>(gs_ptr + b * gv.sb + s * gv.ss + c * gv.sc, gv.ss, g, n);
          } else {
            store_rows<acc_t>(g_ptr + b * gv.sb + s * gv.ss + c * gv.sc, gv.ss, g, n);
          }
        };
        for (int64_t c = 0; c < C; ++c) {
          const Vec<acc_t> cf(static_cast<acc_t>(c));
          if constexpr (labels) {
            if (label_fast) {
              Vec<acc_t> g = xb[c] * off_label;
              if constexpr (label_dense) g = g - uni_s * Vec<acc_t>(w_ptr != nullptr ? w_ptr[c] : acc_t(1));
              g = Vec<acc_t>::blendv(zero, Vec<acc_t>::blendv(g, at_label, cf == d.y), valid);  // ignored rows: exactly 0
              store_class(c, g);
              continue;
            }
          }
          Vec<acc_t> coef;
          if constexpr (labels) {
            const bool with_uni = label_dense && p.uniform != acc_t(0);
            coef = rowwise::label_coef(cf, d.y, hard, with_uni ? uni * Vec<acc_t>(w_ptr != nullptr ? w_ptr[c] : acc_t(1)) : zero);
          } else if constexpr (probs) {
            coef = d.r * db[c];
          } else if constexpr (bins) {
            coef = rowwise::bins_coef(cf, d.y, d.r * d.wl, d.r * d.wr);
          } else {
            coef = teacher_scale * db[c];
          }
          Vec<acc_t> g;
          if (softmax) {
            const Vec<acc_t> pk = xb[c] * o.inv_z;
            const Vec<acc_t> qk = Vec<acc_t>::blendv(Vec<acc_t>(acc_t(1)) - pk, rest_z, st.amax == cf);
            // dense labels (smoothing, Poly-1): the label class's coefficient from finish_row (Cy);
            // for plain labels U - a_y is exactly 0 either way
            g = label_dense ? rowwise::label_grad_elem(o, cf, d.y, pk, qk, coef) : rowwise::grad_elem(o, pk, qk, coef);
          } else {
            g = zero - coef;
          }
          store_class(c, Vec<acc_t>::blendv(zero, g * scale, valid));  // an ignored row: exactly 0, also over NaN logits
        }
        if (g_rows) {  // the tile's rows out to the gradient (input's dtype in the backward, acc_t in the forward)
          auto rows_out = [&](auto* dst) {
            if (g_dense) {
              tile_to_dense_rows(tile.data(), n, C, dst, stage.data());
            } else {
              tile_to_rows(tile.data(), n, C, dst, gv.ss);
            }
          };
          if constexpr (kBackward) {
            rows_out(gs_ptr + b * gv.sb + s * gv.ss);
          } else {
            rows_out(g_ptr + b * gv.sb + s * gv.ss);
          }
        }
      }
      Partial& pt = parts[static_cast<size_t>(w)];
      pt.loss = cpu::hsum(acc_loss);
      pt.weight = cpu::hsum(acc_w);
      pt.count = cpu::hsum(acc_n);
    }
    if (g_dense || lane_stream) cpu::stream_fence();  // this thread's streaming stores, visible before parallel_for returns
  });
  return parts;
}

// rowwise_cpu<scalar_t, label_t, kBackward, kind, dense> for the call's target kind and label dtype.
template <typename scalar_t, bool kBackward>
std::vector<Partial> dispatch_target(const Args& a, const at::Tensor& upstream, at::Tensor& out, at::Tensor& grad_out) {
  using namespace rowwise;
  switch (a.target_kind) {
    case kProbs: return rowwise_cpu<scalar_t, int64_t, kBackward, kProbs, false>(a, upstream, out, grad_out);
    case kBins: return rowwise_cpu<scalar_t, int64_t, kBackward, kBins, false>(a, upstream, out, grad_out);
    case kTeacher: return rowwise_cpu<scalar_t, int64_t, kBackward, kTeacher, false>(a, upstream, out, grad_out);
    default: break;
  }
  const bool dense = a.loss != kNLL && a.loss != kSoftmaxFocal && (a.params[1] != 0.0 || a.loss == kPoly1CrossEntropy);  // params[1]: uniform
  auto run = [&](auto* tag) {
    using label_t = std::remove_pointer_t<decltype(tag)>;
    return dense ? rowwise_cpu<scalar_t, label_t, kBackward, kLabels, true>(a, upstream, out, grad_out)
                 : rowwise_cpu<scalar_t, label_t, kBackward, kLabels, false>(a, upstream, out, grad_out);
  };
  switch (a.target.scalar_type()) {
    case at::kByte: return run(static_cast<uint8_t*>(nullptr));
    case at::kInt: return run(static_cast<int32_t*>(nullptr));
    default: return run(static_cast<int64_t*>(nullptr));
  }
}

std::tuple<at::Tensor, at::Tensor> forward_cpu(const at::Tensor& input, const at::Tensor& target, const c10::optional<at::Tensor>& class_weight,
                                               const c10::optional<at::Tensor>& class_alpha, const c10::optional<at::Tensor>& sample_weight,
                                               int64_t loss, int64_t target_kind, c10::ArrayRef<double> params,
                                               c10::optional<int64_t> ignore_index, int64_t reduction, bool with_grad) {
  const Args a = rowwise::make_args(input, target, class_weight, class_alpha, sample_weight, loss, target_kind, params, ignore_index, reduction);
  const auto acc_opt = input.options().dtype(input.scalar_type() == at::kDouble ? at::kDouble : at::kFloat);
  at::Tensor out = a.reduced ? at::Tensor() : at::empty({input.size(0), input.size(2)}, input.options());
  at::Tensor grad = with_grad ? at::empty_like(input, acc_opt) : at::Tensor();
  if (with_grad) cpu::advise_huge_pages(grad);
  std::vector<Partial> parts;
  if (input.numel() > 0 || (!a.reduced && out.numel() > 0)) {
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, input.scalar_type(), "rowwise_forward_cpu",
                                    [&] { parts = dispatch_target<scalar_t, false>(a, at::Tensor(), out, grad); });
  }
  if (!with_grad) grad = at::empty({0}, acc_opt);
  if (!a.reduced) return {out, grad};
  double s[3] = {0, 0, 0};
  for (const Partial& pt : parts) {
    s[0] += pt.loss;
    s[1] += pt.weight;
    s[2] += pt.count;
  }
  at::Tensor sums = at::empty({3}, acc_opt);
  AT_DISPATCH_FLOATING_TYPES(sums.scalar_type(), "rowwise_sums", [&] {
    for (int i = 0; i < 3; ++i) sums.mutable_data_ptr<scalar_t>()[i] = static_cast<scalar_t>(s[i]);
  });
  return {sums, grad};
}

// mean_normaliser_cpu's per-block sums; w_f / w_d: the class weights (fp32 / fp64), or both null
template <typename label_t>
void mean_normaliser_blocks(const label_t* lab, int64_t n, const float* w_f, const double* w_d, int64_t skip, int64_t C, int64_t block,
                            std::vector<double>& wpart, std::vector<double>& npart) {
  at::parallel_for(0, static_cast<int64_t>(wpart.size()), 1, [&](int64_t b0, int64_t b1) {
    for (int64_t b = b0; b < b1; ++b) {
      int64_t cnt = 0;
      double w = 0;
      const int64_t i0 = b * block, i1 = std::min(n, (b + 1) * block);
      if (w_f == nullptr && w_d == nullptr) {
        for (int64_t i = i0; i < i1; ++i) cnt += label_counted(static_cast<int64_t>(lab[i]), skip, C);
        w = static_cast<double>(cnt);
      } else {
        for (int64_t i = i0; i < i1; ++i) {
          const int64_t l = static_cast<int64_t>(lab[i]);
          const bool ok = label_counted(l, skip, C);
          const int64_t k = ok ? l : 0;
          cnt += ok;
          w += ok ? (w_f != nullptr ? static_cast<double>(w_f[k]) : w_d[k]) : 0.0;
        }
      }
      wpart[static_cast<size_t>(b)] = w;
      npart[static_cast<size_t>(b)] = static_cast<double>(cnt);
    }
  });
}

at::Tensor backward_cpu(const at::Tensor& grad, const at::Tensor& input, const at::Tensor& target, const c10::optional<at::Tensor>& class_weight,
                        const c10::optional<at::Tensor>& class_alpha, const c10::optional<at::Tensor>& sample_weight, int64_t loss,
                        int64_t target_kind, c10::ArrayRef<double> params, c10::optional<int64_t> ignore_index, int64_t reduction) {
  const Args a = rowwise::make_args(input, target, class_weight, class_alpha, sample_weight, loss, target_kind, params, ignore_index, reduction);
  const auto acc = input.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  if (a.reduced) {
    TORCH_CHECK(grad.numel() == 1 && grad.scalar_type() == acc, "fastloss rowwise: the upstream gradient of the sums must be a scalar in the accumulation dtype");
  } else {
    TORCH_CHECK(grad.is_contiguous() && grad.numel() == a.B * a.S && grad.scalar_type() == input.scalar_type(),
                "fastloss rowwise: the upstream gradient must be one contiguous value per row in input's dtype");
  }
  at::Tensor out = at::empty_like(input);
  if (out.numel() == 0) return out;
  cpu::advise_huge_pages(out);
  at::Tensor none;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, input.scalar_type(), "rowwise_backward_cpu",
                                  [&] { dispatch_target<scalar_t, true>(a, grad, none, out); });
  return out;
}

// The normalisers of reduction "mean" over class labels, [class weight of the counted rows,
// counted rows] in fp64 -- the forward's sums 1 and 2, formed before the forward runs, so that
// the eager CPU path folds the mean into the stored gradient (fastloss/ops/rowwise.py
// _host_mean_normaliser), with the kernels' rule (label_counted).  Fixed blocks, added in
// order: the same bits for any thread count.
at::Tensor mean_normaliser_cpu(const at::Tensor& target, const c10::optional<at::Tensor>& class_weight, c10::optional<int64_t> ignore_index,
                               int64_t num_classes) {
  TORCH_CHECK(target.is_contiguous() && (target.scalar_type() == at::kByte || target.scalar_type() == at::kInt || target.scalar_type() == at::kLong),
              "fastloss rowwise: the labels must be a contiguous uint8 / int32 / int64 tensor");
  TORCH_CHECK(num_classes >= 0, "fastloss rowwise: num_classes must be >= 0, got ", num_classes);
  const bool weighted = class_weight.has_value() && class_weight->defined();
  TORCH_CHECK(!weighted || (class_weight->is_contiguous() && class_weight->numel() == num_classes &&
                            (class_weight->scalar_type() == at::kFloat || class_weight->scalar_type() == at::kDouble)),
              "fastloss rowwise: class_weight must be a contiguous fp32 / fp64 (C,) tensor");
  constexpr int64_t kBlock = 1 << 15;
  const int64_t n = target.numel(), nblk = (n + kBlock - 1) / kBlock;
  const int64_t skip = ignore_index.value_or(-1);
  std::vector<double> wpart(static_cast<size_t>(nblk), 0.0), npart(static_cast<size_t>(nblk), 0.0);
  const float* w_f = weighted && class_weight->scalar_type() == at::kFloat ? class_weight->const_data_ptr<float>() : nullptr;
  const double* w_d = weighted && class_weight->scalar_type() == at::kDouble ? class_weight->const_data_ptr<double>() : nullptr;
  auto run = [&](auto* lab) { mean_normaliser_blocks(lab, n, w_f, w_d, skip, num_classes, kBlock, wpart, npart); };
  switch (target.scalar_type()) {
    case at::kByte: run(target.const_data_ptr<uint8_t>()); break;
    case at::kInt: run(target.const_data_ptr<int32_t>()); break;
    default: run(target.const_data_ptr<int64_t>()); break;
  }
  at::Tensor out = at::zeros({2}, target.options().dtype(at::kDouble));
  double* o = out.mutable_data_ptr<double>();
  for (int64_t b = 0; b < nblk; ++b) o[0] += wpart[static_cast<size_t>(b)], o[1] += npart[static_cast<size_t>(b)];
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(fastloss, CPU, m) {
  m.impl("rowwise_forward_native", &forward_cpu);
  m.impl("rowwise_backward_native", &backward_cpu);
  m.impl("rowwise_mean_normaliser_native", &mean_normaliser_cpu);
}

}  // namespace fastloss
