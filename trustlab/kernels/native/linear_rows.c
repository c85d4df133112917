/* Flat (or automatic) clipping of Linear layers that each saw one row per sample, in three
 * kinds of call: each layer's per-sample squared norms, added into one buffer (the engine makes
 * this call as the layer's output gradients arrive in the backward pass, while they are in
 * cache); the clip factors from that buffer; then one call per layer for its clipped weight sum
 * (through a BLAS sgemm, MKL's, exported by torch's CPU library) and clipped bias sum.
 * trustlab.privacy.tracker's torch path (LinearKernel.sq_norms, clip_factors,
 * weighted_weight_sum) is the reference: the same numbers from torch ops.
 *
 * A layer has activations a (batch x p) and output gradients g (batch x d), both row-major and
 * contiguous. Sample i's weight gradient is g_i a_i^T, with ||g_i a_i^T||^2 = ||a_i||^2
 * ||g_i||^2, and its bias gradient g_i. */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#ifdef _OPENMP
#include <omp.h>
#endif

#define TRAINS_WEIGHT 1
#define TRAINS_BIAS 2
/* below this many elements per call one thread is faster than waking the others */
#define PARALLEL_MIN_ELEMS (1 << 15)
#define PARALLEL_MIN_FLOPS (1 << 18) /* a smaller GEMM runs on one thread */
#define SAMPLE_BLOCK 64 /* samples rescaled at a time for one weight-sum GEMM */

/* BLAS's Fortran sgemm (LP64) and MKL's per-thread thread count */
typedef void (*sgemm_fn)(const char *, const char *, const int *, const int *, const int *,
                         const float *, const float *, const int *, const float *, const int *,
                         const float *, float *, const int *);
typedef int (*set_threads_fn)(int);

static float row_sq(const float *restrict x, int64_t n) {
    float s = 0.0f;
#pragma omp simd reduction(+ : s)
    for (int64_t j = 0; j < n; j++) s += x[j] * x[j];
    return s;
}

/* norms[i] += ||a_i||^2 ||g_i||^2 when parts & TRAINS_WEIGHT, + ||g_i||^2 when
 * parts & TRAINS_BIAS: sample i's squared gradient norm over the layer's training parameters. */
void trustlab_linear_rows_sq_norms(int64_t batch, const float *a, int64_t p, const float *g,
                                   int64_t d, int32_t parts, float *restrict norms) {
    int parallel = batch * (p + d) >= PARALLEL_MIN_ELEMS;
    (void)parallel; /* unused where the kernel is built without OpenMP */
#pragma omp parallel for if (parallel) schedule(static)
    for (int64_t i = 0; i < batch; i++) {
        float g_sq = row_sq(g + i * d, d), norm = 0.0f;
        if (parts & TRAINS_WEIGHT) norm += g_sq * row_sq(a + i * p, p);
        if (parts & TRAINS_BIAS) norm += g_sq;
        norms[i] += norm;
    }
}

/* norms (batch floats, the layers' sum of trustlab_linear_rows_sq_norms) is scaled in place by
 * scale^2 (the squared norms of each sample's own loss gradient when the loss was a mean scaled
 * by 1/scale), and factors[i] = scale * bound / (sqrt(norms[i]) + gamma), capped at scale when
 * cap != 0. Returns the sum of the scaled norms: not finite when any sample's is not, and the
 * factors are then not written. */
double trustlab_linear_rows_factors(int64_t batch, float *restrict norms, double bound,
                                    double scale, double gamma, int32_t cap,
                                    float *restrict factors) {
    double total = 0.0;
    for (int64_t i = 0; i < batch; i++) {
        norms[i] = (float)((double)norms[i] * scale * scale);
        total += norms[i];
    }
    if (!isfinite(total)) return total;
    for (int64_t i = 0; i < batch; i++) {
        double f = scale * bound / (sqrt((double)norms[i]) + gamma);
        factors[i] = (float)(cap && f > scale ? scale : f);
    }
    return total;
}

/* One layer's clipped sums: w (d x p, row-major) = sum_i factors[i] g_i a_i^T unless w is NULL,
 * and bias (d) = sum_i factors[i] g_i unless bias is NULL. Each thread takes a share of w's
 * rows (of g's columns) and, per block of SAMPLE_BLOCK samples, rescales its share of their
 * rows of g into its own scratch (so that no rescaled copy of the layer is made), adds them to
 * its share of the bias and runs one single-threaded sgemm on them. sgemm may be NULL when w
 * is. Returns 0, or -1 when memory for the scratch cannot be had. */
int trustlab_linear_rows_sums(int64_t batch, const float *a, int64_t p, const float *g,
                              int64_t d, const float *factors, float *w, float *bias,
                              sgemm_fn sgemm, set_threads_fn set_threads) {
    int failed = 0;
    int parallel = w ? batch * p * d >= PARALLEL_MIN_FLOPS : batch * d >= PARALLEL_MIN_ELEMS;
    (void)parallel;
#pragma omp parallel if (parallel) reduction(| : failed)
    {
#ifdef _OPENMP
        int threads = omp_get_num_threads(), thread = omp_get_thread_num();
#else
        int threads = 1, thread = 0;
#endif
        int64_t first = d * thread / threads, last = d * (thread + 1) / threads;
        int rows = (int)(last - first), width = (int)p;
        float *scratch = malloc(sizeof(float) * SAMPLE_BLOCK * (size_t)(rows + 1));
        int before = w && set_threads ? set_threads(1) : 0;
        if (bias)
            for (int j = 0; j < rows; j++) bias[first + j] = 0.0f;
        if (w && !batch) /* no block below writes it */
            for (int64_t j = first * p; j < last * p; j++) w[j] = 0.0f;
        for (int64_t i0 = 0; scratch && rows && i0 < batch; i0 += SAMPLE_BLOCK) {
            int k = (int)(batch - i0 < SAMPLE_BLOCK ? batch - i0 : SAMPLE_BLOCK);
            for (int i = 0; i < k; i++) {
                const float *row = g + (i0 + i) * d + first;
                float f = factors[i0 + i], *scaled = scratch + (int64_t)i * rows;
#pragma omp simd
                for (int j = 0; j < rows; j++) scaled[j] = f * row[j];
                if (bias) {
                    float *b = bias + first;
#pragma omp simd
                    for (int j = 0; j < rows; j++) b[j] += scaled[j];
                }
            }
            if (!w) continue;
            /* column-major: w^T[:, first:last] (+)= a_block^T scratch */
            float one = 1.0f, beta = i0 ? 1.0f : 0.0f;
            sgemm("N", "T", &width, &rows, &k, &one, a + i0 * p, &width, scratch, &rows, &beta,
                  w + first * p, &width);
        }
        if (w && set_threads) set_threads(before);
        failed = scratch == NULL;
        free(scratch);
    }
    return failed ? -1 : 0;
}
