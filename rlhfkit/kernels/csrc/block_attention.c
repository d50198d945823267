/* Attention under a block mask, forward and backward, computing only the 16 x 16 tiles of the score matrix that the
 * mask lets through. fp32, head dim a multiple of 16.
 *
 * Why (docs/benchmarks.md, session 13): a padding-free layout row of DPO or KTO holds blocks
 * [prompt | chosen | rejected], where a completion attends to the prompt and to itself only. The mask discards ~64%
 * of the scores, but SDPA under a mask computes all of them, and splitting the row into several dense SDPA calls
 * costs what it saves (sessions 11 and 12). Here one call covers every row and head of a layer, and a tile with no
 * allowed entry is never computed, in the forward or in the backward.
 *
 * The maths is softmax attention (Vaswani et al. 2017) with the usual backward (as in FlashAttention, Dao et al.
 * 2022, eqs. in its appendix B): with S = scale * Q K^T masked to -inf, P = softmax(S) row-wise, O = P V:
 *   dV = P^T dO,  dP = dO V^T,  D_i = sum_c dO_ic O_ic,  dS = P * (dP - D),  dQ = scale * dS K,  dK = scale * dS^T Q.
 * Unlike FlashAttention the forward keeps P (only its active tiles are written) for the backward instead of
 * recomputing it: at these sizes the memory is small (heads x n x n floats per row; above 64 MiB per layer call
 * rlhfkit uses SDPA instead, fusedops.P_LIMIT_BYTES) and the time is not.
 *
 * Layouts. q, k, v: element (token t, head h, channel c) at t * s_t + h * s_h + c (the (1, heads, T, d) tensors
 * transformers passes, transposed or not). Rows: row r is tokens [start_r, start_r + n_r) of the sequence; its mask
 * is n_r x n_r bytes, entry (i, j) at mask_r[i * mstride_r + j], nonzero = query i may attend key j. Outputs
 * o, dq, dk, dv are (T, heads, d) contiguous. GQA: query head h uses key/value head h / groups.
 * P: for row r and query head h, an n_r x npad_r block (npad_r = n_r rounded up to 16) at
 *   P_off(r) + h * n_r * npad_r, where P_off(r) = heads * sum over earlier rows of n * npad.
 *
 * RoPE: given cos and sin (T x d, contiguous), q and k are the projections before the rotary embedding, which the
 * kernel applies as it packs them (`rope_rows`), and their gradients are rotated back; this saves the ~10 elementwise
 * passes of transformers' apply_rotary_pos_emb and their backward (modeling's attention forward for layout rows).
 *
 * Threads split (row, key/value head) pairs; the OpenMP runtime is torch's (rlhfkit/cpukernel.py checks). A row's
 * result depends only on that row, not on the other rows or the thread count.
 */
#include <immintrin.h>
#include <math.h>
#include <omp.h>
#include <stdlib.h>
#include <string.h>

#include "vexp.h"

#define TILE 16
#define MR 6 /* rows per micro-kernel call: 6 x 16 accumulators = 12 of the 16 ymm registers */

/* C[i][0..15] = (load ? C[i][0..15] : 0) + sum_{p < K} A[i * ars + p * acs] * B[p * ldb + 0..15], for i < M. */
static inline __attribute__((always_inline)) void micro(const int M, long K, const float *A, long ars, long acs,
                                                        const float *B, long ldb, float *C, long ldc, int load) {
    __m256 c0[MR], c1[MR];
    for (int i = 0; i < M; i++) {
        c0[i] = load ? _mm256_loadu_ps(C + i * ldc) : _mm256_setzero_ps();
        c1[i] = load ? _mm256_loadu_ps(C + i * ldc + 8) : _mm256_setzero_ps();
    }
    for (long p = 0; p < K; p++) {
        const __m256 b0 = _mm256_loadu_ps(B + p * ldb), b1 = _mm256_loadu_ps(B + p * ldb + 8);
        const float *a = A + p * acs;
        for (int i = 0; i < M; i++) {
            const __m256 ai = _mm256_broadcast_ss(a + i * ars);
            c0[i] = _mm256_fmadd_ps(ai, b0, c0[i]);
            c1[i] = _mm256_fmadd_ps(ai, b1, c1[i]);
        }
    }
    for (int i = 0; i < M; i++) {
        _mm256_storeu_ps(C + i * ldc, c0[i]);
        _mm256_storeu_ps(C + i * ldc + 8, c1[i]);
    }
}

/* C (M x N, N a multiple of 16) = (load ? C : 0) + A (M x K, strides ars / acs) B (K x N, row stride ldb) */
static void gemm(long M, long N, long K, const float *A, long ars, long acs, const float *B, long ldb, float *C,
                 long ldc, int load) {
    for (long j = 0; j < N; j += TILE)
        for (long i = 0; i < M; i += MR) {
            const float *a = A + i * ars;
            float *c = C + i * ldc + j;
            switch (M - i < MR ? M - i : MR) { /* constant M per case: the accumulators stay in registers */
            case 1: micro(1, K, a, ars, acs, B + j, ldb, c, ldc, load); break;
            case 2: micro(2, K, a, ars, acs, B + j, ldb, c, ldc, load); break;
            case 3: micro(3, K, a, ars, acs, B + j, ldb, c, ldc, load); break;
            case 4: micro(4, K, a, ars, acs, B + j, ldb, c, ldc, load); break;
            case 5: micro(5, K, a, ars, acs, B + j, ldb, c, ldc, load); break;
            default: micro(6, K, a, ars, acs, B + j, ldb, c, ldc, load); break;
            }
        }
}

typedef struct {
    long start, n, nt, npad, p_off;
    const unsigned char *mask;
    long mstride;
    unsigned char *act; /* nt x nt: tile (query tile, key tile) has an allowed entry */
} Row;

/* The rows from the caller's arrays, each with its tile map, in one allocation (free() it), or NULL if out of
 * memory; *max_npad receives the largest npad. */
static Row *plan_rows(long n_rows, const long *starts, const long *lens, const long *mask_ptrs,
                      const long *mask_strides, long heads, long *max_npad, int threads) {
    long act_size = 0;
    *max_npad = 0;
    for (long r = 0; r < n_rows; r++) {
        const long nt = (lens[r] + TILE - 1) / TILE;
        *max_npad = nt * TILE > *max_npad ? nt * TILE : *max_npad;
        act_size += nt * nt;
    }
    Row *rows = malloc(n_rows * sizeof(Row) + act_size + 1);
    if (rows == NULL) return NULL;
    unsigned char *act = (unsigned char *)(rows + n_rows);
    long p_off = 0, a_off = 0;
    for (long r = 0; r < n_rows; r++) {
        Row *w = rows + r;
        w->start = starts[r];
        w->n = lens[r];
        w->nt = (w->n + TILE - 1) / TILE;
        w->npad = w->nt * TILE;
        w->p_off = p_off;
        w->mask = (const unsigned char *)mask_ptrs[r];
        w->mstride = mask_strides[r];
        w->act = act + a_off;
        p_off += heads * w->n * w->npad;
        a_off += w->nt * w->nt;
    }
#pragma omp parallel for num_threads(threads) schedule(dynamic)
    for (long r = 0; r < n_rows; r++) {
        const Row *w = rows + r;
        memset(w->act, 0, w->nt * w->nt);
        for (long i = 0; i < w->n; i++) {
            const unsigned char *mi = w->mask + i * w->mstride;
            unsigned char *ai = w->act + (i / TILE) * w->nt;
            long t = 0;
            for (; (t + 1) * TILE <= w->n; t++) { /* whole tiles: 16 mask bytes at once */
                unsigned long long lo, hi;
                memcpy(&lo, mi + t * TILE, 8);
                memcpy(&hi, mi + t * TILE + 8, 8);
                ai[t] |= (lo | hi) != 0;
            }
            for (long j = t * TILE; j < w->n; j++) ai[t] |= mi[j] != 0;
        }
    }
    return rows;
}

/* Longest run of active tiles in row `a` of a tile map (stride `st`, length nt) from tile t on; returns its end. */
static inline long run_end(const unsigned char *a, long st, long nt, long t) {
    while (t < nt && a[t * st]) t++;
    return t;
}

/* out[c][j] = x[j * s + c] for j < n, 0 for n <= j < npad: a d x npad transpose of one head's keys or values */
static void transpose_pad(const float *x, long s, long n, long npad, long d, float *out) {
    for (long j = 0; j < n; j++) /* rows of x are read contiguously; the d output rows stay in L1 */
        for (long c = 0; c < d; c++) out[c * npad + j] = x[j * s + c];
    for (long c = 0; c < d; c++)
        for (long j = n; j < npad; j++) out[c * npad + j] = 0.0f;
}

/* RoPE (Su et al. 2021) as transformers applies it, rows j < n of x (row stride s) into out (row stride ld):
 * out[c] = x[c] cos[c] - x[c + d/2] sin[c], out[c + d/2] = x[c + d/2] cos[c + d/2] + x[c] sin[c + d/2], with the
 * row's own cos and sin (row stride d). The same products and sums in the same order as transformers'
 * q * cos + rotate_half(q) * sin, so the rotated values are identical. */
static void rope_rows(const float *x, long s, long n, const float *cs, const float *sn, long d, float *out, long ld) {
    const long half = d / 2; /* a multiple of 8: d is a multiple of 16 */
    for (long j = 0; j < n; j++) {
        const float *xr = x + j * s, *c = cs + j * d, *si = sn + j * d;
        float *o = out + j * ld;
        for (long i = 0; i < half; i += 8) {
            const __m256 x1 = _mm256_loadu_ps(xr + i), x2 = _mm256_loadu_ps(xr + i + half);
            _mm256_storeu_ps(o + i, _mm256_sub_ps(_mm256_mul_ps(x1, _mm256_loadu_ps(c + i)),
                                                  _mm256_mul_ps(x2, _mm256_loadu_ps(si + i))));
            _mm256_storeu_ps(o + i + half, _mm256_add_ps(_mm256_mul_ps(x2, _mm256_loadu_ps(c + i + half)),
                                                         _mm256_mul_ps(x1, _mm256_loadu_ps(si + i + half))));
        }
    }
}

/* The gradient through `rope_rows`, in place: g (the rotated rows' gradient) becomes the input rows' gradient. */
static void rope_rows_back(float *g, long s, long n, const float *cs, const float *sn, long d) {
    const long half = d / 2;
    for (long j = 0; j < n; j++) {
        float *gr = g + j * s;
        const float *c = cs + j * d, *si = sn + j * d;
        for (long i = 0; i < half; i += 8) {
            const __m256 a = _mm256_loadu_ps(gr + i), b = _mm256_loadu_ps(gr + i + half);
            _mm256_storeu_ps(gr + i, _mm256_add_ps(_mm256_mul_ps(a, _mm256_loadu_ps(c + i)),
                                                   _mm256_mul_ps(b, _mm256_loadu_ps(si + i + half))));
            _mm256_storeu_ps(gr + i + half, _mm256_sub_ps(_mm256_mul_ps(b, _mm256_loadu_ps(c + i + half)),
                                                          _mm256_mul_ps(a, _mm256_loadu_ps(si + i))));
        }
    }
}

static inline float hmax8(__m256 v) {
    float l[8];
    _mm256_storeu_ps(l, v);
    float m = l[0];
    for (int i = 1; i < 8; i++) m = l[i] > m ? l[i] : m;
    return m;
}

static inline float hsum8(__m256 v) {
    float l[8];
    _mm256_storeu_ps(l, v);
    return ((l[0] + l[1]) + (l[2] + l[3])) + ((l[4] + l[5]) + (l[6] + l[7]));
}

/* Row i of P over its query tile's active key tiles: P = softmax(scale * S) with disallowed entries 0. The scores
 * arrive in P. A row with no allowed key gets P = 0 (its output is 0). */
static void softmax_row(float *p, const unsigned char *m, const unsigned char *act_row, long nt, long n, float scale) {
    const __m256 vs = _mm256_set1_ps(scale), ninf = _mm256_set1_ps(-INFINITY);
    __m256 vmax = ninf;
    for (long t = 0; t < nt; t++) {
        if (!act_row[t]) continue;
        float *pt = p + t * TILE;
        if ((t + 1) * TILE <= n) { /* a whole tile: the mask's 16 bytes widened to lane masks */
            const __m128i bytes = _mm_loadu_si128((const __m128i *)(m + t * TILE));
            const __m128i zero = _mm_setzero_si128();
            const __m128i off = _mm_cmpeq_epi8(bytes, zero); /* 0xff where disallowed */
            const __m256 off0 = _mm256_castsi256_ps(_mm256_cvtepi8_epi32(off));
            const __m256 off1 = _mm256_castsi256_ps(_mm256_cvtepi8_epi32(_mm_srli_si128(off, 8)));
            const __m256 s0 = _mm256_blendv_ps(_mm256_mul_ps(_mm256_loadu_ps(pt), vs), ninf, off0);
            const __m256 s1 = _mm256_blendv_ps(_mm256_mul_ps(_mm256_loadu_ps(pt + 8), vs), ninf, off1);
            _mm256_storeu_ps(pt, s0);
            _mm256_storeu_ps(pt + 8, s1);
            vmax = _mm256_max_ps(vmax, _mm256_max_ps(s0, s1));
        } else { /* the row's last, partial tile; columns >= n are padding */
            for (long j = t * TILE; j < t * TILE + TILE; j++) p[j] = (j < n && m[j]) ? p[j] * scale : -INFINITY;
            vmax = _mm256_max_ps(vmax, _mm256_max_ps(_mm256_loadu_ps(pt), _mm256_loadu_ps(pt + 8)));
        }
    }
    const float mx = hmax8(vmax);
    if (mx == -INFINITY) {
        for (long t = 0; t < nt; t++)
            if (act_row[t]) memset(p + t * TILE, 0, TILE * sizeof(float));
        return;
    }
    const __m256 vm = _mm256_set1_ps(mx);
    __m256 vsum = _mm256_setzero_ps();
    for (long t = 0; t < nt; t++) {
        if (!act_row[t]) continue;
        for (long j = t * TILE; j < t * TILE + TILE; j += 8) {
            const __m256 e = rlhfkit_exp8(_mm256_sub_ps(_mm256_loadu_ps(p + j), vm)); /* exp(-inf) = 0 */
            _mm256_storeu_ps(p + j, e);
            vsum = _mm256_add_ps(vsum, e);
        }
    }
    const __m256 inv = _mm256_set1_ps(1.0f / hsum8(vsum));
    for (long t = 0; t < nt; t++) {
        if (!act_row[t]) continue;
        for (long j = t * TILE; j < t * TILE + TILE; j += 8) _mm256_storeu_ps(p + j, _mm256_mul_ps(_mm256_loadu_ps(p + j), inv));
    }
}

/* Forward. Returns 0, or -1 if scratch memory could not be allocated. o must be zero-filled by the caller. */
int rlhfkit_block_attention_forward(const float *q, long q_st, long q_sh, const float *k, long k_st, long k_sh,
                                    const float *v, long v_st, long v_sh, long heads, long kv_heads, long d,
                                    float scale, long n_rows, const long *starts, const long *lens,
                                    const long *mask_ptrs, const long *mask_strides, float *o, float *P,
                                    const float *rope_cos, const float *rope_sin, int threads) {
    long max_npad;
    Row *rows = plan_rows(n_rows, starts, lens, mask_ptrs, mask_strides, heads, &max_npad, threads);
    if (rows == NULL) return -1;
    const long groups = heads / kv_heads, o_st = heads * d;
    int failed = 0;
#pragma omp parallel num_threads(threads)
    {
        float *kt = malloc((size_t)(2 * d * max_npad) * sizeof(float)); /* K^T (d x npad), rotated rows (n x d) */
        if (kt == NULL) {
#pragma omp atomic write
            failed = 1;
        }
#pragma omp for schedule(dynamic)
        for (long task = 0; task < n_rows * kv_heads; task++) {
            if (kt == NULL) continue;
            const Row *w = rows + task / kv_heads;
            const long g = task % kv_heads, n = w->n, nt = w->nt, npad = w->npad;
            const float *kg = k + w->start * k_st + g * k_sh, *vg = v + w->start * v_st + g * v_sh;
            float *rot = kt + d * max_npad;
            const float *cs = rope_cos ? rope_cos + w->start * d : NULL, *sn = rope_sin ? rope_sin + w->start * d : NULL;
            if (cs) {
                rope_rows(kg, k_st, n, cs, sn, d, rot, d);
                transpose_pad(rot, d, n, npad, d, kt);
            } else {
                transpose_pad(kg, k_st, n, npad, d, kt);
            }
            for (long h = g * groups; h < (g + 1) * groups; h++) {
                const float *qh = q + w->start * q_st + h * q_sh;
                long qs = q_st;
                if (cs) {
                    rope_rows(qh, q_st, n, cs, sn, d, rot, d);
                    qh = rot;
                    qs = d;
                }
                float *ph = P + w->p_off + h * n * npad, *oh = o + w->start * o_st + h * d;
                for (long qt = 0; qt < nt; qt++) {
                    const long i0 = qt * TILE, m = n - i0 < TILE ? n - i0 : TILE;
                    const unsigned char *arow = w->act + qt * nt;
                    for (long t = 0; t < nt; t++) /* S = Q K^T on the active tiles */
                        if (arow[t]) gemm(m, TILE, d, qh + i0 * qs, qs, 1, kt + t * TILE, npad, ph + i0 * npad + t * TILE, npad, 0);
                    for (long i = i0; i < i0 + m; i++) softmax_row(ph + i * npad, w->mask + i * w->mstride, arow, nt, n, scale);
                    for (long t = 0; t < nt;) { /* O = P V over each run of active key tiles */
                        if (!arow[t]) { t++; continue; }
                        const long e = run_end(arow, 1, nt, t), lo = t * TILE, hi = e * TILE < n ? e * TILE : n;
                        gemm(m, d, hi - lo, ph + i0 * npad + lo, npad, 1, vg + lo * v_st, v_st, oh + i0 * o_st, o_st, 1);
                        t = e;
                    }
                }
            }
        }
        free(kt);
    }
    free(rows);
    return failed ? -1 : 0;
}

/* Backward, given the forward's o and P and the output's gradient do (T, heads, d) contiguous. dq, dk, dv
 * (T, heads, d) / (T, kv_heads, d) contiguous, zero-filled by the caller. Returns 0, or -1 on allocation failure. */
int rlhfkit_block_attention_backward(const float *q, long q_st, long q_sh, const float *k, long k_st, long k_sh,
                                     const float *v, long v_st, long v_sh, long heads, long kv_heads, long d,
                                     float scale, long n_rows, const long *starts, const long *lens,
                                     const long *mask_ptrs, const long *mask_strides, const float *o, const float *P,
                                     const float *dout, float *dq, float *dk, float *dv, const float *rope_cos,
                                     const float *rope_sin, int threads) {
    long max_npad;
    Row *rows = plan_rows(n_rows, starts, lens, mask_ptrs, mask_strides, heads, &max_npad, threads);
    if (rows == NULL) return -1;
    const long groups = heads / kv_heads, o_st = heads * d, kv_st = kv_heads * d;
    int failed = 0;
#pragma omp parallel num_threads(threads)
    {
        /* per thread: V^T (d x npad), dS (npad x npad), D (npad), rotated K and Q rows (npad x d each) */
        float *vt = malloc((size_t)(3 * d * max_npad + max_npad * max_npad + max_npad) * sizeof(float));
        if (vt == NULL) {
#pragma omp atomic write
            failed = 1;
        }
#pragma omp for schedule(dynamic)
        for (long task = 0; task < n_rows * kv_heads; task++) {
            if (vt == NULL) continue;
            const Row *w = rows + task / kv_heads;
            const long g = task % kv_heads, n = w->n, nt = w->nt, npad = w->npad;
            float *ds = vt + d * max_npad, *D = ds + max_npad * max_npad, *krot = D + max_npad, *qrot = krot + d * max_npad;
            const float *kg = k + w->start * k_st + g * k_sh, *vg = v + w->start * v_st + g * v_sh;
            float *dkg = dk + w->start * kv_st + g * d, *dvg = dv + w->start * kv_st + g * d;
            const float *cs = rope_cos ? rope_cos + w->start * d : NULL, *sn = rope_sin ? rope_sin + w->start * d : NULL;
            long ks = k_st, qs = q_st;
            if (cs) { /* the scores used the rotated q and k: so do their gradients, which are rotated back below */
                rope_rows(kg, k_st, n, cs, sn, d, krot, d);
                kg = krot;
                ks = d;
                qs = d;
            }
            transpose_pad(vg, v_st, n, npad, d, vt);
            for (long h = g * groups; h < (g + 1) * groups; h++) {
                const float *qh = q + w->start * q_st + h * q_sh, *ph = P + w->p_off + h * n * npad;
                if (cs) {
                    rope_rows(qh, q_st, n, cs, sn, d, qrot, d);
                    qh = qrot;
                }
                const float *oh = o + w->start * o_st + h * d, *doh = dout + w->start * o_st + h * d;
                float *dqh = dq + w->start * o_st + h * d;
                for (long i = 0; i < n; i++) { /* D_i = dO_i . O_i */
                    __m256 acc = _mm256_setzero_ps();
                    for (long c = 0; c < d; c += 8)
                        acc = _mm256_fmadd_ps(_mm256_loadu_ps(doh + i * o_st + c), _mm256_loadu_ps(oh + i * o_st + c), acc);
                    D[i] = hsum8(acc);
                }
                for (long qt = 0; qt < nt; qt++) { /* dS = scale * P * (dO V^T - D) on the active tiles */
                    const long i0 = qt * TILE, m = n - i0 < TILE ? n - i0 : TILE;
                    const unsigned char *arow = w->act + qt * nt;
                    for (long t = 0; t < nt; t++) {
                        if (!arow[t]) continue;
                        float *dst = ds + i0 * npad + t * TILE;
                        gemm(m, TILE, d, doh + i0 * o_st, o_st, 1, vt + t * TILE, npad, dst, npad, 0);
                        for (long i = 0; i < m; i++) {
                            const float *pi = ph + (i0 + i) * npad + t * TILE;
                            float *si = dst + i * npad;
                            const __m256 di = _mm256_set1_ps(D[i0 + i]), vs = _mm256_set1_ps(scale);
                            for (long j = 0; j < TILE; j += 8)
                                _mm256_storeu_ps(si + j, _mm256_mul_ps(vs, _mm256_mul_ps(_mm256_loadu_ps(pi + j),
                                                 _mm256_sub_ps(_mm256_loadu_ps(si + j), di))));
                        }
                    }
                    for (long t = 0; t < nt;) { /* dQ = dS K over each run of active key tiles */
                        if (!arow[t]) { t++; continue; }
                        const long e = run_end(arow, 1, nt, t), lo = t * TILE, hi = e * TILE < n ? e * TILE : n;
                        gemm(m, d, hi - lo, ds + i0 * npad + lo, npad, 1, kg + lo * ks, ks, dqh + i0 * o_st, o_st, 1);
                        t = e;
                    }
                }
                for (long kt = 0; kt < nt; kt++) { /* dK = dS^T Q, dV = P^T dO over each run of active query tiles */
                    const long j0 = kt * TILE, m = n - j0 < TILE ? n - j0 : TILE;
                    const unsigned char *acol = w->act + kt;
                    for (long t = 0; t < nt;) {
                        if (!acol[t * nt]) { t++; continue; }
                        const long e = run_end(acol, nt, nt, t), lo = t * TILE, hi = e * TILE < n ? e * TILE : n;
                        gemm(m, d, hi - lo, ds + lo * npad + j0, 1, npad, qh + lo * qs, qs, dkg + j0 * kv_st, kv_st, 1);
                        gemm(m, d, hi - lo, ph + lo * npad + j0, 1, npad, doh + lo * o_st, o_st, dvg + j0 * kv_st, kv_st, 1);
                        t = e;
                    }
                }
                if (cs) rope_rows_back(dqh, o_st, n, cs, sn, d);
            }
            if (cs) rope_rows_back(dkg, kv_st, n, cs, sn, d); /* after every query head of the group added to it */
        }
        free(vt);
    }
    free(rows);
    return failed ? -1 : 0;
}
