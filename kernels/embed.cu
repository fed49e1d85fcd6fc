// Embedding lookups and their gradient (src/exec/cpu/layout.rs `embedding`,
// `embedding_grad`).
//
// - embedding copies table rows bit for bit.
// - embedding_grad is the scatter-add of dy's rows into the table's shape.
//   It is deterministic and in the CPU's order without atomics: a thread per
//   output element (table row r, column c) walks the tokens in order and adds
//   dy[k, c] in f32 for every token k whose id is r, as the CPU's loop over
//   tokens does, then rounds once. The results are the CPU's bits. The cost
//   is rows x width x tokens id comparisons (each thread reads every id; the
//   ids are small and shared through the cache): fine for vocabularies of a
//   few thousand rows; a sorted (CSR) pass would scale further.
// - An id outside [0, rows) is an error on the CPU. Here embedding writes a
//   NaN row for it (the loss turns NaN, found_inf skips the step) and
//   embedding_grad adds it to no row.
#include "common.cuh"

__device__ __forceinline__ i64 id_value(i32 v) { return (i64)v; }
__device__ __forceinline__ i64 id_value(i64 v) { return v; }

// embedding_<t>_<i>(const T* table, const I* ids, T* y, i64 tokens, i64 rows, i64 width)
// table [rows, width], ids [tokens] (any shape, flattened), y [tokens, width].
template <typename T, typename I>
__device__ __forceinline__ void embed(const T* table, const I* ids, T* y, i64 tokens, i64 rows, i64 width) {
    MPC_GRID_STRIDE(e, tokens * width) {
        const i64 k = e / width, c = e % width;
        const i64 r = id_value(ids[k]);
        y[e] = (r >= 0 && r < rows) ? table[r * width + c] : from_f32<T>(mpc_nan_f32());
    }
}

// embedding_grad_<t>_<i>(const T* dy, const I* ids, T* dtable, i64 tokens, i64 rows, i64 width)
// dy [tokens, width], dtable [rows, width]: dtable[r, c] = sum over tokens k
// with ids[k] == r, in token order, of dy[k, c] (f32), rounded once.
template <typename T, typename I>
__device__ __forceinline__ void embed_grad(const T* dy, const I* ids, T* dtable, i64 tokens, i64 rows, i64 width) {
    MPC_GRID_STRIDE(e, rows * width) {
        const i64 r = e / width, c = e % width;
        float acc = 0.0f;
        for (i64 k = 0; k < tokens; ++k) {
            if (id_value(ids[k]) == r) acc += to_f32(dy[k * width + c]);
        }
        dtable[e] = from_f32<T>(acc);
    }
}

#define MPC_EMBED(T, TN, I, IN)                                                                                  \
    extern "C" __global__ void embedding_##TN##_##IN(const T* table, const I* ids, T* y, i64 tokens, i64 rows,   \
                                                     i64 width) {                                                \
        embed<T, I>(table, ids, y, tokens, rows, width);                                                         \
    }                                                                                                            \
    MPC_EXPORT(embedding_##TN##_##IN)                                                                            \
    extern "C" __global__ void embedding_grad_##TN##_##IN(const T* dy, const I* ids, T* dtable, i64 tokens,      \
                                                          i64 rows, i64 width) {                                 \
        embed_grad<T, I>(dy, ids, dtable, tokens, rows, width);                                                  \
    }                                                                                                            \
    MPC_EXPORT(embedding_grad_##TN##_##IN)

MPC_EMBED(float, f32, i32, i32)
MPC_EMBED(float, f32, i64, i64)
MPC_EMBED(__half, f16, i32, i32)
MPC_EMBED(__half, f16, i64, i64)
MPC_EMBED(__nv_bfloat16, bf16, i32, i32)
MPC_EMBED(__nv_bfloat16, bf16, i64, i64)
