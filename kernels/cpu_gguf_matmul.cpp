// y[M, N] = x[M, K] @ W[N, K]^T for W in GGUF blocks of 32 along K, as integer dot products: each row of x is
// quantized per block of 32 to 16-bit integers (scale = max |x| / 32512, an error under 2e-5 of the block's
// largest value), split into a high and a low signed byte (xi = 256 high + low), and a block's products are summed
// exactly in int32 by vpdpbusd (AVX512-VNNI: 64 products of an unsigned weight byte by a signed x byte per
// instruction), then scaled once.
//
// Q4_0 / Q4_1 (w = q * scale + min):  sum_k w_k x_k ~= scale * dx * sum_k q_k xi_k + min * sum_k x_k
//   (the min term takes the float32 sum of the block of x).
// Q8_0 (w = q * scale), weights stored as u8 = q + 128:  sum_k q_k xi_k = sum_k (q_k + 128) xi_k - 128 sum_k xi_k.
//
// The dot layout (kernels/cpu_gguf_matmul.py, _dot_layout): a row's blocks go in groups of 16 (the last group holds
// the remaining nb % 16), one 32-bit lane per block, so a 64-byte load carries 4 consecutive bytes of each of 16
// blocks and vpdpbusd leaves block j's partial sum in lane j: no horizontal sums inside the loop. In a group of g
// blocks starting at block b0, word L of lane j is stored at int32 offset L * g + j of the group:
//   4-bit (group at byte 16 * b0): word L (0..3) holds GGUF bytes 4L..4L+3 of block b0 + j; their low nibbles are
//     the block's values 4L..4L+3, their high nibbles its values 16+4L..16+4L+3;
//   8-bit (group at byte 32 * b0): word L (0..7) holds values 4L..4L+3 (each + 128).
// Each byte plane of x is stored in the 8-bit arrangement (word L = values 4L..4L+3 of each block), so the 4-bit
// weights' low nibbles of word L meet x's word L and their high nibbles x's word 4 + L.
// Threads split the output features N (torch's intra-op pool); a tile is 4 weight rows by one row of x.

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <c10/util/Half.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <vector>

#if defined(__AVX512F__) && defined(__AVX512VNNI__) && defined(__AVX512BW__)
#define PEGBOARD_VNNI 1
#include <immintrin.h>
#endif

namespace {

constexpr int64_t kBlock = 32;
constexpr int64_t kGroup = 16;      // blocks per group: one per 32-bit lane of a 512-bit register
constexpr int32_t kLevels = 32512;  // 127 * 256: the high byte of any |xi| <= kLevels stays within [-127, 127]

// Rows of x quantized per block: the high and low bytes of the 16-bit values in the dot layout, and per block its
// scale, the float sum of its values and 128 times the sum of its 16-bit values (Q8_0's offset correction).
struct QuantizedRows {
  int64_t nb;
  std::vector<int8_t> high, low;  // [M, nb * 32] each
  std::vector<float> scale;       // [M, nb]
  std::vector<float> sum;         // [M, nb]
  std::vector<int32_t> offset;    // [M, nb]
};

inline int64_t group_size(int64_t nb, int64_t b0) { return std::min<int64_t>(kGroup, nb - b0); }

// Block j of a group: its 32 bytes as 8 words, word L at int32 offset L * g + j.
inline void store_words(const int8_t* vals, int64_t g, int64_t j, int32_t* words) {
  for (int L = 0; L < 8; ++L) std::memcpy(words + L * g + j, vals + 4 * L, 4);
}

void quantize_row(const float* x, int64_t nb, int8_t* high, int8_t* low, float* scale, float* sum, int32_t* offset) {
  for (int64_t b0 = 0; b0 < nb; b0 += kGroup) {
    const int64_t g = group_size(nb, b0);
    int32_t* high_words = reinterpret_cast<int32_t*>(high + b0 * kBlock);
    int32_t* low_words = reinterpret_cast<int32_t*>(low + b0 * kBlock);
    for (int64_t j = 0; j < g; ++j) {
      const float* xb = x + (b0 + j) * kBlock;
      alignas(64) int32_t xi[kBlock];
      float amax = 0.f, s = 0.f;
#if defined(PEGBOARD_VNNI)
      const __m512 lo = _mm512_loadu_ps(xb), hi = _mm512_loadu_ps(xb + 16);
      amax = _mm512_reduce_max_ps(_mm512_max_ps(_mm512_abs_ps(lo), _mm512_abs_ps(hi)));
      s = _mm512_reduce_add_ps(_mm512_add_ps(lo, hi));
      const __m512 inv = _mm512_set1_ps(amax > 0.f ? kLevels / amax : 0.f);
      // rounded to nearest even, as std::nearbyint in the default rounding mode
      _mm512_store_si512(xi, _mm512_cvtps_epi32(_mm512_mul_ps(lo, inv)));
      _mm512_store_si512(xi + 16, _mm512_cvtps_epi32(_mm512_mul_ps(hi, inv)));
#else
      for (int k = 0; k < kBlock; ++k) {
        amax = std::max(amax, std::fabs(xb[k]));
        s += xb[k];
      }
      const float inv = amax > 0.f ? kLevels / amax : 0.f;
      for (int k = 0; k < kBlock; ++k) xi[k] = static_cast<int32_t>(std::nearbyint(xb[k] * inv));
#endif
      int8_t high_bytes[kBlock], low_bytes[kBlock];
      int32_t isum = 0;
      for (int k = 0; k < kBlock; ++k) {
        const int32_t v = std::clamp(xi[k], -kLevels, kLevels);
        const int32_t h = (v + 128) >> 8;  // v = 256 h + l with l in [-128, 127]
        high_bytes[k] = static_cast<int8_t>(h);
        low_bytes[k] = static_cast<int8_t>(v - 256 * h);
        isum += v;
      }
      scale[b0 + j] = amax / kLevels;
      sum[b0 + j] = s;
      offset[b0 + j] = 128 * isum;
      store_words(high_bytes, g, j, high_words);
      store_words(low_bytes, g, j, low_words);
    }
  }
}

QuantizedRows quantize_rows(const at::Tensor& x) {
  const int64_t M = x.size(0), K = x.size(1), nb = K / kBlock;
  QuantizedRows rows{nb, std::vector<int8_t>(M * K), std::vector<int8_t>(M * K), std::vector<float>(M * nb),
                     std::vector<float>(M * nb), std::vector<int32_t>(M * nb)};
  const float* xp = x.data_ptr<float>();
  at::parallel_for(0, M, 8, [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r)
      quantize_row(xp + r * K, nb, rows.high.data() + r * K, rows.low.data() + r * K, rows.scale.data() + r * nb,
                   rows.sum.data() + r * nb, rows.offset.data() + r * nb);
  });
  return rows;
}

void check_inputs(const at::Tensor& x, const at::Tensor& w, const at::Tensor& scale, int64_t k_div) {
  TORCH_CHECK(x.dim() == 2 && x.scalar_type() == at::kFloat && x.is_contiguous(), "x: contiguous float32 [M, K]");
  TORCH_CHECK(x.size(1) % kBlock == 0, "K must be a multiple of 32");
  TORCH_CHECK(w.dim() == 2 && w.scalar_type() == at::kByte && w.is_contiguous() && w.size(1) * k_div == x.size(1),
              "weights: uint8 [N, K / ", k_div, "] in the dot layout");
  TORCH_CHECK(scale.scalar_type() == at::kHalf && scale.is_contiguous() && scale.size(0) == w.size(0) &&
              scale.size(1) == x.size(1) / kBlock, "scales: float16 [N, K / 32]");
}

constexpr int kWeightRows = 4;  // weight rows per tile (measured against 2 x 2, 4 x 2, 1 x 4, 2 x 4 tiles)
constexpr int kXRows = 1;       // rows of x per tile

#if defined(PEGBOARD_VNNI)

inline __m512 load_halves(const c10::Half* p, __mmask16 mask) {
  return _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(mask, p));
}

// NR weight rows against R rows of x: y[r * ldy + i]. Bits is 4 or 8. Each (weight row, x row) pair sums a group
// in two int32 chains, one per byte plane of x, joined as 256 high + low.
template <int Bits, int NR, int R>
void tile_dot(const uint8_t* w, int64_t ldw, const c10::Half* ws, const c10::Half* wm, const QuantizedRows& xr,
              int64_t r0, int64_t nb, float* y, int64_t ldy) {
  const __m512i low4 = _mm512_set1_epi8(0x0F);
  __m512 acc[NR][R];
  for (int i = 0; i < NR; ++i)
    for (int r = 0; r < R; ++r) acc[i][r] = _mm512_setzero_ps();
  const int64_t K = nb * kBlock;
  constexpr int64_t kBlockBytes = Bits * kBlock / 8;
  for (int64_t b0 = 0; b0 < nb; b0 += kGroup) {
    const int64_t g = group_size(nb, b0);
    const __mmask16 lanes = static_cast<__mmask16>((1u << g) - 1);
    // this group's bytes of the next tile: the weights stream from memory once a call, and the hardware
    // prefetcher alone left the kernel at half the memory's read rate
    for (int i = 0; i < NR; ++i)
      for (int64_t line = 0; line < g * kBlockBytes; line += 64)
        _mm_prefetch(reinterpret_cast<const char*>(w + (NR + i) * ldw + b0 * kBlockBytes + line), _MM_HINT_T0);
    const int32_t* xh[R];
    const int32_t* xl[R];
    for (int r = 0; r < R; ++r) {
      xh[r] = reinterpret_cast<const int32_t*>(xr.high.data() + (r0 + r) * K + b0 * kBlock);
      xl[r] = reinterpret_cast<const int32_t*>(xr.low.data() + (r0 + r) * K + b0 * kBlock);
    }
    __m512i dot_high[NR][R], dot_low[NR][R];
    for (int i = 0; i < NR; ++i)
      for (int r = 0; r < R; ++r) dot_high[i][r] = dot_low[i][r] = _mm512_setzero_si512();
    // one weight word of every tile row against word x_word of every x row
    auto multiply = [&](const __m512i (&wv)[NR], int x_word) {
      for (int r = 0; r < R; ++r) {
        const __m512i h = _mm512_maskz_loadu_epi32(lanes, xh[r] + x_word * g);
        const __m512i l = _mm512_maskz_loadu_epi32(lanes, xl[r] + x_word * g);
        for (int i = 0; i < NR; ++i) {
          dot_high[i][r] = _mm512_dpbusd_epi32(dot_high[i][r], wv[i], h);
          dot_low[i][r] = _mm512_dpbusd_epi32(dot_low[i][r], wv[i], l);
        }
      }
    };
    if constexpr (Bits == 4) {
      for (int L = 0; L < 4; ++L) {
        __m512i lo[NR], hi[NR];
        for (int i = 0; i < NR; ++i) {
          const __m512i v =
              _mm512_maskz_loadu_epi32(lanes, reinterpret_cast<const int32_t*>(w + i * ldw + b0 * 16) + L * g);
          lo[i] = _mm512_and_si512(v, low4);
          hi[i] = _mm512_and_si512(_mm512_srli_epi16(v, 4), low4);
        }
        multiply(lo, L);
        multiply(hi, 4 + L);
      }
    } else {
      for (int L = 0; L < 8; ++L) {
        __m512i wv[NR];
        for (int i = 0; i < NR; ++i)
          wv[i] = _mm512_maskz_loadu_epi32(lanes, reinterpret_cast<const int32_t*>(w + i * ldw + b0 * 32) + L * g);
        multiply(wv, L);
      }
    }
    for (int i = 0; i < NR; ++i) {
      const __m512 wscale = load_halves(ws + i * nb + b0, lanes);
      for (int r = 0; r < R; ++r) {
        const int64_t row = r0 + r;
        __m512i d = _mm512_add_epi32(_mm512_slli_epi32(dot_high[i][r], 8), dot_low[i][r]);
        if constexpr (Bits == 8)
          d = _mm512_sub_epi32(d, _mm512_maskz_loadu_epi32(lanes, xr.offset.data() + row * nb + b0));
        const __m512 xs = _mm512_maskz_loadu_ps(lanes, xr.scale.data() + row * nb + b0);
        acc[i][r] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(d), _mm512_mul_ps(wscale, xs), acc[i][r]);
        if constexpr (Bits == 4)
          acc[i][r] = _mm512_fmadd_ps(load_halves(wm + i * nb + b0, lanes),
                                      _mm512_maskz_loadu_ps(lanes, xr.sum.data() + row * nb + b0), acc[i][r]);
      }
    }
  }
  for (int i = 0; i < NR; ++i)
    for (int r = 0; r < R; ++r) y[r * ldy + i] = _mm512_reduce_add_ps(acc[i][r]);
}

#else  // portable C++ over the same layout (no AVX512-VNNI): correct, not fast

template <int Bits, int NR, int R>
void tile_dot(const uint8_t* w, int64_t ldw, const c10::Half* ws, const c10::Half* wm, const QuantizedRows& xr,
              int64_t r0, int64_t nb, float* y, int64_t ldy) {
  const int64_t K = nb * kBlock;
  for (int i = 0; i < NR; ++i)
    for (int r = 0; r < R; ++r) {
      const int64_t row = r0 + r;
      const uint8_t* wi = w + i * ldw;
      float acc = 0.f;
      for (int64_t b0 = 0; b0 < nb; b0 += kGroup) {
        const int64_t g = group_size(nb, b0);
        const int8_t* xh = xr.high.data() + row * K + b0 * kBlock;
        const int8_t* xl = xr.low.data() + row * K + b0 * kBlock;
        for (int64_t j = 0; j < g; ++j) {
          int32_t dot = 0;
          for (int L = 0; L < 8; ++L)
            for (int p = 0; p < 4; ++p) {
              int32_t wv;
              if constexpr (Bits == 4) {
                const uint8_t byte = wi[b0 * 16 + ((L % 4) * g + j) * 4 + p];
                wv = L < 4 ? (byte & 0xF) : (byte >> 4);
              } else {
                wv = wi[b0 * 32 + (L * g + j) * 4 + p];
              }
              const int64_t at = (L * g + j) * 4 + p;
              dot += wv * (256 * xh[at] + xl[at]);
            }
          const int64_t b = b0 + j;
          if constexpr (Bits == 8) dot -= xr.offset[row * nb + b];
          acc += static_cast<float>(dot) * (static_cast<float>(ws[i * nb + b]) * xr.scale[row * nb + b]);
          if constexpr (Bits == 4) acc += static_cast<float>(wm[i * nb + b]) * xr.sum[row * nb + b];
        }
      }
      y[r * ldy + i] = acc;
    }
}

#endif

// Every row of x from r0 on against weight rows [n, n + NR): tiles of R rows of x, fewer at the end.
template <int Bits, int NR, int R>
void x_tiles(const uint8_t* w, int64_t ldw, const c10::Half* ws, const c10::Half* wm, const QuantizedRows& xr,
             int64_t r0, int64_t M, int64_t nb, float* y, int64_t ldy) {
  for (; r0 + R <= M; r0 += R) tile_dot<Bits, NR, R>(w, ldw, ws, wm, xr, r0, nb, y + r0 * ldy, ldy);
  if constexpr (R > 1) {
    if (r0 < M) x_tiles<Bits, NR, R - 1>(w, ldw, ws, wm, xr, r0, M, nb, y, ldy);
  }
}

template <int Bits>
at::Tensor dot_matmul(const at::Tensor& x, const at::Tensor& w, const at::Tensor& scale, const c10::Half* mins) {
  const int64_t M = x.size(0), K = x.size(1), N = w.size(0), nb = K / kBlock;
  const QuantizedRows xr = quantize_rows(x);
  at::Tensor y = at::empty({M, N}, x.options());
  const uint8_t* wp = w.data_ptr<uint8_t>();
  const c10::Half* sp = scale.data_ptr<c10::Half>();
  float* yp = y.data_ptr<float>();
  const int64_t ldw = K * Bits / 8;
  at::parallel_for(0, N, 16, [&](int64_t begin, int64_t end) {
    int64_t n = begin;
    for (; n + kWeightRows <= end; n += kWeightRows)
      x_tiles<Bits, kWeightRows, kXRows>(wp + n * ldw, ldw, sp + n * nb, mins ? mins + n * nb : nullptr, xr, 0, M,
                                         nb, yp + n, N);
    for (; n < end; ++n)
      x_tiles<Bits, 1, kXRows>(wp + n * ldw, ldw, sp + n * nb, mins ? mins + n * nb : nullptr, xr, 0, M, nb,
                               yp + n, N);
  });
  return y;
}

}  // namespace

at::Tensor q4_dot_matmul(const at::Tensor& x, const at::Tensor& nibbles, const at::Tensor& scale,
                         const at::Tensor& min) {
  check_inputs(x, nibbles, scale, 2);
  TORCH_CHECK(min.sizes() == scale.sizes() && min.scalar_type() == at::kHalf && min.is_contiguous(),
              "mins: like scales");
  return dot_matmul<4>(x, nibbles, scale, min.data_ptr<c10::Half>());
}

at::Tensor q8_dot_matmul(const at::Tensor& x, const at::Tensor& quants, const at::Tensor& scale) {
  check_inputs(x, quants, scale, 1);
  return dot_matmul<8>(x, quants, scale, nullptr);
}
