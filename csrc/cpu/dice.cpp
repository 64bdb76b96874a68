// Dice / Tversky / Jaccard (+ fused cross entropy), C++ CPU kernels: two passes over
// (N, C, S) logits read in place (channel-first, no permute), vectorised along S with ATen's
// Vectorized, at::parallel_for over fixed (image, spatial block) work items.
//   pass 1: per-(image, block, class) partial sums of I, P', G' (+ per-(image, block) CE sum
//           and count) accumulated in fp32 (fp64 for fp64) lanes, then added in block order
//           in fp64: bitwise identical for any thread count.
//   pass 2: dL/dlogits through the softmax/sigmoid Jacobian, recomputing the softmax.
// A softmax over an integer label map (the segmentation case) has its own pair of sweeps,
// sums_labels_cpu / grad_labels_cpu, which take the label class's terms per pixel instead of
// per class ((4, 19, 256, 256) fp32, 2 threads: pass 1 2.75 -> 2.2 ms, pass 2 4.05 -> 3.2 ms).
// Integer label maps (uint8 / int32 / int64) are compared with the class index in
// registers; no one-hot, no probabilities are materialised.  Math (plain, squared and
// soft-label sums): csrc/kernels/dice.h.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <ATen/ops/zeros.h>
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
// at most kPix / V terms in sequence (64 with AVX2, 32 with AVX-512) before the block's partial goes to fp64
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

// The blocks' partials (fp64) added in block order into sums (N, C, 3) and ce (N, 2).
template <typename acc_t>
void add_block_partials(const std::vector<double>& part, const std::vector<double>& cpart, int64_t N, int64_t nblk, int64_t C,
                        bool with_ce, at::Tensor& sums, at::Tensor& ce) {
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

// ------------------------------------------------------------------ softmax over a label map
//
// The common segmentation case (softmax, integer labels, not soft) takes the label class's
// terms per pixel instead of per class: with g = [c = y],
//   I_c = sum m p_y [y = c]  and  G_c = sum m [y = c]  (a scatter per pixel into the label's slot)
//   P'_c = sum m p_c (p_c^2 squared)                   (the only per-class accumulation)
// and in pass 2, with a = dL/dI, b = dL/dP' and dot = sum_c p_c d_c = m (a_y p_y + sum_c b_c p_c
// (2 b_c p_c^2 squared)), every class but the label's gets
//   dL/dx_c = p_c (m b_c (2 p_c squared) + e_ce hit - dot)          (e_ce: dL/d(ce sum))
// and the label class (hit pixels) is written over afterwards with
//   dL/dx_y = p_y (d_y - dot) - e_ce q_y,  q_y = 1 - p_y = rest_y / Z
// where e_c = exp(x_c - max), rest_y = sum_{c != y} e_c: no cancellation for a confident pixel.
// The cross entropy is (max - x_y) + log Z with log Z = log1p(rest_y + (e_y - 1)) (e_y = 1 for a label that is the
// argmax, so log1p(rest_y) exactly; otherwise rest_y >= 1).  The general sweeps below spend three
// multiply-adds and a compare per class and pixel on I and G, and the argmax's bookkeeping.

// Per block of <= kPix pixels: each pixel's label as a float lane (-1: none), its slot in the
// per-class tables (C: none), the counted mask m (not ignored, inside the block) and hit (m and
// a label in [0, C): unchecked out-of-range labels count in P' only, as in the general sweeps),
// padded to a multiple of V.  Written once per block and loaded as vectors: lanes stored one
// by one and loaded at once stall on store forwarding.
template <typename acc_t>
struct BlockLabels {
  using idx_t = at::vec::int_same_size_t<acc_t>;
  std::vector<acc_t> lab, m, hit;
  std::vector<idx_t> slot;
  BlockLabels() : lab(kPix), m(kPix), hit(kPix), slot(kPix) {}

  // labels lab[0 .. n) of one block; G ((C + 1) x V, if given) counts the pixels of each label by
  // lane (G[slot V + j % V]: consecutive pixels of one label add to different places -- one place
  // per label made a chain of dependent stores through memory on label maps of large regions)
  template <typename label_t>
  void load(const Args& a, const label_t* l, int64_t n, double* G) {
    constexpr int64_t V = Vec<acc_t>::size();
    const int64_t C = a.C, padded = (n + V - 1) / V * V;
    for (int64_t j = 0; j < padded; ++j) {
      const int64_t y = j < n ? static_cast<int64_t>(l[j]) : -1;
      const bool counted = j < n && !(a.has_ignore && y == a.ignore_index);
      const bool in_range = counted && y >= 0 && y < C;
      lab[j] = in_range ? static_cast<acc_t>(y) : acc_t(-1);
      m[j] = counted ? acc_t(1) : acc_t(0);
      hit[j] = in_range ? acc_t(1) : acc_t(0);
      slot[j] = static_cast<idx_t>(in_range ? y : C);
      if (G != nullptr) G[slot[j] * V + j % V] += in_range ? 1.0 : 0.0;
    }
  }
};

// The softmax numerators of one chunk (x, e: C vectors; e_c = exp(x_c - mx)), their sum, and the
// label class's e_y; with `rest`, rest_y = sum_{c != y} e_c.  bsum (if given) gets sum_c b_c e_c
// (b_c e_c^2 squared) for pass 2.
template <typename acc_t, bool kSquared, typename scalar_t>
inline void label_softmax(const scalar_t* xn, int64_t s, int64_t k, int64_t C, int64_t S, const Vec<acc_t>& labf, Vec<acc_t>* x,
                          Vec<acc_t>* e, Vec<acc_t>& mx, Vec<acc_t>& sum, Vec<acc_t>& ey, Vec<acc_t>* xy, Vec<acc_t>* rest,
                          const acc_t* b = nullptr, Vec<acc_t>* bsum = nullptr) {
  mx = Vec<acc_t>(-std::numeric_limits<acc_t>::infinity());
  for (int64_t c = 0; c < C; ++c) {
    // 512 bytes ahead in each class's run: with C runs in flight the hardware prefetchers fall
    // behind (pass 2 on (4, 19, 256, 256), one thread: 7.4 -> 6.4 ms)
    __builtin_prefetch(reinterpret_cast<const char*>(xn + c * S + s) + 512);
    x[c] = cpu::load<acc_t>(xn + c * S + s, k);
    mx = at::vec::maximum(mx, x[c]);
  }
  const Vec<acc_t> zero(acc_t(0));
  sum = ey = zero;
  Vec<acc_t> r = zero, xl = zero, bs = zero;
  for (int64_t c = 0; c < C; ++c) {
    const Vec<acc_t> ec = fl::exp_nonpos(x[c] - mx);  // <= 3 ulp, argument <= 0 (or NaN)
    const Vec<acc_t> eq = labf == Vec<acc_t>(static_cast<acc_t>(c));
    e[c] = ec;
    sum = sum + ec;
    ey = Vec<acc_t>::blendv(ey, ec, eq);
    if (rest != nullptr) {
      r = r + Vec<acc_t>::blendv(ec, zero, eq);
      xl = Vec<acc_t>::blendv(xl, x[c], eq);
    }
    if (bsum != nullptr) bs = bs + Vec<acc_t>(b[c]) * (kSquared ? ec * ec : ec);
  }
  if (rest != nullptr) {
    *rest = r;
    *xy = xl;
  }
  if (bsum != nullptr) *bsum = bs;
}

// stats (nullptr, or (N, R, S) in the accumulation dtype): each pixel's [max, 1 / Z, p_y] and,
// with the CE term (R = 4), q_y = 1 - p_y, for pass 2 (grad_labels_cpu), which then skips the
// max sweep and the sums over the classes.
template <typename scalar_t, typename label_t, bool kSquared>
void sums_labels_cpu(const Args& a, bool with_ce, at::Tensor& sums, at::Tensor& ce, at::opmath_type<scalar_t>* stats = nullptr) {
  using acc_t = at::opmath_type<scalar_t>;
  constexpr int64_t V = Vec<acc_t>::size();
  const int64_t N = a.N, C = a.C, S = a.S;
  const int64_t nblk = (S + kPix - 1) / kPix;
  const scalar_t* x_ptr = a.input.const_data_ptr<scalar_t>();
  const label_t* lab_ptr = a.target.const_data_ptr<label_t>();
  std::vector<double> part(static_cast<size_t>(N * nblk * C * 3), 0.0);
  std::vector<double> cpart(static_cast<size_t>(N * nblk * 2), 0.0);

  at::parallel_for(0, N * nblk, 1, [&](int64_t w0, int64_t w1) {
    std::vector<Vec<acc_t>> accP(static_cast<size_t>(C)), xbuf(static_cast<size_t>(C)), ebuf(static_cast<size_t>(C));
    std::vector<double> I(static_cast<size_t>((C + 1) * V)), G(static_cast<size_t>((C + 1) * V));  // by (slot, lane)
    BlockLabels<acc_t> bl;
    alignas(64) acc_t lanes[V];
    for (int64_t w = w0; w < w1; ++w) {
      const int64_t n = w / nblk, blk = w % nblk;
      const int64_t s0 = blk * kPix, s1 = std::min(S, s0 + kPix);
      for (auto& v : accP) v = Vec<acc_t>(acc_t(0));
      std::fill(I.begin(), I.end(), 0.0);
      std::fill(G.begin(), G.end(), 0.0);
      bl.load(a, lab_ptr + n * S + s0, s1 - s0, G.data());
      Vec<acc_t> ce_acc(acc_t(0)), cnt_acc(acc_t(0));
      const scalar_t* xn = x_ptr + n * C * S;
      for (int64_t s = s0; s < s1; s += V) {
        const int64_t j = s - s0, k = std::min(V, s1 - s);
        const Vec<acc_t> labf = Vec<acc_t>::loadu(bl.lab.data() + j), m = Vec<acc_t>::loadu(bl.m.data() + j);
        Vec<acc_t> mx, sum, ey, xy, rest;
        label_softmax<acc_t, kSquared>(xn, s, k, C, S, labf, xbuf.data(), ebuf.data(), mx, sum, ey, &xy, with_ce ? &rest : nullptr);
        const Vec<acc_t> inv = Vec<acc_t>(acc_t(1)) / sum;
        if (stats != nullptr) {
          acc_t* st = stats + n * (with_ce ? 4 : 3) * S + s;
          mx.store(st, k);
          inv.store(st + S, k);
          (ey * inv).store(st + 2 * S, k);
          if (with_ce) (rest * inv).store(st + 3 * S, k);
        }
        const Vec<acc_t> w_p = kSquared ? m * inv * inv : m * inv;  // P' term = e_c (e_c) w_p
        for (int64_t c = 0; c < C; ++c) accP[c] = accP[c] + (kSquared ? ebuf[c] * ebuf[c] : ebuf[c]) * w_p;
        // I: m p_y into the label's slot, by lane (0 for a pixel without one: e_y = 0)
        (ey * (m * inv)).store(lanes);
        for (int64_t l = 0; l < k; ++l) I[bl.slot[j + l] * V + l] += static_cast<double>(lanes[l]);
        if (with_ce) {
          const Vec<acc_t> hit = Vec<acc_t>::loadu(bl.hit.data() + j);
          const Vec<acc_t> log_z = fl::log1p(rest + (ey - Vec<acc_t>(acc_t(1))));
          const Vec<acc_t> ce_px = rowwise::dense_cross_entropy(mx - xy, Vec<acc_t>(acc_t(1)), log_z);
          // blend, not multiply: padded / ignored lanes must add exactly 0
          ce_acc = ce_acc + Vec<acc_t>::blendv(Vec<acc_t>(acc_t(0)), ce_px, hit != Vec<acc_t>(acc_t(0)));
          cnt_acc = cnt_acc + m;
        }
      }
      double* out = part.data() + (n * nblk + blk) * C * 3;
      for (int64_t c = 0; c < C; ++c) {
        out[3 * c + 0] = out[3 * c + 2] = 0.0;
        for (int64_t l = 0; l < V; ++l) {
          out[3 * c + 0] += I[c * V + l];
          out[3 * c + 2] += G[c * V + l];
        }
        out[3 * c + 1] = cpu::hsum(accP[c]);
      }
      cpart[(n * nblk + blk) * 2 + 0] = cpu::hsum(ce_acc);
      cpart[(n * nblk + blk) * 2 + 1] = cpu::hsum(cnt_acc);
    }
  });
  add_block_partials<acc_t>(part, cpart, N, nblk, C, with_ce, sums, ce);
}

// e_c = exp(x_c - mx) of one chunk into e, and bsum = sum_c b_c e_c (b_c e_c^2 squared): pass 2's
// sweep over the classes when pass 1 kept the pixel's statistics (the same terms, in the same
// order, as label_softmax's).
template <typename acc_t, bool kSquared, typename scalar_t>
inline Vec<acc_t> stats_exp(const scalar_t* xn, int64_t s, int64_t k, int64_t C, int64_t S, const Vec<acc_t>& mx, Vec<acc_t>* e,
                            const acc_t* b) {
  Vec<acc_t> bs(acc_t(0));
  for (int64_t c = 0; c < C; ++c) {
    __builtin_prefetch(reinterpret_cast<const char*>(xn + c * S + s) + 512);
    const Vec<acc_t> ec = fl::exp_nonpos(cpu::load<acc_t>(xn + c * S + s, k) - mx);
    e[c] = ec;
    bs = bs + Vec<acc_t>(b[c]) * (kSquared ? ec * ec : ec);
  }
  return bs;
}

// stats: sums_labels_cpu's per-pixel [max, 1 / Z, p_y (, q_y)] in stats_rows rows (q_y, row 3,
// is there whenever gce is not empty: run_grad checks), or nullptr (recomputed here): the same
// bits either way.
template <typename scalar_t, typename label_t, bool kSquared>
void grad_labels_cpu(const Args& a, const at::Tensor& gsums, const at::Tensor& gce, at::Tensor& out,
                     const at::opmath_type<scalar_t>* stats = nullptr, int64_t stats_rows = 0) {
  using acc_t = at::opmath_type<scalar_t>;
  using idx_t = typename BlockLabels<acc_t>::idx_t;
  constexpr int64_t V = Vec<acc_t>::size();
  const int64_t N = a.N, C = a.C, S = a.S;
  const int64_t nblk = (S + kPix - 1) / kPix;
  const scalar_t* x_ptr = a.input.const_data_ptr<scalar_t>();
  const label_t* lab_ptr = a.target.const_data_ptr<label_t>();
  const acc_t* coef = gsums.const_data_ptr<acc_t>();
  const bool with_ce = gce.numel() > 0;
  const acc_t* ce_coef = with_ce ? gce.const_data_ptr<acc_t>() : nullptr;
  scalar_t* o_ptr = out.mutable_data_ptr<scalar_t>();

  at::parallel_for(0, N * nblk, 1, [&](int64_t w0, int64_t w1) {
    std::vector<Vec<acc_t>> xbuf(static_cast<size_t>(C)), ebuf(static_cast<size_t>(C));
    std::vector<acc_t> A(static_cast<size_t>(C + 1)), B(static_cast<size_t>(C + 1));  // dL/dI, dL/dP' by slot (C: 0)
    BlockLabels<acc_t> bl;
    alignas(64) acc_t lanes[V];
    int64_t image = -1;
    for (int64_t w = w0; w < w1; ++w) {
      const int64_t n = w / nblk, blk = w % nblk;
      const int64_t s0 = blk * kPix, s1 = std::min(S, s0 + kPix);
      if (n != image) {
        image = n;
        for (int64_t c = 0; c <= C; ++c) {
          A[c] = c < C ? coef[(n * C + c) * 3] : acc_t(0);
          B[c] = c < C ? coef[(n * C + c) * 3 + 1] : acc_t(0);
        }
      }
      bl.load(a, lab_ptr + n * S + s0, s1 - s0, nullptr);
      const scalar_t* xn = x_ptr + n * C * S;
      scalar_t* on = o_ptr + n * C * S;
      const Vec<acc_t> e_ce(with_ce ? ce_coef[n * 2] : acc_t(0));
      for (int64_t s = s0; s < s1; s += V) {
        const int64_t j = s - s0, k = std::min(V, s1 - s);
        const Vec<acc_t> labf = Vec<acc_t>::loadu(bl.lab.data() + j), m = Vec<acc_t>::loadu(bl.m.data() + j);
        const Vec<acc_t> hit = Vec<acc_t>::loadu(bl.hit.data() + j);
        const Vec<idx_t> slot = Vec<idx_t>::loadu(bl.slot.data() + j);
        Vec<acc_t> inv, py, q, bsum;
        if (stats != nullptr) {
          const acc_t* st = stats + n * stats_rows * S + s;
          inv = Vec<acc_t>::loadu(st + S, k);
          py = Vec<acc_t>::loadu(st + 2 * S, k);
          q = with_ce ? Vec<acc_t>::loadu(st + 3 * S, k) : Vec<acc_t>(acc_t(0));
          bsum = stats_exp<acc_t, kSquared>(xn, s, k, C, S, Vec<acc_t>::loadu(st, k), ebuf.data(), B.data());
        } else {
          Vec<acc_t> mx, sum, ey, xy, rest;
          label_softmax<acc_t, kSquared>(xn, s, k, C, S, labf, xbuf.data(), ebuf.data(), mx, sum, ey, &xy, with_ce ? &rest : nullptr,
                                         B.data(), &bsum);
          inv = Vec<acc_t>(acc_t(1)) / sum;
          py = ey * inv;
          q = with_ce ? rest * inv : Vec<acc_t>(acc_t(0));
        }
        const Vec<acc_t> ay = at::vec::gather<sizeof(acc_t)>(A.data(), slot), by = at::vec::gather<sizeof(acc_t)>(B.data(), slot);
        const Vec<acc_t> two(acc_t(2));
        const Vec<acc_t> dot = m * (ay * py + (kSquared ? two * bsum * inv * inv : bsum * inv));
        const Vec<acc_t> w_k = (e_ce * hit - dot) * inv;   // p_c (m b_c (2 p_c) + e hit - dot) = e_c (e_c w_b b_c + w_k)
        const Vec<acc_t> w_b = kSquared ? two * m * inv * inv : m * inv;
        for (int64_t c = 0; c < C; ++c) {
          const Vec<acc_t> wb = w_b * Vec<acc_t>(B[c]);
          cpu::store<acc_t>(on + c * S + s, ebuf[c] * ((kSquared ? ebuf[c] * wb : wb) + w_k), k);
        }
        // the label class, written over: p_y (d_y - dot) - e_ce q_y (rowwise::grad_elem of a one-hot row)
        const Vec<acc_t> d_y = m * (ay + (kSquared ? two * by * py : by));
        Vec<acc_t> r_y = py * (d_y - dot);
        if (with_ce) r_y = r_y + e_ce * hit * rowwise::grad_elem(rowwise::cross_entropy_row(hit), py, q, hit);
        r_y.store(lanes);
        for (int64_t l = 0; l < k; ++l)
          if (bl.hit[j + l] != acc_t(0)) on[bl.slot[j + l] * S + s + l] = static_cast<scalar_t>(lanes[l]);
      }
    }
  });
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
            const Vec<acc_t> ce_px = rowwise::dense_cross_entropy(gd, gsum, fl::log1p(rest));
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

  add_block_partials<acc_t>(part, cpart, N, nblk, C, with_ce, sums, ce);
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

// softmax over an integer label map, plain or squared sums: the per-pixel label terms above
inline bool label_softmax_case(const Args& a) { return a.activation == dice::kSoftmax && a.labels && !a.soft; }

template <typename F>
void dispatch_labels(const Args& a, const F& f) {
  if (!a.labels) return f(static_cast<int64_t*>(nullptr));
  switch (a.target.scalar_type()) {
    case at::kByte: return f(static_cast<uint8_t*>(nullptr));
    case at::kInt: return f(static_cast<int32_t*>(nullptr));
    default: return f(static_cast<int64_t*>(nullptr));
  }
}

// Pass 1 into sums / ce; stats (defined only for a softmax over labels): each pixel's
// statistics are kept there.
void run_sums(const Args& a, bool with_ce, at::Tensor& sums, at::Tensor& ce, const at::Tensor& stats) {
  if (a.N * a.C * a.S == 0) return;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, a.input.scalar_type(), "dice_sums_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    acc_t* st = stats.defined() ? stats.mutable_data_ptr<acc_t>() : nullptr;
    dispatch_labels(a, [&](auto* tag) {
      using label_t = std::remove_pointer_t<decltype(tag)>;
      if (!label_softmax_case(a)) return sums_cpu<scalar_t, label_t>(a, with_ce, sums, ce);
      if (a.squared) return sums_labels_cpu<scalar_t, label_t, true>(a, with_ce, sums, ce, st);
      sums_labels_cpu<scalar_t, label_t, false>(a, with_ce, sums, ce, st);
    });
  });
}

// Pass 2 (the operands checked); stats: run_sums' kept statistics, or undefined (recomputed).
at::Tensor run_grad(const Args& a, const at::Tensor& grad_sums, const at::Tensor& grad_ce, const at::Tensor& stats) {
  const auto acc_t = a.input.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  TORCH_CHECK(grad_sums.scalar_type() == acc_t && grad_sums.is_contiguous() && grad_sums.numel() == a.N * a.C * 3,
              "fastloss dice: grad_sums must be a contiguous (N, C, 3) tensor in the accumulation dtype");
  TORCH_CHECK(grad_ce.numel() == 0 || (grad_ce.scalar_type() == acc_t && grad_ce.is_contiguous() && grad_ce.numel() == a.N * 2),
              "fastloss dice: grad_ce must be empty or a contiguous (N, 2) tensor in the accumulation dtype");
  // the statistics of a pass 1 without the CE term have 3 rows, no q_y: they cannot serve a CE gradient
  TORCH_CHECK(!stats.defined() || (stats.scalar_type() == acc_t && stats.is_contiguous() && stats.dim() == 3 && stats.size(0) == a.N &&
                                   (stats.size(1) == 4 || (stats.size(1) == 3 && grad_ce.numel() == 0)) && stats.size(2) == a.S),
              "fastloss dice: stats must be dice_sums_stats_native's contiguous (N, 4 with the CE term else 3, S) statistics",
              grad_ce.numel() > 0 ? " (a CE gradient needs the 4 rows of a pass 1 with with_ce=True)" : "");
  at::Tensor out = cpu::empty_output(a.input.sizes(), a.input.options());  // a.input is the contiguous (N, C, S) view
  if (out.numel() == 0) return out;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, a.input.scalar_type(), "dice_grad_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const acc_t* st = stats.defined() ? stats.const_data_ptr<acc_t>() : nullptr;
    dispatch_labels(a, [&](auto* tag) {
      using label_t = std::remove_pointer_t<decltype(tag)>;
      if (!label_softmax_case(a)) return grad_cpu<scalar_t, label_t>(a, grad_sums, grad_ce, out);
      const int64_t st_rows = stats.defined() ? stats.size(1) : 0;
      if (a.squared) return grad_labels_cpu<scalar_t, label_t, true>(a, grad_sums, grad_ce, out, st, st_rows);
      grad_labels_cpu<scalar_t, label_t, false>(a, grad_sums, grad_ce, out, st, st_rows);
    });
  });
  return out;
}

at::TensorOptions acc_options(const at::Tensor& input) {
  return input.options().dtype(input.scalar_type() == at::kDouble ? at::kDouble : at::kFloat);
}

std::tuple<at::Tensor, at::Tensor> sums_cpu_op(const at::Tensor& input, const at::Tensor& target, int64_t activation, bool squared,
                                               bool soft, c10::optional<int64_t> ignore_index, bool with_ce) {
  const Args a = dice::make_args(input, target, activation, squared, soft, ignore_index);
  at::Tensor sums = at::zeros({a.N, a.C, 3}, acc_options(input)), ce = at::zeros({with_ce ? a.N : 0, 2}, acc_options(input));
  run_sums(a, with_ce, sums, ce, at::Tensor());
  return {sums, with_ce ? ce : at::empty({0}, acc_options(input))};
}

at::Tensor grad_cpu_op(const at::Tensor& grad_sums, const at::Tensor& grad_ce, const at::Tensor& input, const at::Tensor& target,
                       int64_t activation, bool squared, bool soft, c10::optional<int64_t> ignore_index) {
  return run_grad(dice::make_args(input, target, activation, squared, soft, ignore_index), grad_sums, grad_ce, at::Tensor());
}

Args stats_args(const at::Tensor& input, const at::Tensor& target, bool squared, const c10::optional<int64_t>& ignore_index) {
  const Args a = dice::make_args(input, target, dice::kSoftmax, squared, false, ignore_index);
  TORCH_CHECK(a.labels, "fastloss dice: the softmax statistics are kept for an integer (N, S) label map only");
  return a;
}

// Pass 1 of a softmax over labels that also returns each pixel's statistics (N, 4 with the CE
// term else 3, S) for grad_stats_cpu_op (the eager path; fastloss/ops/dice.py keeps them
// between the passes).
std::tuple<at::Tensor, at::Tensor, at::Tensor> sums_stats_cpu_op(const at::Tensor& input, const at::Tensor& target, bool squared,
                                                                 c10::optional<int64_t> ignore_index, bool with_ce) {
  const Args a = stats_args(input, target, squared, ignore_index);
  at::Tensor sums = at::zeros({a.N, a.C, 3}, acc_options(input)), ce = at::zeros({with_ce ? a.N : 0, 2}, acc_options(input));
  at::Tensor stats = at::empty({a.N, with_ce ? 4 : 3, a.S}, acc_options(input));
  run_sums(a, with_ce, sums, ce, stats);
  return {sums, with_ce ? ce : at::empty({0}, acc_options(input)), stats};
}

at::Tensor grad_stats_cpu_op(const at::Tensor& grad_sums, const at::Tensor& grad_ce, const at::Tensor& input, const at::Tensor& target,
                             const at::Tensor& stats, bool squared, c10::optional<int64_t> ignore_index) {
  TORCH_CHECK(stats.defined(), "fastloss dice: stats must be dice_sums_stats_native's statistics");
  return run_grad(stats_args(input, target, squared, ignore_index), grad_sums, grad_ce, stats);
}

}  // namespace

TORCH_LIBRARY_IMPL(fastloss, CPU, m) {
  m.impl("dice_sums_native", &sums_cpu_op);
  m.impl("dice_grad_native", &grad_cpu_op);
  m.impl("dice_sums_stats_native", &sums_stats_cpu_op);
  m.impl("dice_grad_stats_native", &grad_stats_cpu_op);
}

}  // namespace fastloss
