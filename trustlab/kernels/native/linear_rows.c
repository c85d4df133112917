/* Flat (or automatic) clipping of Linear layers that each saw one row per sample: one call for
 * the per-sample squared norms over all layers, the clip factors and the clipped bias sums, then
 * one call per layer for its clipped weight sum through a BLAS sgemm (MKL's, exported by torch's
 * CPU library). trustlab.privacy.tracker's torch path (LinearKernel.sq_norms, clip_factors,
 * weighted_weight_sum) is the reference: the same numbers from torch ops.
 *
 * Layer l has activations a[l] (batch x a_width[l]) and output gradients g[l]
 * (batch x g_width[l]), both row-major and contiguous. Sample i's weight gradient is
 * g_i a_i^T, with ||g_i a_i^T||^2 = ||a_i||^2 ||g_i||^2, and its bias gradient g_i. */
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
#define COLUMN_BLOCK 64 /* bias columns per thread's share */
#define PARALLEL_MIN_FLOPS (1 << 18) /* a smaller GEMM runs on one thread */
#define SAMPLE_BLOCK 64 /* samples rescaled at a time for one weight-sum GEMM */
/* every part of the outputs starts on a 64-byte line (whole vectors for their readers) */
#define PADDED(n) (((n) + 15) / 16 * 16)

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

static void add_scaled_row(float *restrict acc, const float *restrict x, int64_t n, float f) {
#pragma omp simd
    for (int64_t j = 0; j < n; j++) acc[j] += f * x[j];
}

/* w (d x p, row-major) = sum_i factors[i] g_i a_i^T for one layer's rows a (batch x p) and g
 * (batch x d), both row-major: each thread takes a share of w's rows and runs one
 * single-threaded GEMM per block of SAMPLE_BLOCK samples, whose rows of g (its share of their
 * columns) it first rescales into its own scratch, so that no rescaled copy of the layer is
 * made. Returns 0, or -1 when memory for the scratch cannot be had. */
int trustlab_linear_rows_weight_sum(int64_t batch, const float *a, int64_t p, const float *g,
                                    int64_t d, const float *factors, float *w, sgemm_fn sgemm,
                                    set_threads_fn set_threads) {
    int failed = 0;
    int parallel = batch * p * d >= PARALLEL_MIN_FLOPS;
    (void)parallel; /* unused where the kernel is built without OpenMP */
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
        int before = set_threads ? set_threads(1) : 0;
        for (int64_t i0 = 0; scratch && rows && i0 < batch; i0 += SAMPLE_BLOCK) {
            int k = (int)(batch - i0 < SAMPLE_BLOCK ? batch - i0 : SAMPLE_BLOCK);
            for (int i = 0; i < k; i++) {
                const float *row = g + (i0 + i) * d + first;
                float f = factors[i0 + i];
                for (int j = 0; j < rows; j++) scratch[i * rows + j] = f * row[j];
            }
            /* column-major: w^T[:, first:last] (+)= a_block^T scratch */
            float one = 1.0f, beta = i0 ? 1.0f : 0.0f;
            sgemm("N", "T", &width, &rows, &k, &one, a + i0 * p, &width, scratch, &rows, &beta,
                  w + first * p, &width);
        }
        if (set_threads) set_threads(before);
        failed = scratch == NULL;
        free(scratch);
    }
    return failed ? -1 : 0;
}

/* Layer l's activations are rows[l] (batch x widths[l]) and its output gradients
 * rows[layers + l] (batch x widths[layers + l]); parts[l] says what trains (& 1: its weight,
 * & 2: its bias). Writes into norms, for every sample i, norms[i] = scale^2 sum_l
 * ||grad_l,i||^2 (the squared norms of each sample's own loss gradient when the loss was a mean
 * scaled by 1/scale) and norms[PADDED(batch) + i] = scale * bound / (sqrt(norms[i]) + gamma),
 * capped at scale when cap != 0 (the clip factors), and into sums, layer after layer, each part
 * PADDED, the clipped sum of each training bias, sum_i factor_i g[l]_i (g_width[l] floats).
 * Returns the sum of the squared norms: not finite when any sample's is not, and nothing after
 * the norms is then written. */
double trustlab_linear_rows_clip(int64_t layers, int64_t batch, const float *const *rows,
                                 const int64_t *widths, const int64_t *parts, double bound,
                                 double scale, double gamma, int32_t cap,
                                 float *restrict norms, float *restrict sums) {
    const float *const *a = rows, *const *g = rows + layers;
    const int64_t *a_width = widths, *g_width = widths + layers;
    float *restrict sq_norms = norms, *restrict factors = norms + PADDED(batch);
    int64_t row_elems = 0; /* per sample, all layers: the work the threads share */
    for (int64_t l = 0; l < layers; l++) row_elems += a_width[l] + g_width[l];
    int parallel = batch * row_elems >= PARALLEL_MIN_ELEMS;
    (void)parallel; /* unused where the kernel is built without OpenMP */
    double total = 0.0;
#pragma omp parallel for if (parallel) reduction(+ : total) schedule(static)
    for (int64_t i = 0; i < batch; i++) {
        double norm = 0.0;
        for (int64_t l = 0; l < layers; l++) {
            double g_sq = row_sq(g[l] + i * g_width[l], g_width[l]);
            if (parts[l] & TRAINS_WEIGHT) norm += g_sq * row_sq(a[l] + i * a_width[l], a_width[l]);
            if (parts[l] & TRAINS_BIAS) norm += g_sq;
        }
        sq_norms[i] = (float)(norm * scale * scale);
        total += sq_norms[i];
    }
    if (!isfinite(total)) return total;
    for (int64_t i = 0; i < batch; i++) {
        double f = scale * bound / (sqrt((double)sq_norms[i]) + gamma);
        factors[i] = (float)(cap && f > scale ? scale : f);
    }
    float *bias = sums;
    for (int64_t l = 0; l < layers; l++) {
        if (!(parts[l] & TRAINS_BIAS)) continue;
        int64_t d = g_width[l];
#pragma omp parallel for if (parallel && d >= 2 * COLUMN_BLOCK) schedule(static)
        for (int64_t k0 = 0; k0 < d; k0 += COLUMN_BLOCK) {
            int64_t n = d - k0 < COLUMN_BLOCK ? d - k0 : COLUMN_BLOCK;
            for (int64_t k = 0; k < n; k++) bias[k0 + k] = 0.0f;
            for (int64_t i = 0; i < batch; i++)
                add_scaled_row(bias + k0, g[l] + i * d + k0, n, factors[i]);
        }
        bias += PADDED(d);
    }
    return total;
}
