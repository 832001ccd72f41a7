"""gencycle's own CPU kernels, built once per machine: int4 weights times activations, and the
attention of one new token per row over a KV cache.

    y = torch.ops.gencycle.int4_mm(x, weight, scales, zeros, group_size)   # x (M, K) fp32 / bf16 -> (M, N), x's dtype
    out = torch.ops.gencycle.decode_attention(q, k, v, bias, scale)       # bf16 q (B, H, D) -> (B, H, D)

Compiled steps call them as custom ops (torch.library; an ahead-of-time library through its
JSON-described custom-op path, which measured as fast as a direct C call). Both split their work
over torch's OpenMP threads (`at::parallel_for`; see _FLAGS).

int4_mm. PyTorch's CPU int4 kernel (`_weight_int4pack_mm_for_cpu`) multiplies in fp32: every weight is
unpacked and then costs one fp32 multiply-add per row, so eight rows (a batch of 8 decoding)
take about four times one row, and bf16 matrix kernels overtake it from about five rows. This
kernel does what llama.cpp does for its 4-bit files: each row of x is quantized to int8 in blocks
of 32 (one fp32 scale per block, round to nearest), and the integer dot products of 4-bit weights
with 8-bit activations run on AVX512-VNNI's `vpdpbusd` (64 multiply-adds per instruction); each
block's int32 sum is then scaled back in fp32:

    w[n, k] = (q[n, k] - 8) s[n, g] + z[n, g]      q in [0, 15]; s, z bf16 per `group_size` inputs
    x[r, k] ~ xq[r, k] d[r, b]                     xq int8, d = max |x| / 127 over the block b of 32
    y[r, n] = sum_b s[n, g(b)] d[r, b] (sum_{k in b} q[n, k] xq[r, k] - 8 sum_{k in b} xq[r, k])
              + z[n, g(b)] sum_{k in b} x[r, k]

`vpdpbusd` multiplies unsigned by signed bytes, so it takes q in [0, 15] and the 8 is taken off
afterwards with the row's own sum; the zero term uses the exact sum of x. Only the activations'
rounding is new: about 0.6% relative error per product on Gaussian inputs, next to int4's ~8%.
The weights are unpacked once per block and reused for up to 8 rows. Weight layout ("vnni16"): blocks of 16 outputs x 32 inputs,
256 bytes each, ordered (output block, input block); in a block, 4 x 64 bytes hold two 16 x 4
slices each (lane l, byte i: the low nibble is q[16 nb + l, 32 b + 8 j + i], the high nibble the
same for input 8 j + 4 + i), ready for `vpdpbusd` after a mask and a shift. `pack_int4` writes it.

Each output block's weights are prefetched 4 KB ahead (cold weights: loads and arithmetic
otherwise did not overlap), and a block's activation rows lie side by side. One pass over
SmolLM2's layers, weights not in cache, 2 threads: 2.9 ms at 1 row (29 GB/s of weights), 5.3 ms at 8.

decode_attention: per (row, kv head), the query heads of that kv head (GQA) read each key and value
row once; scores (`vdpbf16ps`: bf16 pairs multiplied and summed in fp32), softmax and the weighted
sum of values are fp32, the output bf16. `bias` is additive, (B | 1, 1, 1, S) in bf16 or fp32, or
empty; slots masked (below -1e30) before the first and after the last attended one are not read,
so a compiled step that attends over every slot of a static cache pays only for the filled ones.
Against bf16 matmuls and softmax (SmolLM2, batch 8, 256 slots, 30 layers from cold caches, 2
threads): 1.3 vs 5.7 ms. It needs AVX512-BF16 as well (`attention_available`); D must be 64 or 128.

The source is compiled with torch.utils.cpp_extension the first time it is needed (about a minute
on 2 cores; kept in torch's extension cache, loaded in well under a second afterwards). Where it
cannot be (no C++ compiler or ninja, a CPU without AVX512-VNNI, GENCYCLE_NO_CPU_KERNELS=1 in the
environment), `available()` is False: quantize.py uses PyTorch's int4 kernel instead, and attention
plain matmuls.
"""

from __future__ import annotations

import functools
import os
from pathlib import Path
import shutil
import threading
import warnings

import torch

_LOCK = threading.Lock()

_SOURCE = r"""
#include <torch/library.h>
#include <ATen/core/Tensor.h>
#include <ATen/Parallel.h>
#include <ATen/ops/empty.h>
#include <immintrin.h>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <type_traits>
#include <algorithm>
#include <vector>

namespace {

inline __m512 load16_bf16(const uint16_t* p) {  // 16 bf16 -> 16 fp32
  return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm256_loadu_si256((const __m256i*)p)), 16));
}

inline float bf16_to_float(uint16_t v) {
  uint32_t bits = uint32_t(v) << 16;
  float f;
  std::memcpy(&f, &bits, 4);
  return f;
}

// x (M, K) -> xq int8 by block: (K / 32, M, 32); per block of 32 inputs and row, at [b * M + r]: d and the
// sum of x (fp32), -8 * the sum of xq (int32). Blocked so that a block's rows lie side by side: the
// kernel then reads them at fixed offsets from one pointer (no address arithmetic per row).
template <typename T>
void quantize_rows(const T* x, int64_t M, int64_t K, int8_t* xq, float* d, float* sums, int32_t* offsets) {
  const int64_t blocks = K / 32;
  at::parallel_for(0, M * blocks, 256, [&](int64_t begin, int64_t end) {  // serial below 256 blocks: a fork costs more
    for (int64_t i = begin; i < end; i++) {
      const int64_t r = i / blocks, b = i % blocks;
      const T* src = x + r * K + b * 32;
      __m512 a, c;
      if constexpr (std::is_same_v<T, float>) {
        a = _mm512_loadu_ps(src), c = _mm512_loadu_ps(src + 16);
      } else {
        a = load16_bf16(reinterpret_cast<const uint16_t*>(src)), c = load16_bf16(reinterpret_cast<const uint16_t*>(src) + 16);
      }
      const float amax = _mm512_reduce_max_ps(_mm512_max_ps(_mm512_abs_ps(a), _mm512_abs_ps(c)));
      const float scale = amax / 127.0f, inverse = amax > 0 ? 127.0f / amax : 0.0f;
      const int64_t at = b * M + r;
      d[at] = scale;
      sums[at] = _mm512_reduce_add_ps(_mm512_add_ps(a, c));
      const __m512 inv = _mm512_set1_ps(inverse);
      __m512i qa = _mm512_cvtps_epi32(_mm512_mul_ps(a, inv));  // round to nearest even
      __m512i qc = _mm512_cvtps_epi32(_mm512_mul_ps(c, inv));
      offsets[at] = -8 * _mm512_reduce_add_epi32(_mm512_add_epi32(qa, qc));
      _mm_storeu_si128((__m128i*)(xq + at * 32), _mm512_cvtepi32_epi8(qa));
      _mm_storeu_si128((__m128i*)(xq + at * 32 + 16), _mm512_cvtepi32_epi8(qc));
    }
  });
}

// R rows (R <= 8) of y for the 16 outputs of block nb. The rows' dot products interleave (8
// independent vpdpbusd chains), and the weights 16 blocks (4 KB) ahead are prefetched: without it
// the loads of cold weights and the arithmetic did not overlap (SmolLM2's layers at 8 rows,
// weights not in cache, on one core before the -fopenmp build: 12.9 ms a pass without, 8.2 ms with).
template <int R, typename Out>
inline void rows_times_block(int64_t nb, int64_t K, int64_t N, int64_t group, const uint8_t* W,
                             const uint16_t* S, const uint16_t* Z, const int8_t* xq, const float* d,
                             const float* sums, const int32_t* offsets, int64_t M, Out* y) {
  constexpr int64_t AHEAD = 16;
  const int64_t blocks = K / 32, groups = K / group, per_group = group / 32;
  const __m512i low = _mm512_set1_epi8(0x0F);
  __m512 acc[R];
  for (int r = 0; r < R; r++) acc[r] = _mm512_setzero_ps();
  const uint8_t* wp = W + nb * blocks * 256;
  const uint16_t* sp = S + nb * groups * 16;
  const uint16_t* zp = Z + nb * groups * 16;
  for (int64_t b = 0; b < blocks; b++, wp += 256, xq += 32 * M, d += M, sums += M, offsets += M) {
    for (int line = 0; line < 256; line += 64) _mm_prefetch((const char*)(wp + AHEAD * 256 + line), _MM_HINT_T0);
    const int64_t g = b / per_group;
    if (b % per_group == 0) {  // the next groups' scales and zeros (they follow on in memory)
      _mm_prefetch((const char*)(sp + (g + AHEAD) * 16), _MM_HINT_T0);
      _mm_prefetch((const char*)(zp + (g + AHEAD) * 16), _MM_HINT_T0);
    }
    const __m512 s = load16_bf16(sp + g * 16);
    const __m512 z = load16_bf16(zp + g * 16);
    __m512i w[8];
    for (int j = 0; j < 4; j++) {
      const __m512i v = _mm512_loadu_si512((const void*)(wp + 64 * j));
      w[2 * j] = _mm512_and_si512(v, low);
      w[2 * j + 1] = _mm512_and_si512(_mm512_srli_epi16(v, 4), low);
    }
    __m512i dot[R];
    for (int r = 0; r < R; r++) dot[r] = _mm512_set1_epi32(offsets[r]);  // sum of (q - 8) xq
    for (int c = 0; c < 8; c++)
      for (int r = 0; r < R; r++)
        dot[r] = _mm512_dpbusd_epi32(dot[r], w[c], _mm512_set1_epi32(reinterpret_cast<const int32_t*>(xq + 32 * r)[c]));
    for (int r = 0; r < R; r++) {
      acc[r] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(dot[r]), _mm512_mul_ps(s, _mm512_set1_ps(d[r])), acc[r]);
      acc[r] = _mm512_fmadd_ps(z, _mm512_set1_ps(sums[r]), acc[r]);
    }
  }
  for (int r = 0; r < R; r++) {  // in x's dtype: bf16 rounded to nearest even, as .to(bfloat16) does
    if constexpr (std::is_same_v<Out, float>) _mm512_storeu_ps(y + r * N + nb * 16, acc[r]);
    else _mm256_storeu_si256((__m256i*)(y + r * N + nb * 16), (__m256i)_mm512_cvtneps_pbh(acc[r]));
  }
}

template <typename Out>
using RowsFn = void (*)(int64_t, int64_t, int64_t, int64_t, const uint8_t*, const uint16_t*, const uint16_t*,
                        const int8_t*, const float*, const float*, const int32_t*, int64_t, Out*);
template <typename Out>
const RowsFn<Out> ROWS[9] = {nullptr, rows_times_block<1, Out>, rows_times_block<2, Out>, rows_times_block<3, Out>,
                             rows_times_block<4, Out>, rows_times_block<5, Out>, rows_times_block<6, Out>,
                             rows_times_block<7, Out>, rows_times_block<8, Out>};

template <typename Out>
void all_blocks(int64_t M, int64_t K, int64_t N, int64_t group_size, const uint8_t* W, const uint16_t* S,
                const uint16_t* Z, const int8_t* XQ, const float* D, const float* SUMS, const int32_t* OFFSETS, Out* Y) {
  at::parallel_for(0, N / 16, 1, [&](int64_t begin, int64_t end) {
    for (int64_t nb = begin; nb < end; nb++) {
      for (int64_t r0 = 0; r0 < M; r0 += 8) {
        const int64_t rows = std::min<int64_t>(8, M - r0);
        ROWS<Out>[rows](nb, K, N, group_size, W, S, Z, XQ + r0 * 32, D + r0, SUMS + r0, OFFSETS + r0, M, Y + r0 * N);
      }
    }
  });
}

at::Tensor int4_mm(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& scales, const at::Tensor& zeros,
                   int64_t group_size) {
  TORCH_CHECK(x.dim() == 2 && x.is_contiguous(), "int4_mm: x must be a contiguous (M, K) matrix");
  TORCH_CHECK(x.scalar_type() == at::kFloat || x.scalar_type() == at::kBFloat16, "int4_mm: x must be fp32 or bf16");
  TORCH_CHECK(weight.scalar_type() == at::kByte && weight.is_contiguous() && weight.dim() == 2,
              "int4_mm: weight must be the packed uint8 (N, K / 2) matrix");
  TORCH_CHECK(scales.scalar_type() == at::kBFloat16 && zeros.scalar_type() == at::kBFloat16 &&
              scales.is_contiguous() && zeros.is_contiguous(), "int4_mm: scales and zeros must be contiguous bf16");
  const int64_t M = x.size(0), K = x.size(1), N = weight.size(0);
  TORCH_CHECK(weight.size(1) * 2 == K && K % 32 == 0 && N % 16 == 0 && group_size % 32 == 0 && K % group_size == 0,
              "int4_mm: shapes do not fit (K ", K, ", N ", N, ", group size ", group_size, ")");
  TORCH_CHECK(scales.numel() == N * (K / group_size) && zeros.numel() == scales.numel(), "int4_mm: scales do not fit");
  auto y = at::empty({M, N}, x.options());
  if (M == 0) return y;
  const int64_t blocks = K / 32;
  // one scratch buffer: xq (M K bytes), then d, sums (fp32) and offsets (int32), M x blocks each
  auto scratch = at::empty({M * K + 12 * M * blocks}, x.options().dtype(at::kByte));
  int8_t* XQ = reinterpret_cast<int8_t*>(scratch.data_ptr<uint8_t>());
  float* D = reinterpret_cast<float*>(XQ + M * K);  // K % 32 == 0: aligned for floats
  float* SUMS = D + M * blocks;
  int32_t* OFFSETS = reinterpret_cast<int32_t*>(SUMS + M * blocks);
  if (x.scalar_type() == at::kFloat) quantize_rows(x.data_ptr<float>(), M, K, XQ, D, SUMS, OFFSETS);
  else quantize_rows(x.data_ptr<at::BFloat16>(), M, K, XQ, D, SUMS, OFFSETS);
  const uint8_t* W = weight.data_ptr<uint8_t>();
  const uint16_t* S = reinterpret_cast<const uint16_t*>(scales.data_ptr<at::BFloat16>());
  const uint16_t* Z = reinterpret_cast<const uint16_t*>(zeros.data_ptr<at::BFloat16>());
  if (x.scalar_type() == at::kFloat)
    all_blocks(M, K, N, group_size, W, S, Z, XQ, D, SUMS, OFFSETS, y.data_ptr<float>());
  else
    all_blocks(M, K, N, group_size, W, S, Z, XQ, D, SUMS, OFFSETS,
               reinterpret_cast<uint16_t*>(y.data_ptr<at::BFloat16>()));
  return y;
}


// ---- attention of one new token per row over a KV cache (decoding), bf16
// e^x for x <= 0 (scores minus their maximum): 2^n e^r, r = x - n ln 2 in [-ln2 / 2, ln2 / 2],
// e^r by its Taylor polynomial of degree 7 (relative error below 2e-8 there); below -87, ~0.
inline __m512 exp_nonpositive(__m512 x) {
  x = _mm512_max_ps(x, _mm512_set1_ps(-87.0f));
  const __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(1.44269504088896341f)),
                                        _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693145751953125f), x);  // ln 2 in two parts
  r = _mm512_fnmadd_ps(n, _mm512_set1_ps(1.428606765330187045e-06f), r);
  __m512 p = _mm512_set1_ps(1.0f / 5040);
  for (float c : {1.0f / 720, 1.0f / 120, 1.0f / 24, 1.0f / 6, 0.5f, 1.0f, 1.0f}) p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(c));
  return _mm512_scalef_ps(p, n);
}

inline bool masked(float bias) { return bias < -1e30f; }  // finfo.min / -inf: the slot is not attended

// 16 vectors -> one vector of their 16 sums, in order (a transpose-and-add tree: 45 instructions
// where 16 separate reductions take about 130).
inline __m512 sums_of_16(__m512* v) {
  __m512 w[8], x[4], y[2];
  for (int i = 0; i < 8; i++)  // lanes of 128-bit block: a0+a1, b0+b1, a2+a3, b2+b3 (a = v[2i], b = v[2i+1])
    w[i] = _mm512_add_ps(_mm512_unpacklo_ps(v[2 * i], v[2 * i + 1]), _mm512_unpackhi_ps(v[2 * i], v[2 * i + 1]));
  for (int i = 0; i < 4; i++)  // per 128-bit block: the 4 sums of v[4i .. 4i + 3] over that block
    x[i] = _mm512_add_ps(_mm512_shuffle_ps(w[2 * i], w[2 * i + 1], 0x44), _mm512_shuffle_ps(w[2 * i], w[2 * i + 1], 0xEE));
  for (int i = 0; i < 2; i++)  // blocks 0 + 1 and 2 + 3 of x[2i], x[2i + 1]
    y[i] = _mm512_add_ps(_mm512_shuffle_f32x4(x[2 * i], x[2 * i + 1], 0x88), _mm512_shuffle_f32x4(x[2 * i], x[2 * i + 1], 0xDD));
  return _mm512_add_ps(_mm512_shuffle_f32x4(y[0], y[1], 0x88), _mm512_shuffle_f32x4(y[0], y[1], 0xDD));
}

// One (row, kv head): GC of its query heads over slots [first, last] of the cache. D = 16 DV.
template <int DV, int GC>
void attend(const uint16_t* q, const uint16_t* k, const uint16_t* v, int64_t slot_stride, const float* bias,
            int64_t first, int64_t last, float scale, float* scores, uint16_t* out) {
  constexpr int D = 16 * DV;
  const int64_t S = last - first + 1;
  __m512bh qv[GC][DV / 2];
  for (int g = 0; g < GC; g++)
    for (int j = 0; j < DV / 2; j++) qv[g][j] = (__m512bh)_mm512_loadu_si512((const void*)(q + g * D + 32 * j));
  for (int64_t s0 = 0; s0 < S; s0 += 16) {  // scores: bf16 pairs multiplied and summed in fp32, 16 slots at a time
    const int n = static_cast<int>(std::min<int64_t>(16, S - s0));
    __m512 partial[GC][16];
    for (int i = 0; i < 16; i++) {
      const uint16_t* kp = k + (first + s0 + std::min(i, n - 1)) * slot_stride;
      for (int line = 0; line < D; line += 32) _mm_prefetch((const char*)(kp + 16 * slot_stride + line), _MM_HINT_T0);
      __m512bh kv[DV / 2];
      for (int j = 0; j < DV / 2; j++) kv[j] = (__m512bh)_mm512_loadu_si512((const void*)(kp + 32 * j));
      for (int g = 0; g < GC; g++) {
        __m512 acc = _mm512_setzero_ps();
        for (int j = 0; j < DV / 2; j++) acc = _mm512_dpbf16_ps(acc, qv[g][j], kv[j]);
        partial[g][i] = acc;
      }
    }
    const __mmask16 valid = (__mmask16)((1u << n) - 1);
    const __m512 b = bias ? _mm512_maskz_loadu_ps(valid, bias + first + s0) : _mm512_setzero_ps();
    for (int g = 0; g < GC; g++)
      _mm512_mask_storeu_ps(scores + g * S + s0, valid, _mm512_fmadd_ps(sums_of_16(partial[g]), _mm512_set1_ps(scale), b));
  }
  float inverse[GC];
  for (int g = 0; g < GC; g++) {  // softmax
    float* sc = scores + g * S;
    __m512 top = _mm512_set1_ps(-INFINITY);
    for (int64_t s = 0; s < S; s += 16) {
      const __mmask16 valid = (__mmask16)(S - s >= 16 ? 0xFFFF : (1u << (S - s)) - 1);
      top = _mm512_max_ps(top, _mm512_mask_loadu_ps(_mm512_set1_ps(-INFINITY), valid, sc + s));
    }
    const __m512 m = _mm512_set1_ps(_mm512_reduce_max_ps(top));
    __m512 total = _mm512_setzero_ps();
    for (int64_t s = 0; s < S; s += 16) {
      const __mmask16 valid = (__mmask16)(S - s >= 16 ? 0xFFFF : (1u << (S - s)) - 1);
      const __m512 e = _mm512_maskz_mov_ps(valid, exp_nonpositive(_mm512_sub_ps(_mm512_maskz_loadu_ps(valid, sc + s), m)));
      _mm512_mask_storeu_ps(sc + s, valid, e);
      total = _mm512_add_ps(total, e);
    }
    inverse[g] = 1.0f / _mm512_reduce_add_ps(total);
  }
  __m512 acc[GC][DV];  // weights times values, in fp32: each value row converted once for the GC heads
  for (int g = 0; g < GC; g++)
    for (int j = 0; j < DV; j++) acc[g][j] = _mm512_setzero_ps();
  for (int64_t t = 0; t < S; t++) {
    const uint16_t* vp = v + (first + t) * slot_stride;
    for (int line = 0; line < D; line += 32) _mm_prefetch((const char*)(vp + 16 * slot_stride + line), _MM_HINT_T0);
    __m512 row[DV];
    for (int j = 0; j < DV; j++) row[j] = load16_bf16(vp + 16 * j);
    for (int g = 0; g < GC; g++) {
      const __m512 w = _mm512_set1_ps(scores[g * S + t]);
      for (int j = 0; j < DV; j++) acc[g][j] = _mm512_fmadd_ps(w, row[j], acc[g][j]);
    }
  }
  for (int g = 0; g < GC; g++)
    for (int j = 0; j < DV; j++)
      _mm256_storeu_si256((__m256i*)(out + g * D + 16 * j),
                          (__m256i)_mm512_cvtneps_pbh(_mm512_mul_ps(acc[g][j], _mm512_set1_ps(inverse[g]))));
}

// The G query heads of one kv head, up to 16 / DV at a time (their accumulators stay in registers).
template <int DV>
void attend_one_kv_head(const uint16_t* q, int64_t G, const uint16_t* k, const uint16_t* v, int64_t slot_stride,
                        const float* bias, int64_t first, int64_t last, float scale, float* scores, uint16_t* out) {
  constexpr int D = 16 * DV;
  for (int64_t g = 0; g < G;) {
    const int64_t n = std::min<int64_t>(G - g, 16 / DV);
    const uint16_t* qg = q + g * D;
    uint16_t* og = out + g * D;
    switch (n) {
      case 4: attend<DV, 4>(qg, k, v, slot_stride, bias, first, last, scale, scores, og); break;
      case 3: attend<DV, 3>(qg, k, v, slot_stride, bias, first, last, scale, scores, og); break;
      case 2: attend<DV, 2>(qg, k, v, slot_stride, bias, first, last, scale, scores, og); break;
      default: attend<DV, 1>(qg, k, v, slot_stride, bias, first, last, scale, scores, og);
    }
    g += n;
  }
}

at::Tensor decode_attention(const at::Tensor& query, const at::Tensor& k, const at::Tensor& v, const at::Tensor& bias_in,
                            double scale) {
  TORCH_CHECK(query.dim() == 3 && k.dim() == 4 && v.sizes() == k.sizes() && query.size(0) == k.size(0) &&
              query.size(2) == k.size(3), "decode_attention: q (B, H, D), k and v (B, Hkv, S, D) do not fit");
  TORCH_CHECK(query.scalar_type() == at::kBFloat16 && k.scalar_type() == at::kBFloat16 && v.scalar_type() == at::kBFloat16,
              "decode_attention: q, k, v must be bf16");
  const int64_t B = query.size(0), H = query.size(1), D = query.size(2), Hkv = k.size(1), S = k.size(2);
  TORCH_CHECK((D == 64 || D == 128) && H % Hkv == 0, "decode_attention: head size ", D, " or heads ", H, " / ", Hkv);
  TORCH_CHECK(k.stride(3) == 1 && v.stride(3) == 1 && k.strides() == v.strides(),
              "decode_attention: k and v must have the same strides, head dimension contiguous");
  const bool has_bias = bias_in.numel() > 0;
  at::Tensor bias;
  if (has_bias) {
    TORCH_CHECK(bias_in.dim() == 4 && bias_in.size(1) == 1 && bias_in.size(2) == 1 && bias_in.size(3) == S &&
                (bias_in.size(0) == 1 || bias_in.size(0) == B), "decode_attention: bias must be (B | 1, 1, 1, S)");
    TORCH_CHECK(bias_in.scalar_type() == at::kBFloat16 || bias_in.scalar_type() == at::kFloat,
                "decode_attention: bias must be bf16 or fp32");
    bias = bias_in.contiguous();
  }
  const int64_t bias_rows = has_bias ? bias.size(0) : 0;
  std::vector<float> bias_fp32;  // a bf16 bias converted once, for every kv head of its rows
  const float* BIAS = nullptr;
  if (has_bias && bias.scalar_type() == at::kFloat) {
    BIAS = bias.data_ptr<float>();
  } else if (has_bias) {
    const uint16_t* source = reinterpret_cast<const uint16_t*>(bias.data_ptr<at::BFloat16>());
    bias_fp32.resize(bias.numel());
    for (int64_t i = 0; i < bias.numel(); i++) bias_fp32[i] = bf16_to_float(source[i]);
    BIAS = bias_fp32.data();
  }
  const at::Tensor q = query.contiguous();
  auto out = at::empty({B, H, D}, q.options());
  const int64_t G = H / Hkv;
  const uint16_t* Q = reinterpret_cast<const uint16_t*>(q.data_ptr<at::BFloat16>());
  const uint16_t* Kp = reinterpret_cast<const uint16_t*>(k.data_ptr<at::BFloat16>());
  const uint16_t* Vp = reinterpret_cast<const uint16_t*>(v.data_ptr<at::BFloat16>());
  uint16_t* O = reinterpret_cast<uint16_t*>(out.data_ptr<at::BFloat16>());
  at::parallel_for(0, B * Hkv, 1, [&](int64_t begin, int64_t end) {
    std::vector<float> scores(G * S);
    for (int64_t task = begin; task < end; task++) {
      const int64_t b = task / Hkv, h = task % Hkv;
      const float* row = BIAS ? BIAS + (bias_rows == 1 ? 0 : b) * S : nullptr;
      int64_t first = 0, last = S - 1;  // the attended slots lie in [first, last]: the rest is not read
      if (row) {
        while (first <= last && masked(row[first])) first++;
        while (last >= first && masked(row[last])) last--;
      }
      uint16_t* o = O + (b * H + h * G) * D;
      if (first > last) {  // nothing to attend to
        std::memset(o, 0, G * D * sizeof(uint16_t));
        continue;
      }
      const uint16_t* kb = Kp + b * k.stride(0) + h * k.stride(1);
      const uint16_t* vb = Vp + b * v.stride(0) + h * v.stride(1);
      if (D == 64) attend_one_kv_head<4>(Q + (b * H + h * G) * D, G, kb, vb, k.stride(2), row, first, last, scale, scores.data(), o);
      else attend_one_kv_head<8>(Q + (b * H + h * G) * D, G, kb, vb, k.stride(2), row, first, last, scale, scores.data(), o);
    }
  });
  return out;
}

}  // namespace

TORCH_LIBRARY(gencycle, m) {
  m.def("int4_mm(Tensor x, Tensor weight, Tensor scales, Tensor zeros, int group_size) -> Tensor");
  m.def("decode_attention(Tensor q, Tensor k, Tensor v, Tensor bias, float scale) -> Tensor");
}

TORCH_LIBRARY_IMPL(gencycle, CPU, m) {
  m.impl("int4_mm", &int4_mm);
  m.impl("decode_attention", &decode_attention);
}
"""

# -fopenmp: at::parallel_for is OpenMP in torch's CPU builds, inlined from its header, and without the
# flag it compiles to a plain serial loop (the kernels then ran on one core: SmolLM2's int4 head at 8
# rows took 1.30 ms on 2 threads, with it 0.71 ms). The library links libgomp.so.1 by name, which
# resolves to the copy torch has loaded already: one OpenMP runtime, one thread pool.
_FLAGS = ["-O3", "-mavx512f", "-mavx512bw", "-mavx512dq", "-mavx512vl", "-mavx512vnni", "-mavx512bf16", "-mfma",
          "-fopenmp"]


def cpu_flags() -> frozenset[str]:
    """The CPU's feature flags from /proc/cpuinfo (empty where there is none, e.g. macOS)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return frozenset(line.split(":", 1)[1].split())
    except OSError:
        pass
    return frozenset()


def cpu_supports_vnni() -> bool:
    """AVX512-VNNI (`vpdpbusd`), which the kernel needs."""
    probe = getattr(torch.cpu, "_is_vnni_supported", None)
    if probe is not None:
        return bool(probe())
    return {"avx512_vnni", "avx512bw"} <= cpu_flags()


@functools.cache
def _build() -> bool:
    if os.environ.get("GENCYCLE_NO_CPU_KERNELS") or not cpu_supports_vnni():
        return False
    if not any(shutil.which(name) for name in ("g++", "c++", "clang++")) or not shutil.which("ninja"):
        return False
    if hasattr(torch.ops.gencycle, "int4_mm"):
        return True
    from torch.utils import cpp_extension
    try:
        cpp_extension.load_inline("gencycle_cpu_kernels", cpp_sources=[_SOURCE], is_python_module=False,
                                  extra_cflags=_FLAGS, extra_ldflags=["-fopenmp"], verbose=False)
    except Exception as error:  # a compiler that cannot build it: PyTorch's kernels still work
        warnings.warn(f"gencycle's int4 CPU kernel could not be built ({type(error).__name__}: "
                      f"{str(error)[:300]}); using PyTorch's int4 kernel", stacklevel=3)
        return False
    torch.library.register_fake("gencycle::int4_mm")(_int4_mm_shape)
    torch.library.register_fake("gencycle::decode_attention")(_decode_attention_shape)
    return True


def _int4_mm_shape(x, weight, scales, zeros, group_size):
    return x.new_empty((x.shape[0], weight.shape[0]))


def _decode_attention_shape(q, k, v, bias, scale):
    return torch.empty_like(q, memory_format=torch.contiguous_format)


def available() -> bool:
    """Whether `torch.ops.gencycle.int4_mm` can run here (built on first call)."""
    with _LOCK:
        return _build()


_attention_available: bool | None = None


@torch.compiler.assume_constant_result  # torch.compile calls it instead of tracing it
def attention_available() -> bool:
    """Whether `torch.ops.gencycle.decode_attention` can run here: the kernels are built and the CPU
    has AVX512-BF16 (`vdpbf16ps`)."""
    global _attention_available
    if _attention_available is None:
        _attention_available = "avx512_bf16" in cpu_flags() and available()
    return _attention_available


def pack_int4(q: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor, group_size: int):
    """The kernel's operands from q (N, K) in [0, 15] and bf16 scale, zero (N, K / group_size) with
    w = (q - 8) * scale + zero: the packed weight (N, K / 2) uint8, scales and zeros (N / 16, K / group_size, 16) bf16."""
    N, K = q.shape
    blocks = q.to(torch.uint8).view(N // 16, 16, K // 32, 4, 2, 4)     # (nb, lane, b, j, half, i)
    packed = blocks[..., 0, :] | (blocks[..., 1, :] << 4)               # (nb, lane, b, j, i)
    packed = packed.permute(0, 2, 3, 1, 4).contiguous().view(N, K // 2)  # (nb, b, j, lane, i)

    def by_block(t):  # (N, groups) -> (N / 16, groups, 16): one vector of 16 outputs per group
        return t.to(torch.bfloat16).view(N // 16, 16, K // group_size).transpose(1, 2).contiguous()
    return packed, by_block(scale), by_block(zero)
