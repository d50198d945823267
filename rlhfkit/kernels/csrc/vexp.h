/* exp over 8 fp32 lanes, inlined (the block attention's softmax, csrc/block_attention.c).
 *
 * Cephes' expf: x = n ln2 + r with |r| <= ln2 / 2 (ln2 split in two so n * ln2 is exact), exp(r) by its degree-7
 * polynomial, times 2^n built in the exponent bits; within 2 ulp of expf. Inputs below -87 give exactly 0 (so a
 * masked score, -inf, gets probability 0), inputs above 88 are taken as 88 (finite), NaN stays NaN. Every lane goes
 * through the same instructions, so an element's result does not depend on where it sits.
 *
 * Why not glibc's libmvec expf (which the SwiGLU loops use): as a call per 8 scores it made the block attention's
 * softmax as slow as its score matmuls; inlined, the softmax takes less than half as long (docs/benchmarks.md,
 * session 13). For SwiGLU, whose passes are bound by memory, swapping it in changed nothing measurable. */
#ifndef RLHFKIT_VEXP_H
#define RLHFKIT_VEXP_H
#include <immintrin.h>

static inline __m256 rlhfkit_exp8(__m256 x) {
    const __m256 lo = _mm256_set1_ps(-87.0f);
    const __m256 dead = _mm256_cmp_ps(x, lo, _CMP_LT_OQ); /* false for NaN */
    x = _mm256_min_ps(_mm256_set1_ps(88.0f), _mm256_max_ps(lo, x)); /* max/min return x when x is NaN */
    const __m256 n = _mm256_round_ps(_mm256_mul_ps(x, _mm256_set1_ps(1.44269504088896341f)),
                                     _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m256 r = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693359375f), x);
    r = _mm256_fnmadd_ps(n, _mm256_set1_ps(-2.12194440e-4f), r);
    __m256 y = _mm256_set1_ps(1.9875691500e-4f);
    y = _mm256_fmadd_ps(y, r, _mm256_set1_ps(1.3981999507e-3f));
    y = _mm256_fmadd_ps(y, r, _mm256_set1_ps(8.3334519073e-3f));
    y = _mm256_fmadd_ps(y, r, _mm256_set1_ps(4.1665795894e-2f));
    y = _mm256_fmadd_ps(y, r, _mm256_set1_ps(1.6666665459e-1f));
    y = _mm256_fmadd_ps(y, r, _mm256_set1_ps(5.0000001201e-1f));
    y = _mm256_fmadd_ps(y, _mm256_mul_ps(r, r), _mm256_add_ps(r, _mm256_set1_ps(1.0f)));
    /* 2^n: n + 127 in the exponent field (n is in [-126, 127] after the clamps) */
    const __m256i e = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
    return _mm256_andnot_ps(dead, _mm256_mul_ps(y, _mm256_castsi256_ps(e)));
}
#endif
