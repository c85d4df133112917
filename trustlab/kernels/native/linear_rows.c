/* Flat (or automatic) clipping of Linear layers that each saw one row per sample, fused into
 * one call: per-sample squared norms over all layers, clip factors, and the clipped bias sums
 * (the clipped weight sums, one GEMM each, are left to torch). trustlab.privacy.tracker's torch
 * path (LinearKernel.sq_norms, clip_factors) is the reference: the same numbers from torch
 * ops.
 *
 * Layer l has activations a[l] (batch x a_width[l]) and output gradients g[l]
 * (batch x g_width[l]), both row-major and contiguous. Sample i's weight gradient is
 * g_i a_i^T, with ||g_i a_i^T||^2 = ||a_i||^2 ||g_i||^2, and its bias gradient g_i. All the
 * results go into one buffer (one allocation for the caller). */
#include <math.h>
#include <stdint.h>

#define TRAINS_WEIGHT 1
#define TRAINS_BIAS 2
/* below this many elements per call one thread is faster than waking the others */
#define PARALLEL_MIN_ELEMS (1 << 15)
#define COLUMN_BLOCK 64 /* bias columns per thread's share */

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

/* Layer l's activations are rows[l] (batch x widths[l]) and its output gradients
 * rows[layers + l] (batch x widths[layers + l]); parts[l] says what trains (& 1: its weight,
 * & 2: its bias). Writes into out, for every sample i, out[i] = scale^2 sum_l ||grad_l,i||^2
 * (the squared norms of each sample's own loss gradient when the loss was a mean scaled by
 * 1/scale) and out[batch + i] = scale * bound / (sqrt(out[i]) + gamma), capped at scale when
 * cap != 0 (the clip factors), then, layer after layer, the clipped sum of each training bias,
 * sum_i factor_i g[l]_i (g_width[l] floats each). Returns the sum of the squared norms: not
 * finite when any sample's is not, and nothing after the norms is then written. */
double trustlab_linear_rows_clip(int64_t layers, int64_t batch, const float *const *rows,
                                 const int64_t *widths, const int64_t *parts, double bound,
                                 double scale, double gamma, int32_t cap, float *restrict out) {
    const float *const *a = rows, *const *g = rows + layers;
    const int64_t *a_width = widths, *g_width = widths + layers;
    float *restrict sq_norms = out, *restrict factors = out + batch;
    int64_t row_elems = 0; /* per sample, all layers: the work the threads share */
    for (int64_t l = 0; l < layers; l++) row_elems += a_width[l] + g_width[l];
    int parallel = batch * row_elems >= PARALLEL_MIN_ELEMS;
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
    float *bias = out + 2 * batch;
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
        bias += d;
    }
    return total;
}
