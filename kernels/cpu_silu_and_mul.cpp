// SwiGLU's activation for the packed CPU path's bfloat16 prompt MLP: out = silu(gate) * up for each row of the
// gate/up GEMM's bfloat16 output [gate | up], computed in float32 (silu(g) = g / (1 + e^-g), torch's formula) and
// rounded once to bfloat16, the down GEMM's input. It replaces a float32 round trip of torch ops (widen 2I columns,
// silu, multiply, narrow I) with one pass over bfloat16 bytes.

#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include "cpu_vector_exp.h"

#include <cmath>
#include <cstdint>
#include <cstring>

#if defined(__AVX512F__)
#include <immintrin.h>
#endif

namespace {

inline float widen(uint16_t h) {
  const uint32_t bits = static_cast<uint32_t>(h) << 16;
  float f;
  std::memcpy(&f, &bits, sizeof f);
  return f;
}

// Round to nearest even, NaN kept a (quiet) NaN: c10::BFloat16's rounding.
inline uint16_t narrow(float f) {
  if (std::isnan(f)) return 0x7FC0;
  uint32_t bits;
  std::memcpy(&bits, &f, sizeof bits);
  bits += 0x7FFF + ((bits >> 16) & 1);
  return static_cast<uint16_t>(bits >> 16);
}

#if defined(__AVX512F__)
inline __m512 widen16(const uint16_t* p, __mmask16 m) {
  const __m512i h = _mm512_cvtepu16_epi32(_mm256_maskz_loadu_epi16(m, p));
  return _mm512_castsi512_ps(_mm512_slli_epi32(h, 16));
}

inline __m256i narrow16(__m512 x) {
  const __m512i bits = _mm512_castps_si512(x);
  const __m512i odd = _mm512_and_si512(_mm512_srli_epi32(bits, 16), _mm512_set1_epi32(1));
  __m512i h = _mm512_srli_epi32(_mm512_add_epi32(bits, _mm512_add_epi32(odd, _mm512_set1_epi32(0x7FFF))), 16);
  h = _mm512_mask_mov_epi32(h, _mm512_cmp_ps_mask(x, x, _CMP_UNORD_Q), _mm512_set1_epi32(0x7FC0));
  return _mm512_cvtepi32_epi16(h);
}

#endif

void silu_and_mul_row(const uint16_t* gate, const uint16_t* up, uint16_t* out, int64_t width) {
  int64_t i = 0;
#if defined(__AVX512F__)
  const __m512 one = _mm512_set1_ps(1.0f);
  for (; i < width; i += 16) {
    const int64_t left = width - i;
    const __mmask16 m = left >= 16 ? static_cast<__mmask16>(0xFFFF) : static_cast<__mmask16>((1u << left) - 1);
    const __m512 g = widen16(gate + i, m);
    const __m512 silu = _mm512_div_ps(g, _mm512_add_ps(one, exp16(_mm512_sub_ps(_mm512_setzero_ps(), g))));
    _mm256_mask_storeu_epi16(out + i, m, narrow16(_mm512_mul_ps(silu, widen16(up + i, m))));
  }
#endif
  for (; i < width; ++i) {
    const float g = widen(gate[i]);
    out[i] = narrow(g / (1.0f + std::exp(-g)) * widen(up[i]));
  }
}

}  // namespace

at::Tensor silu_and_mul_bf16(const at::Tensor& gate_up) {
  TORCH_CHECK(gate_up.dim() == 2 && gate_up.scalar_type() == at::kBFloat16 && gate_up.size(1) % 2 == 0,
              "gate_up: bfloat16 [M, 2I]");
  const at::Tensor gu = gate_up.contiguous();
  const int64_t M = gu.size(0), width = gu.size(1) / 2;
  at::Tensor out = at::empty({M, width}, gu.options());
  const uint16_t* in = reinterpret_cast<const uint16_t*>(gu.data_ptr<at::BFloat16>());
  uint16_t* o = reinterpret_cast<uint16_t*>(out.data_ptr<at::BFloat16>());
  at::parallel_for(0, M, 16, [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) silu_and_mul_row(in + r * 2 * width, in + r * 2 * width + width,
                                                           o + r * width, width);
  });
  return out;
}
