// Reference model of the nvcuda::wmma subset used by csrc/kernels (16x16x16 tiles), for the CPU emulation.
// A fragment holds its whole logical tile; lane 0 of the warp does the collective work and is the only lane whose
// fragments are read back (store_matrix_sync writes from lane 0; the kernels __syncwarp before reading).
// Layouts as documented for wmma: row_major element (i, j) at p[i * ldm + j]; col_major at p[j * ldm + i].
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <type_traits>

namespace nvcuda {
namespace wmma {

struct matrix_a {};
struct matrix_b {};
struct accumulator {};
struct row_major {};
struct col_major {};
enum layout_t { mem_row_major, mem_col_major };

inline float as_float(float x) { return x; }
inline float as_float(__half x) { return __half2float(x); }
inline float as_float(__nv_bfloat16 x) { return __bfloat162float(x); }

template <typename Use, int M, int N, int K, typename T, typename Layout = void>
struct fragment {
  static_assert(M == 16 && N == 16 && K == 16, "only 16x16x16 tiles are modelled");
  float x[16][16];
};

inline bool leader() { return rpo_emu::lane() == 0; }

template <typename Use, typename T, typename Layout>
void load_matrix_sync(fragment<Use, 16, 16, 16, T, Layout>& f, const T* p, unsigned ldm) {
  if (!leader()) return;
  for (int i = 0; i < 16; ++i)
    for (int j = 0; j < 16; ++j)
      f.x[i][j] = as_float(std::is_same_v<Layout, row_major> ? p[i * ldm + j] : p[j * ldm + i]);
}

template <typename T>
void fill_fragment(fragment<accumulator, 16, 16, 16, T>& f, float v) {
  for (auto& row : f.x)
    for (float& e : row) e = v;
}

template <typename T, typename LA, typename LB>
void mma_sync(fragment<accumulator, 16, 16, 16, float>& d, const fragment<matrix_a, 16, 16, 16, T, LA>& a,
              const fragment<matrix_b, 16, 16, 16, T, LB>& b, const fragment<accumulator, 16, 16, 16, float>& c) {
  if (!leader()) return;
  float out[16][16];
  for (int i = 0; i < 16; ++i)
    for (int j = 0; j < 16; ++j) {
      float s = c.x[i][j];
      for (int k = 0; k < 16; ++k) s += a.x[i][k] * b.x[k][j];
      out[i][j] = s;
    }
  for (int i = 0; i < 16; ++i)
    for (int j = 0; j < 16; ++j) d.x[i][j] = out[i][j];
}

inline void store_matrix_sync(float* p, const fragment<accumulator, 16, 16, 16, float>& f, unsigned ldm,
                              layout_t layout) {
  if (!leader()) return;
  for (int i = 0; i < 16; ++i)
    for (int j = 0; j < 16; ++j) p[layout == mem_row_major ? i * ldm + j : j * ldm + i] = f.x[i][j];
}

}  // namespace wmma
}  // namespace nvcuda
