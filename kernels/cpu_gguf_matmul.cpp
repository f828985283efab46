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
// The dot layout (kernels/cpu_gguf_matmul.py, _dot_layout) interleaves 16 weight rows, one per 32-bit lane of a
// 512-bit register, so a lane's sums are one output's and a tile of 16 outputs ends in one store, with no
// horizontal sums and no partly filled registers whatever K is. A tile (rows 16t .. 16t + 15) is contiguous:
//   quants, block by block: word L of block b for the 16 rows side by side (64 bytes), L = 0..3 (4-bit: GGUF bytes
//     4L..4L+3 of the block, low nibbles its values 4L..4L+3, high nibbles 16+4L..16+4L+3) or 0..7 (8-bit:
//     values 4L..4L+3, each + 128);
//   then the 16 rows' float16 scales of each block (32 bytes a block), then (4-bit) their mins likewise.
// N is padded to a multiple of 16 with zero rows. x's 16-bit values stay in GGUF's value order, their high and
// low bytes in two planes; word L of a block meets the weights' word L broadcast to every lane.
// Threads split the tiles (torch's intra-op pool); up to 4 rows of x go through a tile together.

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
constexpr int64_t kLanes = 16;      // weight rows per tile: one per 32-bit lane of a 512-bit register
constexpr int32_t kLevels = 32512;  // 127 * 256: the high byte of any |xi| <= kLevels stays within [-127, 127]
constexpr int kMaxXRows = 4;        // rows of x through a tile together

// Rows of x quantized per block: the high and low bytes of the 16-bit values, and per block its scale, the float
// sum of its values and 128 times the sum of its 16-bit values (Q8_0's offset correction).
struct QuantizedRows {
  int64_t nb;
  std::vector<int8_t> high, low;  // [M, nb * 32] each
  std::vector<float> scale;       // [M, nb]
  std::vector<float> sum;         // [M, nb]
  std::vector<int32_t> offset;    // [M, nb]
};

void quantize_row(const float* x, int64_t nb, int8_t* high, int8_t* low, float* scale, float* sum, int32_t* offset) {
  for (int64_t b = 0; b < nb; ++b) {
    const float* xb = x + b * kBlock;
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
    int32_t isum = 0;
    for (int k = 0; k < kBlock; ++k) {
      const int32_t v = std::clamp(xi[k], -kLevels, kLevels);
      const int32_t h = (v + 128) >> 8;  // v = 256 h + l with l in [-128, 127]
      high[b * kBlock + k] = static_cast<int8_t>(h);
      low[b * kBlock + k] = static_cast<int8_t>(v - 256 * h);
      isum += v;
    }
    scale[b] = amax / kLevels;
    sum[b] = s;
    offset[b] = 128 * isum;
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

// Bytes of one tile: its quants, then its scales, then (4-bit) its mins.
constexpr int64_t quant_bytes(int bits) { return bits * kBlock * kLanes / 8; }  // a block of the tile's 16 rows
inline int64_t tile_bytes(int bits, int64_t nb) { return nb * (quant_bytes(bits) + (bits == 4 ? 64 : 32)); }

void check_inputs(const at::Tensor& x, const at::Tensor& w, const at::Tensor& scale, int bits) {
  TORCH_CHECK(x.dim() == 2 && x.scalar_type() == at::kFloat && x.is_contiguous(), "x: contiguous float32 [M, K]");
  TORCH_CHECK(x.size(1) % kBlock == 0, "K must be a multiple of 32");
  TORCH_CHECK(scale.dim() == 2 && scale.size(1) == x.size(1) / kBlock, "scales: [N, K / 32]");
  const int64_t tiles = (scale.size(0) + kLanes - 1) / kLanes;
  TORCH_CHECK(w.dim() == 2 && w.scalar_type() == at::kByte && w.is_contiguous() && w.size(0) == tiles &&
              w.size(1) == tile_bytes(bits, x.size(1) / kBlock), "weights: uint8 [ceil(N / 16), tile bytes] in the "
              "dot layout");
}

#if defined(PEGBOARD_VNNI)

inline __m512i word(const int8_t* plane, int64_t at) {
  int32_t v;
  std::memcpy(&v, plane + at, 4);
  return _mm512_set1_epi32(v);
}

// One tile's 16 outputs for R rows of x from r0: y[r * ldy + lane]. Prefetches the next tile's bytes as it goes
// (the weights stream from memory once a call; the hardware prefetcher alone left the kernel at half the memory's
// read rate).
template <int Bits, int R>
void tile_dot(const uint8_t* tile, const QuantizedRows& xr, int64_t r0, int64_t nb, bool prefetch, float* y,
              int64_t ldy, int64_t lanes) {
  constexpr int64_t kQuant = quant_bytes(Bits);
  const c10::Half* scales = reinterpret_cast<const c10::Half*>(tile + nb * kQuant);
  const c10::Half* mins = scales + nb * kLanes;
  const int64_t K = nb * kBlock, total = tile_bytes(Bits, nb), per_block = (total + nb - 1) / nb;
  const __m512i low4 = _mm512_set1_epi8(0x0F);
  const int8_t* xh[R];
  const int8_t* xl[R];
  __m512 acc[R];
  for (int r = 0; r < R; ++r) {
    xh[r] = xr.high.data() + (r0 + r) * K;
    xl[r] = xr.low.data() + (r0 + r) * K;
    acc[r] = _mm512_setzero_ps();
  }
  for (int64_t b = 0; b < nb; ++b) {
    if (prefetch)  // into L2 (T1): the LM head measured 1.0 against 1.2-2.1 ms with T0, the layers within the noise
      for (int64_t line = b * per_block; line < std::min(total, (b + 1) * per_block); line += 64)
        _mm_prefetch(reinterpret_cast<const char*>(tile + total + line), _MM_HINT_T1);
    const uint8_t* q = tile + b * kQuant;
    __m512i dot_high[R], dot_low[R];
    for (int r = 0; r < R; ++r) dot_high[r] = dot_low[r] = _mm512_setzero_si512();
    auto multiply = [&](__m512i wv, int x_word) {
      for (int r = 0; r < R; ++r) {
        dot_high[r] = _mm512_dpbusd_epi32(dot_high[r], wv, word(xh[r], b * kBlock + 4 * x_word));
        dot_low[r] = _mm512_dpbusd_epi32(dot_low[r], wv, word(xl[r], b * kBlock + 4 * x_word));
      }
    };
    if constexpr (Bits == 4) {
      for (int L = 0; L < 4; ++L) {
        const __m512i v = _mm512_loadu_si512(q + 64 * L);
        multiply(_mm512_and_si512(v, low4), L);
        multiply(_mm512_and_si512(_mm512_srli_epi16(v, 4), low4), 4 + L);
      }
    } else {
      for (int L = 0; L < 8; ++L) multiply(_mm512_loadu_si512(q + 64 * L), L);
    }
    const __m512 wscale = _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(scales + b * kLanes)));
    __m512 wmin = _mm512_setzero_ps();
    if constexpr (Bits == 4)
      wmin = _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(mins + b * kLanes)));
    for (int r = 0; r < R; ++r) {
      const int64_t row = r0 + r;
      __m512i d = _mm512_add_epi32(_mm512_slli_epi32(dot_high[r], 8), dot_low[r]);
      if constexpr (Bits == 8) d = _mm512_sub_epi32(d, _mm512_set1_epi32(xr.offset[row * nb + b]));
      acc[r] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(d), _mm512_mul_ps(wscale, _mm512_set1_ps(xr.scale[row * nb + b])),
                               acc[r]);
      if constexpr (Bits == 4) acc[r] = _mm512_fmadd_ps(wmin, _mm512_set1_ps(xr.sum[row * nb + b]), acc[r]);
    }
  }
  const __mmask16 store = static_cast<__mmask16>((1u << lanes) - 1);
  for (int r = 0; r < R; ++r) _mm512_mask_storeu_ps(y + r * ldy, store, acc[r]);
}

#else  // portable C++ over the same layout (no AVX512-VNNI): correct, not fast

template <int Bits, int R>
void tile_dot(const uint8_t* tile, const QuantizedRows& xr, int64_t r0, int64_t nb, bool, float* y, int64_t ldy,
              int64_t lanes) {
  constexpr int64_t kQuant = quant_bytes(Bits);
  const c10::Half* scales = reinterpret_cast<const c10::Half*>(tile + nb * kQuant);
  const c10::Half* mins = scales + nb * kLanes;
  const int64_t K = nb * kBlock;
  for (int r = 0; r < R; ++r) {
    const int64_t row = r0 + r;
    const int8_t* xh = xr.high.data() + row * K;
    const int8_t* xl = xr.low.data() + row * K;
    for (int64_t i = 0; i < lanes; ++i) {
      float acc = 0.f;
      for (int64_t b = 0; b < nb; ++b) {
        const uint8_t* q = tile + b * kQuant;
        int32_t dot = 0;
        for (int k = 0; k < kBlock; ++k) {
          int32_t wv;
          if constexpr (Bits == 4) {
            const int byte = k % 16;
            const uint8_t packed = q[(byte / 4) * 64 + i * 4 + byte % 4];
            wv = k < 16 ? (packed & 0xF) : (packed >> 4);
          } else {
            wv = q[(k / 4) * 64 + i * 4 + k % 4];
          }
          dot += wv * (256 * xh[b * kBlock + k] + xl[b * kBlock + k]);
        }
        if constexpr (Bits == 8) dot -= xr.offset[row * nb + b];
        acc += static_cast<float>(dot) * (static_cast<float>(scales[b * kLanes + i]) * xr.scale[row * nb + b]);
        if constexpr (Bits == 4) acc += static_cast<float>(mins[b * kLanes + i]) * xr.sum[row * nb + b];
      }
      y[r * ldy + i] = acc;
    }
  }
}

#endif

template <int Bits>
void rows_through_tile(const uint8_t* tile, const QuantizedRows& xr, int64_t M, int64_t nb, float* y, int64_t N,
                       int64_t lanes) {
  int64_t r0 = 0;
  for (; r0 + kMaxXRows <= M; r0 += kMaxXRows)
    tile_dot<Bits, kMaxXRows>(tile, xr, r0, nb, r0 == 0, y + r0 * N, N, lanes);
  const bool first = r0 == 0;
  switch (M - r0) {
    case 3: tile_dot<Bits, 3>(tile, xr, r0, nb, first, y + r0 * N, N, lanes); break;
    case 2: tile_dot<Bits, 2>(tile, xr, r0, nb, first, y + r0 * N, N, lanes); break;
    case 1: tile_dot<Bits, 1>(tile, xr, r0, nb, first, y + r0 * N, N, lanes); break;
    default: break;
  }
}

template <int Bits>
at::Tensor dot_matmul(const at::Tensor& x, const at::Tensor& w, int64_t N) {
  const int64_t M = x.size(0), K = x.size(1), nb = K / kBlock;
  const QuantizedRows xr = quantize_rows(x);
  at::Tensor y = at::empty({M, N}, x.options());
  const uint8_t* wp = w.data_ptr<uint8_t>();
  float* yp = y.data_ptr<float>();
  const int64_t stride = tile_bytes(Bits, nb);
  at::parallel_for(0, w.size(0), 1, [&](int64_t begin, int64_t end) {
    for (int64_t t = begin; t < end; ++t)
      rows_through_tile<Bits>(wp + t * stride, xr, M, nb, yp + t * kLanes, N, std::min(kLanes, N - t * kLanes));
  });
  return y;
}

}  // namespace

at::Tensor gguf_dot_matmul(const at::Tensor& x, const at::Tensor& tiles, const at::Tensor& scale) {
  // 4- or 8-bit by the tiles' width, which differs between the two for every K
  const bool four_bit = tiles.dim() == 2 && x.dim() == 2 && tiles.size(1) == tile_bytes(4, x.size(1) / kBlock);
  check_inputs(x, tiles, scale, four_bit ? 4 : 8);
  return four_bit ? dot_matmul<4>(x, tiles, scale.size(0)) : dot_matmul<8>(x, tiles, scale.size(0));
}
