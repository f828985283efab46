// y[M, N] = x[M, K] @ W[N, K]^T for W kept in GGUF blocks of 32 values along K, dequantized in registers, x in
// float32: the kernel for batches of more than a few rows (cpu_gguf_matmul.cpp's integer products take fewer).
//
// 4-bit layout (Q4_0, Q4_1): nibbles uint8 [N, K/2] (per block of 32: byte j holds value j in its low
// nibble and value j+16 in its high one, as GGUF stores them), scale and min fp16 [N, K/32]:
// w = q * scale + min (Q4_0 is min = -8 * scale, which gives its (q - 8) * scale exactly).
// 8-bit layout (Q8_0): int8 [N, K], scale fp16 [N, K/32]: w = q * scale.
// Each weight is dequantized with one fused multiply-add, bit-equal to the float32 dequantizer's
// q * scale + min (q * scale is exact in float32); only the order of the dot products' sums differs.
// Threads split the output features N (torch's intra-op pool); each tile is 4 weight rows by 2 rows of x.

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <c10/util/Half.h>

#include <cstdint>
#include <vector>

#if defined(__AVX512F__)
#include <immintrin.h>
#endif

namespace {

constexpr int64_t kBlock = 32;

void check_inputs(const at::Tensor& x, const at::Tensor& q, const at::Tensor& scale, int64_t k_div) {
  TORCH_CHECK(x.dim() == 2 && x.scalar_type() == at::kFloat && x.is_contiguous(), "x: contiguous float32 [M, K]");
  TORCH_CHECK(x.size(1) % kBlock == 0, "K must be a multiple of 32");
  TORCH_CHECK(q.dim() == 2 && q.is_contiguous() && q.size(1) * k_div == x.size(1), "weights: [N, K / ", k_div, "]");
  TORCH_CHECK(scale.scalar_type() == at::kHalf && scale.is_contiguous() && scale.size(0) == q.size(0) &&
              scale.size(1) == x.size(1) / kBlock, "scales: float16 [N, K / 32]");
}

// float32 copies of a thread's fp16 scales (and mins), so blocks broadcast them from L1. Every fp16 value is
// exact in float32, so the vector conversion (16 at a time) gives the scalar one's values.
inline void row_floats(const c10::Half* src, float* dst, int64_t n) {
  int64_t i = 0;
#if defined(__AVX512F__)
  for (; i + 16 <= n; i += 16)
    _mm512_storeu_ps(dst + i, _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(src + i))));
#endif
  for (; i < n; ++i) dst[i] = static_cast<float>(src[i]);
}

#if defined(__AVX512F__)

const __m512 kNibbleValues = _mm512_setr_ps(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);

// A 4-bit block's 16 possible weights q * scale + min (one multiply-add), looked up by nibble: vpermps
// reads only the low 4 bits of each index, so the low nibble needs no mask.
struct Q4Block {
  const uint8_t* q; int64_t ldq; const float* s; const float* m; int64_t nb;
  void operator()(int i, int64_t b, __m512& lo, __m512& hi) const {
    __m512 table = _mm512_fmadd_ps(kNibbleValues, _mm512_set1_ps(s[i * nb + b]), _mm512_set1_ps(m[i * nb + b]));
    __m512i idx = _mm512_cvtepu8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(q + i * ldq + b * 16)));
    lo = _mm512_permutexvar_ps(idx, table);
    hi = _mm512_permutexvar_ps(_mm512_srli_epi32(idx, 4), table);
  }
};

struct Q8Block {
  const int8_t* q; int64_t ldq; const float* s; int64_t nb;
  void operator()(int i, int64_t b, __m512& lo, __m512& hi) const {
    const int8_t* qb = q + i * ldq + b * kBlock;
    __m512 sc = _mm512_set1_ps(s[i * nb + b]);
    lo = _mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i*)qb))), sc);
    hi = _mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i*)(qb + 16)))), sc);
  }
};

// NR weight rows x R rows of x per pass. With fewer than 8 outputs in the tile each keeps two accumulators
// (the low and the high half of a block), so at least 8 chains of multiply-adds run side by side.
template <int NR, int R, typename Block>
void tile(const float* x, int64_t ldx, const Block& block, float* y, int64_t ldy) {
  constexpr int A = NR * R >= 8 ? 1 : 2;
  __m512 acc[NR][R][A];
  for (int i = 0; i < NR; ++i)
    for (int r = 0; r < R; ++r)
      for (int a = 0; a < A; ++a) acc[i][r][a] = _mm512_setzero_ps();
  for (int64_t b = 0; b < block.nb; ++b) {
    __m512 lo[NR], hi[NR];
    for (int i = 0; i < NR; ++i) block(i, b, lo[i], hi[i]);
    for (int r = 0; r < R; ++r) {
      __m512 xl = _mm512_loadu_ps(x + r * ldx + b * kBlock), xh = _mm512_loadu_ps(x + r * ldx + b * kBlock + 16);
      for (int i = 0; i < NR; ++i) {
        acc[i][r][0] = _mm512_fmadd_ps(lo[i], xl, acc[i][r][0]);
        acc[i][r][A - 1] = _mm512_fmadd_ps(hi[i], xh, acc[i][r][A - 1]);
      }
    }
  }
  for (int i = 0; i < NR; ++i)
    for (int r = 0; r < R; ++r) {
      __m512 sum = acc[i][r][0];
      if constexpr (A == 2) sum = _mm512_add_ps(sum, acc[i][r][1]);
      y[r * ldy + i] = _mm512_reduce_add_ps(sum);
    }
}

#else  // portable C++: the compiler vectorizes what it can

struct Q4Block {
  const uint8_t* q; int64_t ldq; const float* s; const float* m; int64_t nb;
  void operator()(int i, int64_t b, float* w) const {
    const uint8_t* qb = q + i * ldq + b * 16;
    const float sc = s[i * nb + b], mn = m[i * nb + b];
    for (int j = 0; j < 16; ++j) {
      w[j] = float(qb[j] & 0xF) * sc + mn;
      w[j + 16] = float(qb[j] >> 4) * sc + mn;
    }
  }
};

struct Q8Block {
  const int8_t* q; int64_t ldq; const float* s; int64_t nb;
  void operator()(int i, int64_t b, float* w) const {
    for (int j = 0; j < kBlock; ++j) w[j] = float(q[i * ldq + b * kBlock + j]) * s[i * nb + b];
  }
};

template <int NR, int R, typename Block>
void tile(const float* x, int64_t ldx, const Block& block, float* y, int64_t ldy) {
  for (int i = 0; i < NR; ++i) {
    float acc[R] = {};
    for (int64_t b = 0; b < block.nb; ++b) {
      float w[kBlock];
      block(i, b, w);
      for (int r = 0; r < R; ++r)
        for (int j = 0; j < kBlock; ++j) acc[r] += w[j] * x[r * ldx + b * kBlock + j];
    }
    for (int r = 0; r < R; ++r) y[r * ldy + i] = acc[r];
  }
}

#endif

#ifndef PEGBOARD_X_ROWS
#define PEGBOARD_X_ROWS 4
#endif
constexpr int64_t kRows = 4;  // weight rows per tile (a thread's range is a multiple of it but for the last)
constexpr int kXRows = PEGBOARD_X_ROWS;  // rows of x per tile

template <int NR, int R, typename Tile>
void x_rows(int64_t M, int64_t n, const Tile& tile) {
  int64_t r = 0;
  for (; r + R <= M; r += R) tile(std::integral_constant<int, NR>{}, std::integral_constant<int, R>{}, n, r);
  if constexpr (R > 1) {
    if (r < M) x_rows<NR, R - 1>(M - r, n, [&](auto nr, auto rr, int64_t n_, int64_t r_) { tile(nr, rr, n_, r + r_); });
  }
}

// Calls tile(NR, R, n, r) over rows [begin, end) of the weights and all M rows of x: tiles of 4 weight rows by
// kXRows rows of x (fewer at the edge of x), single weight rows at the end of the range.
template <typename Tile>
void for_tiles(int64_t M, int64_t begin, int64_t end, Tile&& tile) {
  int64_t n = begin;
  for (; n + kRows <= end; n += kRows) x_rows<kRows, kXRows>(M, n, tile);
  for (; n < end; ++n) x_rows<1, kXRows>(M, n, tile);
}

}  // namespace

at::Tensor q4_float_matmul(const at::Tensor& x, const at::Tensor& nibbles, const at::Tensor& scale, const at::Tensor& min) {
  check_inputs(x, nibbles, scale, 2);
  TORCH_CHECK(nibbles.scalar_type() == at::kByte, "nibbles: uint8");
  TORCH_CHECK(min.sizes() == scale.sizes() && min.scalar_type() == at::kHalf && min.is_contiguous(), "mins: like scales");
  const int64_t M = x.size(0), K = x.size(1), N = nibbles.size(0), nb = K / kBlock;
  at::Tensor y = at::empty({M, N}, x.options());
  const float* xp = x.data_ptr<float>();
  const uint8_t* qp = nibbles.data_ptr<uint8_t>();
  const c10::Half* sp = scale.data_ptr<c10::Half>();
  const c10::Half* mp = min.data_ptr<c10::Half>();
  float* yp = y.data_ptr<float>();
  at::parallel_for(0, N, 64, [&](int64_t begin, int64_t end) {
    std::vector<float> s((end - begin) * nb), m((end - begin) * nb);
    row_floats(sp + begin * nb, s.data(), (end - begin) * nb);
    row_floats(mp + begin * nb, m.data(), (end - begin) * nb);
    for_tiles(M, begin, end, [&](auto nr, auto rr, int64_t n, int64_t r) {
      const int64_t i = n - begin;
      Q4Block block{qp + n * (K / 2), K / 2, s.data() + i * nb, m.data() + i * nb, nb};
      tile<decltype(nr)::value, decltype(rr)::value>(xp + r * K, K, block, yp + r * N + n, N);
    });
  });
  return y;
}

at::Tensor q8_float_matmul(const at::Tensor& x, const at::Tensor& quants, const at::Tensor& scale) {
  check_inputs(x, quants, scale, 1);
  TORCH_CHECK(quants.scalar_type() == at::kChar, "quants: int8");
  const int64_t M = x.size(0), K = x.size(1), N = quants.size(0), nb = K / kBlock;
  at::Tensor y = at::empty({M, N}, x.options());
  const float* xp = x.data_ptr<float>();
  const int8_t* qp = quants.data_ptr<int8_t>();
  const c10::Half* sp = scale.data_ptr<c10::Half>();
  float* yp = y.data_ptr<float>();
  at::parallel_for(0, N, 64, [&](int64_t begin, int64_t end) {
    std::vector<float> s((end - begin) * nb);
    row_floats(sp + begin * nb, s.data(), (end - begin) * nb);
    for_tiles(M, begin, end, [&](auto nr, auto rr, int64_t n, int64_t r) {
      Q8Block block{qp + n * K, K, s.data() + (n - begin) * nb, nb};
      tile<decltype(nr)::value, decltype(rr)::value>(xp + r * K, K, block, yp + r * N + n, N);
    });
  });
  return y;
}
