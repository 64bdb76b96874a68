// CPU-only: the element loop shared by the CPU kernels.
//
// Elements are split into fixed-size blocks (independent of the thread count), each block
// accumulates its own partial sum, and the partials are added in block order: so results
// are bitwise identical run to run and for any number of threads.  The lanes accumulate in
// two levels (kInner chunks, then their sum into the block's lanes), so no fp32 lane adds
// more than ~kInner + kBlock / (kInner V) terms in sequence (the sum of 40000 equal fp32
// losses: 7e-7 relative, was 4e-5 with one level).  Within a block the loop walks "segments"
// -- runs of elements inside one row of a (rows, row_len) view -- so per-row data (class
// labels, per-anchor weights) is loaded once per segment and the element math runs on full
// vectors.
#pragma once

#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>

#include <algorithm>
#include <cstdint>
#include <type_traits>
#include <vector>

#if defined(__linux__)
#include <sys/mman.h>
#endif

#include "fastloss/cpu_vec.h"

namespace fastloss {
namespace cpu {

constexpr int64_t kBlock = 32768;  // elements per deterministic reduction block
constexpr int kInner = 32;         // chunks per first-level lane accumulator

template <typename T>
using Vec = at::vec::Vectorized<T>;

// Asks the kernel to back a freshly allocated, not yet written output with 2 MiB pages
// (transparent huge pages in "madvise" mode): a kernel's first write to a 4 KiB page costs a
// page fault, and a training step's outputs are fresh every step.  Only buffers above glibc's
// largest mmap threshold (32 MiB on 64-bit) are advised: malloc always maps those fresh, so
// their faults recur every step (2 threads, medians: BCE (16, 8400, 80) fwd+bwd with its
// 43 MB gradient 18-21 -> 9-10 ms, the (100, 120000) IoU matrix forward 15-18 -> 5-6 ms, seg CE
// (4, 19, 512, 512) fwd+bwd 35-38 -> 19 ms); smaller ones malloc reuses from its heap after the first
// steps, and advising them measured no gain (Dice's 20 MB gradient: 10 % slower on an earlier
// VM, compaction on fault).  The 2 MiB-aligned interior is advised; a no-op elsewhere and where
// the kernel says no.
inline void advise_huge_pages(const at::Tensor& t) {
#if defined(__linux__) && defined(MADV_HUGEPAGE)
  constexpr uintptr_t kHuge = uintptr_t(1) << 21;
  constexpr size_t kMinBytes = size_t(32) << 20;
  const size_t bytes = t.nbytes();
  if (bytes <= kMinBytes) return;
  const uintptr_t begin = reinterpret_cast<uintptr_t>(t.const_data_ptr());
  const uintptr_t lo = (begin + kHuge - 1) & ~(kHuge - 1), hi = (begin + bytes) & ~(kHuge - 1);
  if (hi > lo) madvise(reinterpret_cast<void*>(lo), hi - lo, MADV_HUGEPAGE);
#else
  (void)t;
#endif
}

// at::empty for an output the kernel then writes whole, advised for huge pages (above).
inline at::Tensor empty_output(at::IntArrayRef sizes, const at::TensorOptions& options) {
  at::Tensor t = at::empty(sizes, options);
  advise_huge_pages(t);
  return t;
}

// Copies len floats from src to dst with non-temporal (streaming) stores where the ISA has
// them: an output that is not read again before it leaves the cache then skips the read of
// each line that a plain store first makes (write-allocate: a third of a copy's traffic).
// The caller fences (stream_fence) before the results are used.
inline void stream_copy(float* dst, const float* src, int64_t len) {
  int64_t i = 0;
#if defined(CPU_CAPABILITY_AVX512)
  for (; i < len && (reinterpret_cast<uintptr_t>(dst + i) & 63) != 0; ++i) dst[i] = src[i];
  for (; i + 16 <= len; i += 16) _mm512_stream_ps(dst + i, _mm512_loadu_ps(src + i));
#elif defined(CPU_CAPABILITY_AVX2)
  for (; i < len && (reinterpret_cast<uintptr_t>(dst + i) & 31) != 0; ++i) dst[i] = src[i];
  for (; i + 8 <= len; i += 8) _mm256_stream_ps(dst + i, _mm256_loadu_ps(src + i));
#endif
  for (; i < len; ++i) dst[i] = src[i];
}

inline void stream_fence() {
#if defined(CPU_CAPABILITY_AVX2) || defined(CPU_CAPABILITY_AVX512)
  _mm_sfence();
#endif
}

// Load n <= Vec::size() elements of src as compute-type lanes (the rest are zero).
template <typename acc_t, typename scalar_t>
inline Vec<acc_t> load(const scalar_t* src, int64_t n) {
  if constexpr (std::is_same_v<acc_t, scalar_t>) {
    return Vec<acc_t>::loadu(src, n);
  } else {
    alignas(64) acc_t buf[Vec<acc_t>::size()] = {};
    for (int64_t i = 0; i < n; ++i) buf[i] = static_cast<acc_t>(src[i]);
    return Vec<acc_t>::loadu(buf);
  }
}

template <typename acc_t, typename scalar_t>
inline void store(scalar_t* dst, const Vec<acc_t>& v, int64_t n) {
  if constexpr (std::is_same_v<acc_t, scalar_t>) {
    v.store(dst, n);
  } else {
    alignas(64) acc_t buf[Vec<acc_t>::size()];
    v.store(buf);
    for (int64_t i = 0; i < n; ++i) dst[i] = static_cast<scalar_t>(buf[i]);
  }
}

// Horizontal sum in a fixed lane order.
template <typename acc_t>
inline double hsum(const Vec<acc_t>& v) {
  alignas(64) acc_t buf[Vec<acc_t>::size()];
  v.store(buf);
  double s = 0;
  for (int64_t i = 0; i < Vec<acc_t>::size(); ++i) s += static_cast<double>(buf[i]);
  return s;
}

// Calls body(row, col, flat_index, n) for consecutive chunks of <= Vec::size() elements of
// [0, numel), chunks never crossing a row of length row_len; returns the sum of what body
// returns (a Vec of per-lane partials, lanes past n must be zero), deterministically.
template <typename acc_t, typename Body>
double for_each_chunk(int64_t numel, int64_t row_len, const Body& body) {
  const int64_t nblocks = (numel + kBlock - 1) / kBlock;
  std::vector<double> partial(static_cast<size_t>(nblocks), 0.0);
  constexpr int64_t V = Vec<acc_t>::size();
  at::parallel_for(0, nblocks, 1, [&](int64_t b0, int64_t b1) {
    for (int64_t b = b0; b < b1; ++b) {
      const int64_t end = std::min(numel, (b + 1) * kBlock);
      Vec<acc_t> acc(acc_t(0)), inner(acc_t(0));
      int count = 0;
      int64_t i = b * kBlock;
      while (i < end) {
        const int64_t row = i / row_len;
        const int64_t seg_end = std::min(end, (row + 1) * row_len);
        for (int64_t j = i; j < seg_end; j += V) {
          inner = inner + body(row, j - row * row_len, j, std::min(V, seg_end - j));
          if (++count == kInner) {
            acc = acc + inner;
            inner = Vec<acc_t>(acc_t(0));
            count = 0;
          }
        }
        i = seg_end;
      }
      partial[b] = hsum(acc + inner);
    }
  });
  double total = 0;
  for (double p : partial) total += p;
  return total;
}

}  // namespace cpu
}  // namespace fastloss
