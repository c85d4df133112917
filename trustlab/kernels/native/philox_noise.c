/* Gaussian noise for the DP step on the CPU: Philox4x32-10 (Salmon et al. 2011) and
 * Box-Muller, written so that the compiler vectorises every loop (libmvec's logf, cosf and
 * sinf under -ffast-math). trustlab.kernels.philox.philox_normals is the reference: the same
 * numbers from torch ops.
 *
 * Normal i of (key, stream) comes from chunk k = i / (4 * BLOCK): the Philox blocks of the
 * 128-bit counters (k * BLOCK + j, stream) for j < BLOCK, word w of counter j at x[w * BLOCK + j].
 * Pair p < 2 * BLOCK takes u1 = (x[p] + 1/2) / 2^32 and the angle t = 2 pi (x[2 * BLOCK + p] >> 8)
 * / 2^24; normal p of the chunk is r cos t and normal 2 * BLOCK + p is r sin t,
 * r = sqrt(-2 log u1). */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#if defined(__AVX512F__) || defined(__AVX2__)
#include <immintrin.h>
#endif

#define BLOCK 64
#define CHUNK (4 * BLOCK)
#define PARALLEL_MIN (1 << 14) /* fewer normals: one thread is faster than waking the others */

/* Philox4x32-10 blocks of the counters (first + j, stream), j < BLOCK, word w of counter j at
 * x[w * BLOCK + j]. first is a multiple of BLOCK, so a block's counters share their high word. */
#if defined(__AVX512F__) || defined(__AVX2__)
/* the 32-bit lanes of a vector each a counter's word: 32 x 32 -> 64-bit products through
 * vpmuludq on the even and the odd lanes (the compiler's own vectorisation of the portable
 * loop below widens every lane to 64 bits and multiplies with vpmullq: half as fast, a third
 * without AVX-512) */
#if defined(__AVX512F__)
typedef __m512i words;
#define LANES 16
#define SET1(v) _mm512_set1_epi32((int)(v))
#define XOR(a, b) _mm512_xor_si512(a, b)
#define ADD(a, b) _mm512_add_epi32(a, b)
#define LANE_INDEX _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15)
#define STORE(p, v) _mm512_storeu_si512((void *)(p), v)
static inline words mul_hi_lo(words a, words m, words *lo) {
    words even = _mm512_mul_epu32(a, m), odd = _mm512_mul_epu32(_mm512_srli_epi64(a, 32), m);
    *lo = _mm512_mullo_epi32(a, m);
    return _mm512_mask_blend_epi32(0xAAAA, _mm512_srli_epi64(even, 32), odd);
}
#else
typedef __m256i words;
#define LANES 8
#define SET1(v) _mm256_set1_epi32((int)(v))
#define XOR(a, b) _mm256_xor_si256(a, b)
#define ADD(a, b) _mm256_add_epi32(a, b)
#define LANE_INDEX _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7)
#define STORE(p, v) _mm256_storeu_si256((void *)(p), v)
static inline words mul_hi_lo(words a, words m, words *lo) {
    words even = _mm256_mul_epu32(a, m), odd = _mm256_mul_epu32(_mm256_srli_epi64(a, 32), m);
    *lo = _mm256_mullo_epi32(a, m);
    return _mm256_blend_epi32(_mm256_srli_epi64(even, 32), odd, 0xAA);
}
#endif
static void philox_block(uint64_t key, uint64_t first, uint64_t stream, uint32_t *restrict x) {
    const words m0 = SET1(0xD2511F53u), m1 = SET1(0xCD9E8D57u);
    for (int j = 0; j < BLOCK; j += LANES) {
        uint64_t counter = first + (uint64_t)j;
        words c0 = ADD(SET1((uint32_t)counter), LANE_INDEX), c1 = SET1(counter >> 32);
        words c2 = SET1((uint32_t)stream), c3 = SET1(stream >> 32);
        uint32_t k0 = (uint32_t)key, k1 = (uint32_t)(key >> 32);
        for (int round = 0; round < 10; round++) {
            words lo0, lo1, hi0 = mul_hi_lo(c0, m0, &lo0), hi1 = mul_hi_lo(c2, m1, &lo1);
            c0 = XOR(XOR(hi1, c1), SET1(k0));
            c2 = XOR(XOR(hi0, c3), SET1(k1));
            c1 = lo1;
            c3 = lo0;
            k0 += 0x9E3779B9u;
            k1 += 0xBB67AE85u;
        }
        STORE(x + j, c0);
        STORE(x + BLOCK + j, c1);
        STORE(x + 2 * BLOCK + j, c2);
        STORE(x + 3 * BLOCK + j, c3);
    }
}
#else
static void philox_block(uint64_t key, uint64_t first, uint64_t stream, uint32_t *restrict x) {
    for (int j = 0; j < BLOCK; j++) {
        uint64_t counter = first + (uint64_t)j;
        uint32_t c0 = (uint32_t)counter, c1 = (uint32_t)(counter >> 32);
        uint32_t c2 = (uint32_t)stream, c3 = (uint32_t)(stream >> 32);
        uint32_t k0 = (uint32_t)key, k1 = (uint32_t)(key >> 32);
        for (int round = 0; round < 10; round++) {
            uint64_t p0 = (uint64_t)0xD2511F53u * c0, p1 = (uint64_t)0xCD9E8D57u * c2;
            uint32_t n0 = (uint32_t)(p1 >> 32) ^ c1 ^ k0, n2 = (uint32_t)(p0 >> 32) ^ c3 ^ k1;
            c1 = (uint32_t)p1;
            c3 = (uint32_t)p0;
            c0 = n0;
            c2 = n2;
            k0 += 0x9E3779B9u;
            k1 += 0xBB67AE85u;
        }
        x[j] = c0;
        x[BLOCK + j] = c1;
        x[2 * BLOCK + j] = c2;
        x[3 * BLOCK + j] = c3;
    }
}
#endif

static void box_muller(const uint32_t *restrict x, float *restrict z) {
    float r[2 * BLOCK], t[2 * BLOCK];
    for (int p = 0; p < 2 * BLOCK; p++) {
        r[p] = sqrtf(-2.0f * logf(((float)x[p] + 0.5f) * 0x1p-32f));
        t[p] = (float)(x[2 * BLOCK + p] >> 8) * (6.2831853071795864f * 0x1p-24f);
    }
    /* apart: one loop with both would become scalar sincosf */
    for (int p = 0; p < 2 * BLOCK; p++) z[p] = r[p] * cosf(t[p]);
    for (int p = 0; p < 2 * BLOCK; p++) z[2 * BLOCK + p] = r[p] * sinf(t[p]);
}

/* For every tensor t < count: out[t][i] = (summed[t][i] + std * z_i) * scale for
 * i < sizes[t], z_i normal i of (key, first_stream + t). The chunks of all tensors are shared
 * among the threads. Returns 0, or -1 (nothing written) when memory for the chunk table of
 * count + 1 entries cannot be had. */
int trustlab_noisy_write(int64_t count, float *const *out, const float *const *summed,
                         const int64_t *sizes, uint64_t key, uint64_t first_stream, float std,
                         float scale) {
    /* tensor t's chunks: first_chunk[t] .. first_chunk[t+1]; on the heap, as a model may have
     * any number of parameter tensors */
    int64_t *first_chunk = malloc((size_t)(count + 1) * sizeof(int64_t));
    if (first_chunk == NULL) return -1;
    first_chunk[0] = 0;
    for (int64_t t = 0; t < count; t++)
        first_chunk[t + 1] = first_chunk[t] + (sizes[t] + CHUNK - 1) / CHUNK;
    int64_t chunks = first_chunk[count];
#pragma omp parallel for if (chunks * CHUNK >= PARALLEL_MIN) schedule(static)
    for (int64_t c = 0; c < chunks; c++) {
        int64_t lo = 0, hi = count - 1; /* the tensor of chunk c: a binary search */
        while (lo < hi) {
            int64_t mid = (lo + hi + 1) / 2;
            if (first_chunk[mid] <= c) lo = mid; else hi = mid - 1;
        }
        int64_t k = c - first_chunk[lo], start = k * CHUNK;
        int64_t m = sizes[lo] - start < CHUNK ? sizes[lo] - start : CHUNK;
        uint32_t x[CHUNK];
        float z[CHUNK];
        philox_block(key, (uint64_t)k * BLOCK, first_stream + (uint64_t)lo, x);
        box_muller(x, z);
        const float *s = summed[lo] + start;
        float *o = out[lo] + start;
        for (int64_t i = 0; i < m; i++) o[i] = (s[i] + std * z[i]) * scale;
    }
    free(first_chunk);
    return 0;
}
