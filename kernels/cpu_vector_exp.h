// e^x over 16 float32 lanes, shared by the CPU kernels that need it (cpu_decode_attention.cpp's softmax,
// cpu_silu_and_mul.cpp's silu). torch's extension cache hashes the .cpp sources only: a change here comes with a
// change to the .cpp files that include it.

#pragma once

#if defined(__AVX512F__)
#include <immintrin.h>

// 2^n * e^r, r = x - n ln2 in [-ln2/2, ln2/2], e^r by its degree-6 Taylor polynomial (relative error under 2e-7).
// Below -87 the result flushes to about 0 as float32's e^x does; above ln(FLT_MAX) it overflows to inf.
inline __m512 exp16(__m512 x) {
  x = _mm512_min_ps(_mm512_max_ps(x, _mm512_set1_ps(-87.0f)), _mm512_set1_ps(89.0f));
  const __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(1.44269504f)), _MM_FROUND_TO_NEAREST_INT);
  __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693145752f), x);  // ln2 in two parts: exact n * hi
  r = _mm512_fnmadd_ps(n, _mm512_set1_ps(1.42860677e-6f), r);
  __m512 p = _mm512_set1_ps(1.0f / 720);
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 120));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 24));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 6));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(0.5f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f));
  return _mm512_scalef_ps(p, n);
}
#endif
