/* y = x @ w^T + b (+ r) for the few rows of a decode step, fp32, on an x86-64 CPU with AVX2 and FMA. r is an
 * optional (rows, N) term added last: the residual stream, so a decoder layer's h + o_proj(a) is one call.
 * With `norm_eps` >= 0 each row of x is first RMS-normalised, x / sqrt(mean(x^2) + eps) (the RMSNorm's own weight
 * folded into w by the caller), so a layer's norm and the projection after it are one call too.
 *
 * Why this exists (docs/benchmarks.md, session 6): at 8 rows MKL's sgemm reads a decode step's weights at 5-8 GB/s
 * and reaches ~27-45 GFLOP/s, where this loop reaches ~90 GFLOP/s on 2 cores. A decode step's matmuls were
 * ~60% of its time.
 *
 * The loop: each weight row w[n] is read once per tile of up to 8 input rows and multiplied, 8 floats at a time,
 * into 8 accumulators (one per input row) that stay in registers; each accumulator is summed across its lanes at
 * the end. So w streams from memory once per tile, and x (at most 8 x K floats) stays in L1.
 *
 * Every output row depends on its own input row only, with a fixed order of additions: the result of a row does
 * not change with the number of rows in the call (batch-invariant). Threads split the output features n; the
 * OpenMP runtime is the one torch uses (rlhfkit/cpukernel.py checks), so `threads` is torch.get_num_threads().
 */
#include <immintrin.h>
#include <math.h>
#include <stdlib.h>
#include <omp.h>

/* The lane sums of 8 accumulators as one vector: out[b] = sum of the 8 lanes of a[b] (three rounds of pairwise adds
 * instead of eight separate horizontal sums). */
static inline __m256 lane_sums(const __m256 a[8]) {
    const __m256 h0 = _mm256_hadd_ps(a[0], a[1]), h1 = _mm256_hadd_ps(a[2], a[3]);
    const __m256 h2 = _mm256_hadd_ps(a[4], a[5]), h3 = _mm256_hadd_ps(a[6], a[7]);
    const __m256 q0 = _mm256_hadd_ps(h0, h1), q1 = _mm256_hadd_ps(h2, h3);
    /* q0 = [s0 s1 s2 s3 | s0' s1' s2' s3'] (low and high 128-bit halves of a[0..3]), likewise q1 for a[4..7] */
    return _mm256_add_ps(_mm256_permute2f128_ps(q0, q1, 0x20), _mm256_permute2f128_ps(q0, q1, 0x31));
}

/* Rows [0, rows) of x (rows <= 8) times weight rows [n0, n1). Slots past `rows` re-read row 0 and are not stored,
 * so the inner loop has no branches. */
static void tile(const float *x, long rows, const float *w, const float *bias, const float *add, float *y,
                 long n0, long n1, long N, long K, const float *scale) {
    const float *xr[8];
    for (int b = 0; b < 8; b++) xr[b] = x + (b < rows ? b : 0) * K;
    const long K8 = K & ~7L;
    for (long n = n0; n < n1; n++) {
        const float *wn = w + n * K;
        __m256 acc[8];
        for (int b = 0; b < 8; b++) acc[b] = _mm256_setzero_ps();
        for (long k = 0; k < K8; k += 8) {
            const __m256 wv = _mm256_loadu_ps(wn + k);
            for (int b = 0; b < 8; b++) acc[b] = _mm256_fmadd_ps(wv, _mm256_loadu_ps(xr[b] + k), acc[b]);
        }
        float sums[8];
        _mm256_storeu_ps(sums, lane_sums(acc));
        for (long b = 0; b < rows; b++) {
            float s = sums[b];
            for (long k = K8; k < K; k++) s += wn[k] * xr[b][k];
            if (scale) s *= scale[b];  /* RMSNorm: (x * c) . w = c * (x . w) */
            if (bias) s += bias[n];
            if (add) s += add[b * N + n];
            y[b * N + n] = s;
        }
    }
}

/* 1 / sqrt(mean(x^2) + eps): RMSNorm's scale of one row of x. */
static float rms_scale(const float *x, long K, float eps) {
    const long K8 = K & ~7L;
    __m256 sq = _mm256_setzero_ps();
    for (long k = 0; k < K8; k += 8) {
        const __m256 v = _mm256_loadu_ps(x + k);
        sq = _mm256_fmadd_ps(v, v, sq);
    }
    float lanes[8];
    _mm256_storeu_ps(lanes, sq);
    float sum = lanes[0] + lanes[1] + lanes[2] + lanes[3] + lanes[4] + lanes[5] + lanes[6] + lanes[7];
    for (long k = K8; k < K; k++) sum += x[k] * x[k];
    return 1.0f / sqrtf(sum / (float)K + eps);
}

/* x (rows, K), w (N, K), bias (N) or NULL, add (rows, N) or NULL, y (rows, N); all contiguous. norm_eps < 0: no
 * normalisation. */
void rlhfkit_linear_few_rows(const float *x, long rows, const float *w, const float *bias, const float *add,
                             float *y, long N, long K, float norm_eps, int threads) {
    float small[64], *scale = 0;
    if (norm_eps >= 0) {
        scale = rows <= 64 ? small : malloc(rows * sizeof(float));
        if (!scale) return;
        for (long r = 0; r < rows; r++) scale[r] = rms_scale(x + r * K, K, norm_eps);
    }
    #pragma omp parallel num_threads(threads)
    {
        const long T = omp_get_num_threads(), t = omp_get_thread_num();
        const long chunk = (N + T - 1) / T, n0 = t * chunk, n1 = n0 + chunk < N ? n0 + chunk : N;
        /* Blocks of ~16 KiB of weights: read from memory by the first tile, from L1 by the others. */
        const long NB = K < 4096 ? 4096 / K : 1;
        for (long nb = n0; nb < n1; nb += NB) {
            const long ne = nb + NB < n1 ? nb + NB : n1;
            for (long r = 0; r < rows; r += 8)
                tile(x + r * K, rows - r < 8 ? rows - r : 8, w, bias, add ? add + r * N : 0, y + r * N, nb, ne,
                     N, K, scale ? scale + r : 0);
        }
    }
    if (scale && scale != small) free(scale);
}
