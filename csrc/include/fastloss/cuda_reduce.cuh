// CUDA-only: deterministic block-wide sum shared by the CUDA kernels.
#pragma once

namespace fastloss {

// Sum of v over the block's kThreads threads, valid in thread 0: fixed-order warp shuffles,
// then thread 0 adds the per-warp sums in warp order -- the same bits on every run (no
// atomics).  Ends with a barrier, so a kernel may call it repeatedly.
template <int kThreads, typename acc_t>
__device__ __forceinline__ acc_t block_sum(acc_t v) {
  static_assert(kThreads % 32 == 0 && kThreads <= 1024, "whole warps, one block");
  __shared__ acc_t warp_sums[kThreads / 32];
  for (int o = 16; o > 0; o >>= 1) v += __shfl_down_sync(0xffffffffu, v, o);
  if (threadIdx.x % 32 == 0) warp_sums[threadIdx.x / 32] = v;
  __syncthreads();
  acc_t total = acc_t(0);
  if (threadIdx.x == 0)
    for (int w = 0; w < kThreads / 32; ++w) total += warp_sums[w];
  __syncthreads();
  return total;
}

}  // namespace fastloss
