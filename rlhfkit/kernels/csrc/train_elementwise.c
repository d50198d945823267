/* The elementwise parts of a Llama-family decoder layer, forward and backward, each as one pass over memory:
 * SwiGLU (silu(g) * u, Shazeer 2020) and RMSNorm (w * x / sqrt(mean(x^2) + eps), Zhang and Sennrich 2019). fp32.
 *
 * Why (docs/benchmarks.md, session 12): eager torch runs silu(g) * u as two ops forward and three backward, and
 * transformers' RMSNorm as six forward and more backward, each reading and writing whole (tokens, width) tensors.
 * On the 2-core benchmark machine, swapping these in cut a DPO training step by ~11 ms of ~335 (paired timings).
 *
 * Threads split rows (or chunks of elements); the OpenMP runtime is torch's (rlhfkit/cpukernel.py checks), so
 * `threads` is torch.get_num_threads().
 *
 * Position-invariant: an element's result depends only on its inputs (SwiGLU) or its own row (RMSNorm), never on
 * where it sits in memory or how many rows there are. Hence explicit 8-lane vectors: every element goes through
 * the same vector code (a short tail through a padded copy), and a row's sum of squares always adds in the same
 * order. (The matmuls around them may still round a row differently in batches of different sizes.) The exception
 * is RMSNorm's weight gradient, a sum over rows: fixed for a given thread count and batch.
 */
#include <immintrin.h>
#include <omp.h>
#include <stdlib.h>
#include <math.h>
#include <string.h>

#include "vexp.h"

/* glibc's vector expf (libmvec, x86-64 AVX2 variant): the same function for every element. */
__m256 _ZGVdN8v_expf(__m256 x);

#define CHUNK 4096L /* elements per thread task; a multiple of 8 */

static inline __m256 sigmoid8(__m256 g) {
    const __m256 one = _mm256_set1_ps(1.0f);
    return _mm256_div_ps(one, _mm256_add_ps(one, _ZGVdN8v_expf(_mm256_sub_ps(_mm256_setzero_ps(), g))));
}

/* out = silu(g) * u over 8 elements, silu(g) = g * sigmoid(g) */
static inline void swiglu8(const float *g, const float *u, float *out) {
    const __m256 vg = _mm256_loadu_ps(g);
    _mm256_storeu_ps(out, _mm256_mul_ps(_mm256_mul_ps(vg, sigmoid8(vg)), _mm256_loadu_ps(u)));
}

/* d/du = dout * silu(g); d/dg = dout * u * s * (1 + g * (1 - s)) with s = sigmoid(g), over 8 elements */
static inline void swiglu_grad8(const float *g, const float *u, const float *dout, float *dg, float *du) {
    const __m256 one = _mm256_set1_ps(1.0f);
    const __m256 vg = _mm256_loadu_ps(g), vd = _mm256_loadu_ps(dout), s = sigmoid8(vg);
    _mm256_storeu_ps(du, _mm256_mul_ps(vd, _mm256_mul_ps(vg, s)));
    const __m256 ds = _mm256_mul_ps(s, _mm256_add_ps(one, _mm256_mul_ps(vg, _mm256_sub_ps(one, s))));
    _mm256_storeu_ps(dg, _mm256_mul_ps(_mm256_mul_ps(vd, _mm256_loadu_ps(u)), ds));
}

void rlhfkit_swiglu_forward(const float *g, const float *u, float *out, long n, int threads) {
#pragma omp parallel for num_threads(threads) schedule(static)
    for (long c = 0; c < n; c += CHUNK) {
        const long e = c + CHUNK < n ? c + CHUNK : n;
        long i = c;
        for (; i + 8 <= e; i += 8) swiglu8(g + i, u + i, out + i);
        if (i < e) { /* the last < 8 elements, through a padded copy */
            float bg[8] = {0}, bu[8] = {0}, bo[8];
            memcpy(bg, g + i, (e - i) * sizeof(float));
            memcpy(bu, u + i, (e - i) * sizeof(float));
            swiglu8(bg, bu, bo);
            memcpy(out + i, bo, (e - i) * sizeof(float));
        }
    }
}

void rlhfkit_swiglu_backward(const float *g, const float *u, const float *dout, float *dg, float *du, long n,
                             int threads) {
#pragma omp parallel for num_threads(threads) schedule(static)
    for (long c = 0; c < n; c += CHUNK) {
        const long e = c + CHUNK < n ? c + CHUNK : n;
        long i = c;
        for (; i + 8 <= e; i += 8) swiglu_grad8(g + i, u + i, dout + i, dg + i, du + i);
        if (i < e) {
            float bg[8] = {0}, bu[8] = {0}, bd[8] = {0}, bdg[8], bdu[8];
            memcpy(bg, g + i, (e - i) * sizeof(float));
            memcpy(bu, u + i, (e - i) * sizeof(float));
            memcpy(bd, dout + i, (e - i) * sizeof(float));
            swiglu_grad8(bg, bu, bd, bdg, bdu);
            memcpy(dg + i, bdg, (e - i) * sizeof(float));
            memcpy(du + i, bdu, (e - i) * sizeof(float));
        }
    }
}

/* sum of a[j] * b[j] over a row of H, always in the same order: 8 lanes, then the tail, then the lanes */
static inline float row_dot(const float *a, const float *b, long H) {
    __m256 acc = _mm256_setzero_ps();
    long j = 0;
    for (; j + 8 <= H; j += 8) acc = _mm256_add_ps(acc, _mm256_mul_ps(_mm256_loadu_ps(a + j), _mm256_loadu_ps(b + j)));
    float lanes[8];
    _mm256_storeu_ps(lanes, acc);
    float tail = 0.0f;
    for (; j < H; j++) tail += a[j] * b[j];
    return ((lanes[0] + lanes[1]) + (lanes[2] + lanes[3])) + ((lanes[4] + lanes[5]) + (lanes[6] + lanes[7])) + tail;
}

/* y = w * (x * r) per row, r = 1 / sqrt(mean(x^2) + eps), saved in rstd for the backward */
void rlhfkit_rmsnorm_forward(const float *x, const float *w, float *y, float *rstd, long rows, long H, float eps,
                             int threads) {
#pragma omp parallel for num_threads(threads) schedule(static)
    for (long r = 0; r < rows; r++) {
        const float *xr = x + r * H;
        float *yr = y + r * H;
        const float rs = 1.0f / __builtin_sqrtf(row_dot(xr, xr, H) / (float)H + eps);
        rstd[r] = rs;
        for (long j = 0; j < H; j++) yr[j] = w[j] * (xr[j] * rs);
    }
}

/* With xh = x * r: dw = sum over rows of dy * xh; dx = r * (dy * w - xh * mean(dy * w * xh)).
 * Returns 0, or -1 if the per-thread partial sums could not be allocated. */
int rlhfkit_rmsnorm_backward(const float *x, const float *w, const float *rstd, const float *dy, float *dx, float *dw,
                             long rows, long H, int threads) {
    float *part = calloc((size_t)threads * (size_t)H * 2, sizeof(float)); /* per thread: dw sums, then dy * w */
    if (part == NULL) return -1;
#pragma omp parallel num_threads(threads)
    {
        float *p = part + (long)omp_get_thread_num() * H * 2, *dyw = p + H;
#pragma omp for schedule(static)
        for (long r = 0; r < rows; r++) {
            const float *xr = x + r * H, *dyr = dy + r * H;
            float *dxr = dx + r * H;
            const float rs = rstd[r];
            for (long j = 0; j < H; j++) {
                p[j] += dyr[j] * (xr[j] * rs);
                dyw[j] = dyr[j] * w[j];
            }
            const float dot = row_dot(dyw, xr, H) * rs / (float)H;
            for (long j = 0; j < H; j++) dxr[j] = rs * (dyw[j] - xr[j] * rs * dot);
        }
    }
    for (long j = 0; j < H; j++) {
        float s = 0.0f;
        for (int t = 0; t < threads; t++) s += part[(long)t * H * 2 + j];
        dw[j] = s;
    }
    free(part);
    return 0;
}

/* An LM head's log-softmax over rows of logits z (rows x V), the two passes `logprobs.linear_logprobs` needs
 * (docs/benchmarks.md, session 13): torch's logsumexp writes z - max as a new (rows, V) tensor and the backward's
 * softmax - onehot took three more passes; these read z twice and write it once. */

/* logz[r] = m + log(sum_j exp(z[r][j] - m)), m the row's maximum (a row of -inf gives -inf) */
void rlhfkit_logsumexp_rows(const float *z, float *logz, long rows, long V, int threads) {
#pragma omp parallel for num_threads(threads) schedule(static)
    for (long r = 0; r < rows; r++) {
        const float *zr = z + r * V;
        __m256 vm = _mm256_set1_ps(-INFINITY);
        long j = 0;
        for (; j + 8 <= V; j += 8) vm = _mm256_max_ps(vm, _mm256_loadu_ps(zr + j));
        float lanes[8], m;
        _mm256_storeu_ps(lanes, vm);
        m = lanes[0];
        for (int i = 1; i < 8; i++) m = lanes[i] > m ? lanes[i] : m;
        for (; j < V; j++) m = zr[j] > m ? zr[j] : m;
        if (m == -INFINITY) {
            logz[r] = -INFINITY;
            continue;
        }
        const __m256 vmax = _mm256_set1_ps(m);
        __m256 acc = _mm256_setzero_ps();
        for (j = 0; j + 8 <= V; j += 8) acc = _mm256_add_ps(acc, rlhfkit_exp8(_mm256_sub_ps(_mm256_loadu_ps(zr + j), vmax)));
        float tail[8] = {0};
        for (long t = 0; j + t < V; t++) tail[t] = zr[j + t] - m;
        __m256 te = rlhfkit_exp8(_mm256_loadu_ps(tail));
        const __m256 live = _mm256_cmp_ps(_mm256_setr_ps(0, 1, 2, 3, 4, 5, 6, 7), _mm256_set1_ps((float)(V - j)), _CMP_LT_OQ);
        acc = _mm256_add_ps(acc, _mm256_and_ps(te, live));
        _mm256_storeu_ps(lanes, acc);
        const float s = ((lanes[0] + lanes[1]) + (lanes[2] + lanes[3])) + ((lanes[4] + lanes[5]) + (lanes[6] + lanes[7]));
        logz[r] = m + logf(s);
    }
}

/* In place, the gradient of sum_r g[r] * log_softmax(z[r])[labels[r]] with respect to z:
 * z[r][j] = -g[r] * exp(z[r][j] - logz[r]), plus g[r] at j = labels[r]. */
void rlhfkit_logsoftmax_grad_rows(float *z, const float *logz, const float *g, const long *labels, long rows, long V,
                                  int threads) {
#pragma omp parallel for num_threads(threads) schedule(static)
    for (long r = 0; r < rows; r++) {
        float *zr = z + r * V;
        const __m256 vl = _mm256_set1_ps(logz[r]), vg = _mm256_set1_ps(-g[r]);
        long j = 0;
        for (; j + 8 <= V; j += 8)
            _mm256_storeu_ps(zr + j, _mm256_mul_ps(vg, rlhfkit_exp8(_mm256_sub_ps(_mm256_loadu_ps(zr + j), vl))));
        if (j < V) {
            float tail[8] = {0};
            memcpy(tail, zr + j, (V - j) * sizeof(float));
            _mm256_storeu_ps(tail, _mm256_mul_ps(vg, rlhfkit_exp8(_mm256_sub_ps(_mm256_loadu_ps(tail), vl))));
            memcpy(zr + j, tail, (V - j) * sizeof(float));
        }
        zr[labels[r]] += g[r];
    }
}
