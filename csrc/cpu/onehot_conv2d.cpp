// CPU kernels of sbgan_fast::onehot_conv2d and its backward (schemas in csrc/sbgan_ops.cpp).
//
// A convolution over a one-hot map picks, for each tap (i, j), one weight column: the one of the
// class under the tap. With the weight pre-transposed to wt[i][j][c][:] (C_out contiguous, in the
// accumulation type acc_t = fp32, or fp64 for fp64 weights), followed by one all-zero row:
//   out[n, :, y, x] = bias + sum over in-bounds taps of wt[i][j][cls(n, y+i-ph, x+j-pw)][:]
// Work is parallel over output rows (n, y). For each row, the label rows under the taps are
// resolved once (resize, dontcare, range check; every label of the resized map is read by some tap,
// so every one is checked) and turned into one table offset per (pixel, tap), the zero row standing
// for a tap outside the map or on a bad label, so that every pixel sums exactly kh*kw rows in tap
// order. fp32 on a CPU with AVX2 (chosen at run time; the build targets the baseline ISA): a pixel
// whose taps all see the same classes as its left neighbour's reuses that sum; NCHW rows are written
// through 8x8 register transposes, 8 channels along the whole row at a time. Other dtypes / CPUs: a
// portable blocked loop with the same summation order (hence the same bits). Bad labels contribute
// nothing and raise a ValueError after the pass. Large outputs are advised to use 2 MiB pages (see
// cpu_utils.h).
//
// Backward (first order): grad_weight[:, c, i, j] = sum of grad_out[n, :, y, x] over the output
// pixels whose tap (i, j) sees class c; grad_bias = sum of grad_out. Each gradient row is made
// pixel-major, then every run of neighbouring pixels whose tap sees the same class is summed before
// it is added to that class's row. Deterministic: the rows are split into a number of blocks that
// depends on the shapes only (never on the thread count), each block accumulates into its own
// buffer in a fixed order, and the buffers are summed in block order.
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <mutex>
#include <type_traits>

#if (defined(__GNUC__) || defined(__clang__)) && (defined(__x86_64__) || defined(__i386__))
#include <immintrin.h>
#define SBGAN_X86_AVX2 1  // AVX2 kernels compiled with a target attribute, chosen at run time
#else
#define SBGAN_X86_AVX2 0
#endif

#include "../common.h"
#include "cpu_utils.h"

namespace sbgan_fast {
namespace {

// Resolve row `yy` of the resized label map of sample n into cls[0..Wr).
template <typename lab_t>
inline void resolve_row(const lab_t* lab, const LabelGeometry& g, const std::vector<int64_t>& hs,
                        const std::vector<int64_t>& ws_off, int64_t n, int64_t yy, int64_t K,
                        bool has_dc, int64_t dc, int32_t* cls, BadLabels& bad) {
  const lab_t* src = lab + n * g.sN + hs[static_cast<size_t>(yy)] * g.sH;
  for (int64_t x = 0; x < g.Wr; ++x) {
    const int64_t v = static_cast<int64_t>(src[ws_off[static_cast<size_t>(x)]]);
    const int32_t c = resolve_label(v, K, has_dc, dc);
    if (c < 0) bad.add(v);
    cls[x] = c;
  }
}

#if SBGAN_X86_AVX2
inline bool cpu_has_avx2() {
  static const bool has = [] {
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx2") != 0;
  }();
  return has;
}

// w[0..Co) += sum of the m rows a[0..m) (row stride Co), summed in row order (AVX2, fp32).
__attribute__((target("avx2"))) inline void add_row_sum_avx2(float* w, const float* a, int64_t m, int64_t Co) {
  int64_t o = 0;
  for (; o + 64 <= Co; o += 64) {
    __m256 s[8];
#pragma GCC unroll 8
    for (int k = 0; k < 8; ++k) s[k] = _mm256_loadu_ps(a + o + 8 * k);
    for (int64_t x = 1; x < m; ++x) {
      const float* r = a + x * Co + o;
#pragma GCC unroll 8
      for (int k = 0; k < 8; ++k) s[k] = _mm256_add_ps(s[k], _mm256_loadu_ps(r + 8 * k));
    }
#pragma GCC unroll 8
    for (int k = 0; k < 8; ++k) _mm256_storeu_ps(w + o + 8 * k, _mm256_add_ps(_mm256_loadu_ps(w + o + 8 * k), s[k]));
  }
  for (; o + 8 <= Co; o += 8) {
    __m256 s = _mm256_loadu_ps(a + o);
    for (int64_t x = 1; x < m; ++x) s = _mm256_add_ps(s, _mm256_loadu_ps(a + x * Co + o));
    _mm256_storeu_ps(w + o, _mm256_add_ps(_mm256_loadu_ps(w + o), s));
  }
  for (; o < Co; ++o) {
    float s = a[o];
    for (int64_t x = 1; x < m; ++x) s += a[x * Co + o];
    w[o] += s;
  }
}

// In-register 8 x 8 transpose: afterwards r[c][k] holds what r[k][c] held (AVX2).
__attribute__((target("avx2"))) inline void transpose8x8_avx2(__m256 r[8]) {
  const __m256 t0 = _mm256_unpacklo_ps(r[0], r[1]), t1 = _mm256_unpackhi_ps(r[0], r[1]);
  const __m256 t2 = _mm256_unpacklo_ps(r[2], r[3]), t3 = _mm256_unpackhi_ps(r[2], r[3]);
  const __m256 t4 = _mm256_unpacklo_ps(r[4], r[5]), t5 = _mm256_unpackhi_ps(r[4], r[5]);
  const __m256 t6 = _mm256_unpacklo_ps(r[6], r[7]), t7 = _mm256_unpackhi_ps(r[6], r[7]);
  const __m256 s0 = _mm256_shuffle_ps(t0, t2, 0x44), s1 = _mm256_shuffle_ps(t0, t2, 0xEE);
  const __m256 s2 = _mm256_shuffle_ps(t1, t3, 0x44), s3 = _mm256_shuffle_ps(t1, t3, 0xEE);
  const __m256 s4 = _mm256_shuffle_ps(t4, t6, 0x44), s5 = _mm256_shuffle_ps(t4, t6, 0xEE);
  const __m256 s6 = _mm256_shuffle_ps(t5, t7, 0x44), s7 = _mm256_shuffle_ps(t5, t7, 0xEE);
  r[0] = _mm256_permute2f128_ps(s0, s4, 0x20);
  r[1] = _mm256_permute2f128_ps(s1, s5, 0x20);
  r[2] = _mm256_permute2f128_ps(s2, s6, 0x20);
  r[3] = _mm256_permute2f128_ps(s3, s7, 0x20);
  r[4] = _mm256_permute2f128_ps(s0, s4, 0x31);
  r[5] = _mm256_permute2f128_ps(s1, s5, 0x31);
  r[6] = _mm256_permute2f128_ps(s2, s6, 0x31);
  r[7] = _mm256_permute2f128_ps(s3, s7, 0x31);
}

// v[x * Co + o] = src[o * cs + x] for x < Wo, o < Co: an NCHW fp32 gradient row (channel stride
// cs, pixels contiguous) to pixel-major, in 8 x 8 register transposes (AVX2).
__attribute__((target("avx2"))) inline void nchw_row_to_pixel_major_avx2(const float* src, int64_t cs, int64_t Co,
                                                                          int64_t Wo, float* v) {
  int64_t o = 0;
  for (; o + 8 <= Co; o += 8) {
    int64_t x = 0;
    for (; x + 8 <= Wo; x += 8) {
      __m256 r[8];
#pragma GCC unroll 8
      for (int k = 0; k < 8; ++k) r[k] = _mm256_loadu_ps(src + (o + k) * cs + x);
      transpose8x8_avx2(r);  // r[k]: pixel x+k, channels o..o+7
      float* d = v + x * Co + o;
#pragma GCC unroll 8
      for (int k = 0; k < 8; ++k) _mm256_storeu_ps(d + k * Co, r[k]);
    }
    for (; x < Wo; ++x)
      for (int64_t k = 0; k < 8; ++k) v[x * Co + o + k] = src[(o + k) * cs + x];
  }
  for (; o < Co; ++o)
    for (int64_t x = 0; x < Wo; ++x) v[x * Co + o] = src[o * cs + x];
}
#endif

// w[0..Co) += sum of the m >= 1 rows a[0..m) (row stride Co), summed in row order first.
template <typename acc_t>
inline void add_row_sum(acc_t* __restrict__ w, const acc_t* __restrict__ a, int64_t m, int64_t Co) {
#if SBGAN_X86_AVX2
  if constexpr (std::is_same_v<acc_t, float>) {
    if (cpu_has_avx2()) {
      add_row_sum_avx2(w, a, m, Co);
      return;
    }
  }
#endif
  if (m == 1) {
    for (int64_t o = 0; o < Co; ++o) w[o] += a[o];
    return;
  }
  constexpr int64_t kB = 32;
  for (int64_t o0 = 0; o0 < Co; o0 += kB) {
    const int64_t nb = std::min(kB, Co - o0);
    acc_t s[kB];
    for (int64_t l = 0; l < nb; ++l) s[l] = a[o0 + l];
    for (int64_t x = 1; x < m; ++x)
      for (int64_t l = 0; l < nb; ++l) s[l] += a[x * Co + o0 + l];
    for (int64_t l = 0; l < nb; ++l) w[o0 + l] += s[l];
  }
}

// Backward of output row y (sample n): add vec[x][0..Co) (the upstream gradient of pixel x) into the
// table row gw[i][j][class under tap (i, j)][0..Co) for every in-bounds tap.
template <typename lab_t, typename acc_t>
inline void row_taps_backward(const lab_t* lab, const LabelGeometry& g, const ConvGeometry& c,
                     const std::vector<int64_t>& hs, const std::vector<int64_t>& ws_off, int64_t n,
                     int64_t y, bool has_dc, int64_t dc, int32_t* cls, acc_t* table, acc_t* vec,
                     BadLabels& bad) {
  const int64_t Co = c.Co;
  for (int64_t i = 0; i < c.kh; ++i) {
    const int64_t yy = y + i - c.ph;
    if (yy < 0 || yy >= g.Hr) continue;
    resolve_row(lab, g, hs, ws_off, n, yy, c.K, has_dc, dc, cls, bad);
    for (int64_t j = 0; j < c.kw; ++j) {
      // Output columns x whose tap column xx = x + j - pw lies in [0, Wr).
      const int64_t x0 = std::max<int64_t>(0, c.pw - j);
      const int64_t x1 = std::min<int64_t>(c.Wo, g.Wr + c.pw - j);
      acc_t* tap = table + (i * c.kw + j) * c.C * Co;
      // Runs of output pixels whose tap sees the same class: their gradients are summed first,
      // then added to that class's row once.
      for (int64_t x = x0; x < x1;) {
        const int32_t cl = cls[x + j - c.pw];
        int64_t e = x + 1;
        while (e < x1 && cls[e + j - c.pw] == cl) ++e;
        if (cl >= 0) add_row_sum(tap + static_cast<int64_t>(cl) * Co, vec + x * Co, e - x, Co);
        x = e;
      }
    }
  }
}

// Tap table offsets of output row y: off[x * T + t] (T = kh * kw taps, in (i, j) order) is the
// offset, in elements, of the weight row that tap t of output pixel x adds: wt[i][j][class][:], or
// the all-zero row at `zero_row` for a tap outside the label map or on a bad label. Every pixel
// thus sums exactly T rows (a zero row adds nothing), which keeps the inner loops branch free.
inline void row_tap_offsets(const int32_t* cls, const char* row_ok, const ConvGeometry& c, int64_t Wr,
                            int32_t zero_row, int32_t* off) {
  const int64_t T = c.kh * c.kw, Co = c.Co;
  for (int64_t i = 0; i < c.kh; ++i) {
    const int32_t* cl = cls + i * Wr;
    for (int64_t j = 0; j < c.kw; ++j) {
      const int64_t t = i * c.kw + j;
      const int32_t base = static_cast<int32_t>(t * c.C * Co);
      int32_t* dst = off + t;
      if (!row_ok[i]) {
        for (int64_t x = 0; x < c.Wo; ++x) dst[x * T] = zero_row;
        continue;
      }
      for (int64_t x = 0; x < c.Wo; ++x) {
        const int64_t xx = x + j - c.pw;
        const int32_t k = (xx >= 0 && xx < Wr) ? cl[xx] : -1;
        dst[x * T] = k >= 0 ? base + k * static_cast<int32_t>(Co) : zero_row;
      }
    }
  }
}

inline bool same_taps(const int32_t* a, const int32_t* b, int64_t T) {
  for (int64_t t = 0; t < T; ++t)
    if (a[t] != b[t]) return false;
  return true;
}

// Portable sum of one pixel's T taps: v[0..Co) = bias + sum of table[ox[t] + o] in tap order.
template <typename acc_t>
inline void pixel_sum_generic(const acc_t* table, const int32_t* ox, int64_t T, const acc_t* bias, int64_t Co,
                              acc_t* __restrict__ v) {
  constexpr int64_t kB = 16;
  int64_t o = 0;
  for (; o + kB <= Co; o += kB) {
    acc_t a[kB];
    for (int64_t l = 0; l < kB; ++l) a[l] = bias != nullptr ? bias[o + l] : acc_t(0);
    for (int64_t t = 0; t < T; ++t) {
      const acc_t* __restrict__ src = table + ox[t] + o;
      for (int64_t l = 0; l < kB; ++l) a[l] += src[l];
    }
    for (int64_t l = 0; l < kB; ++l) v[o + l] = a[l];
  }
  for (; o < Co; ++o) {
    acc_t a = bias != nullptr ? bias[o] : acc_t(0);
    for (int64_t t = 0; t < T; ++t) a += table[ox[t] + o];
    v[o] = a;
  }
}

// Portable forward of one output row: out[x][o] = bias[o] + sum over t of table[off[x*T+t] + o],
// summed in tap order in acc_t, for x < Wo, o < Co. A pixel whose taps equal its left neighbour's
// reuses that sum. The distinct sums go to the pixel-major scratch `buf` (pixel x uses row u[x]);
// channels-last rows are then converted pixel by pixel, NCHW rows (channel stride cs) 8 channels
// along the whole row at a time.
template <typename acc_t, typename scalar_t>
void forward_row_generic(const acc_t* table, const int32_t* off, int64_t T, const acc_t* bias, int64_t Co,
                         int64_t Wo, bool channels_last, scalar_t* dst, int64_t cs, acc_t* buf, int32_t* u) {
  int32_t nu = 0;
  for (int64_t x = 0; x < Wo; ++x) {
    const int32_t* ox = off + x * T;
    if (x == 0 || !same_taps(ox, ox - T, T)) pixel_sum_generic(table, ox, T, bias, Co, buf + (nu++) * Co);
    u[x] = nu - 1;
  }
  if (channels_last) {
    for (int64_t x = 0; x < Wo; ++x) {
      const acc_t* v = buf + static_cast<int64_t>(u[x]) * Co;
      scalar_t* d = dst + x * Co;
      for (int64_t o = 0; o < Co; ++o) d[o] = static_cast<scalar_t>(v[o]);
    }
    return;
  }
  constexpr int64_t kB = 8;
  for (int64_t o0 = 0; o0 < Co; o0 += kB) {
    const int64_t no = std::min(kB, Co - o0);
    scalar_t* d = dst + o0 * cs;
    for (int64_t x = 0; x < Wo; ++x) {
      const acc_t* v = buf + static_cast<int64_t>(u[x]) * Co + o0;
      for (int64_t l = 0; l < no; ++l) d[l * cs + x] = static_cast<scalar_t>(v[l]);
    }
  }
}

#if SBGAN_X86_AVX2
// Sum of one pixel's T taps into v[0..Co) (AVX2, fp32): v = bias + sum in tap order.
template <int64_t kT>
__attribute__((target("avx2"))) inline void pixel_sum_avx2(const float* table, const int32_t* ox, int64_t T_rt,
                                                           const float* bias, int64_t Co, float* v) {
  const int64_t T = kT > 0 ? kT : T_rt;
  int64_t o = 0;
  for (; o + 64 <= Co; o += 64) {  // 8 independent chains hide the add latency
    __m256 a[8];
#pragma GCC unroll 8
    for (int k = 0; k < 8; ++k) a[k] = bias != nullptr ? _mm256_loadu_ps(bias + o + 8 * k) : _mm256_setzero_ps();
    for (int64_t t = 0; t < T; ++t) {
      const float* s = table + ox[t] + o;
#pragma GCC unroll 8
      for (int k = 0; k < 8; ++k) a[k] = _mm256_add_ps(a[k], _mm256_loadu_ps(s + 8 * k));
    }
#pragma GCC unroll 8
    for (int k = 0; k < 8; ++k) _mm256_storeu_ps(v + o + 8 * k, a[k]);
  }
  for (; o + 8 <= Co; o += 8) {
    __m256 a = bias != nullptr ? _mm256_loadu_ps(bias + o) : _mm256_setzero_ps();
    for (int64_t t = 0; t < T; ++t) a = _mm256_add_ps(a, _mm256_loadu_ps(table + ox[t] + o));
    _mm256_storeu_ps(v + o, a);
  }
  for (; o < Co; ++o) {
    float s = bias != nullptr ? bias[o] : 0.f;
    for (int64_t t = 0; t < T; ++t) s += table[ox[t] + o];
    v[o] = s;
  }
}

// AVX2 forward of one fp32 output row (same contract and summation order as forward_row_generic).
// Neighbouring pixels of a label map mostly see the same classes under all their taps; such a pixel
// reuses the previous pixel's sum instead of summing again. Channels-last: each pixel's sum is
// written in place (a repeat copies the previous pixel). NCHW: the distinct sums of the row go to
// the pixel-major scratch `buf` (up to Wo x Co floats; pixel x uses row u[x], u has Wo entries),
// then each block of 8 pixels x 8 channels is loaded, transposed in registers and stored as 8
// contiguous values per channel, 8 channels at a time along the whole row (8 sequential store
// streams). Runs only where the CPU reports AVX2.
template <int64_t kT>
__attribute__((target("avx2"))) void forward_row_avx2(const float* table, const int32_t* off, int64_t T_rt,
                                                      const float* bias, int64_t Co, int64_t Wo,
                                                      bool channels_last, float* dst, int64_t cs, float* buf, int32_t* u) {
  const int64_t T = kT > 0 ? kT : T_rt;
  if (channels_last) {
    for (int64_t x = 0; x < Wo; ++x) {
      float* d = dst + x * Co;
      if (x > 0 && same_taps(off + x * T, off + (x - 1) * T, T))
        std::copy(d - Co, d, d);
      else
        pixel_sum_avx2<kT>(table, off + x * T, T, bias, Co, d);
    }
    return;
  }
  int32_t nu = 0;
  for (int64_t x = 0; x < Wo; ++x) {
    const int32_t* ox = off + x * T;
    if (x == 0 || !same_taps(ox, ox - T, T)) pixel_sum_avx2<kT>(table, ox, T, bias, Co, buf + (nu++) * Co);
    u[x] = nu - 1;
  }
  int64_t o = 0;
  for (; o + 8 <= Co; o += 8) {
    float* d = dst + o * cs;
    const float* bo = buf + o;
    int64_t p = 0;
    for (; p + 8 <= Wo; p += 8) {
      __m256 r[8];
#pragma GCC unroll 8
      for (int k = 0; k < 8; ++k) r[k] = _mm256_loadu_ps(bo + static_cast<int64_t>(u[p + k]) * Co);
      transpose8x8_avx2(r);  // r[k][c] (pixel p+k, channel o+c) -> r[c] holds pixels p..p+7
#pragma GCC unroll 8
      for (int c = 0; c < 8; ++c) _mm256_storeu_ps(d + c * cs + p, r[c]);
    }
    for (; p < Wo; ++p)
      for (int64_t c = 0; c < 8; ++c) d[c * cs + p] = bo[static_cast<int64_t>(u[p]) * Co + c];
  }
  for (; o < Co; ++o)  // channels beyond the last multiple of 8
    for (int64_t p = 0; p < Wo; ++p) dst[o * cs + p] = buf[static_cast<int64_t>(u[p]) * Co + o];
}

#endif

// Forward of one output row: the AVX2 kernel for fp32 on CPUs that have it, else the portable one.
template <typename acc_t, typename scalar_t>
inline void forward_row(const acc_t* table, const int32_t* off, int64_t T, const acc_t* bias, int64_t Co,
                        int64_t Wo, bool channels_last, scalar_t* dst, int64_t cs, acc_t* buf, int32_t* u) {
#if SBGAN_X86_AVX2
  if constexpr (std::is_same_v<acc_t, float> && std::is_same_v<scalar_t, float>) {
    if (cpu_has_avx2()) {
      if (T == 9)
        forward_row_avx2<9>(table, off, T, bias, Co, Wo, channels_last, dst, cs, buf, u);
      else
        forward_row_avx2<0>(table, off, T, bias, Co, Wo, channels_last, dst, cs, buf, u);
      return;
    }
  }
#endif
  forward_row_generic(table, off, T, bias, Co, Wo, channels_last, dst, cs, buf, u);
}

template <typename lab_t, typename scalar_t>
void forward_impl(const LabelGeometry& g, const ConvGeometry& c, std::optional<int64_t> dontcare,
                  const at::Tensor& wt, const at::Tensor& bias_acc, at::Tensor& out, bool channels_last) {
  using acc_t = at::opmath_type<scalar_t>;
  const lab_t* lab = g.labels.data_ptr<lab_t>();
  const acc_t* table = wt.data_ptr<acc_t>();
  const acc_t* bias = bias_acc.defined() ? bias_acc.data_ptr<acc_t>() : nullptr;
  scalar_t* o = out.data_ptr<scalar_t>();
  const std::vector<int64_t> hs = g.source_rows();
  std::vector<int64_t> ws_off = g.source_cols();
  for (auto& x : ws_off) x *= g.sW;
  const bool has_dc = dontcare.has_value();
  const int64_t dc = dontcare.value_or(0);
  const int64_t Co = c.Co, Ho = c.Ho, Wo = c.Wo, Wr = g.Wr, kh = c.kh, T = c.kh * c.kw;
  TORCH_CHECK((T * c.C + 1) * Co <= std::numeric_limits<int32_t>::max(),
              "onehot_conv2d: weight too large for the CPU kernel (kh*kw*C*C_out must be < 2^31)");
  const int32_t zero_row = static_cast<int32_t>(T * c.C * Co);  // offset of the zero row at the end of wt
  const int64_t rows = g.N * Ho;
  const int64_t work_per_row = std::max<int64_t>(1, Wo * Co * T);
  const int64_t grain = std::max<int64_t>(1, (int64_t{1} << 16) / work_per_row);
  BadLabels bad;
  std::mutex mu;

  at::parallel_for(0, rows, grain, [&](int64_t begin, int64_t end) {
    std::vector<int32_t> cls(static_cast<size_t>(kh * Wr));
    std::vector<char> row_ok(static_cast<size_t>(kh));
    std::vector<int32_t> off(static_cast<size_t>(Wo * T));
    std::vector<acc_t> buf(static_cast<size_t>(Wo * Co));  // scratch of the row kernels
    std::vector<int32_t> u(static_cast<size_t>(Wo));
    // Resolved label rows, slot yy % kh holds the row with key n * Hr + yy (each row is resolved
    // once per chunk, not once per tap row).
    std::vector<int32_t> ring(static_cast<size_t>(kh * Wr));
    std::vector<int64_t> ring_key(static_cast<size_t>(kh), -1);
    BadLabels local;
    for (int64_t r = begin; r < end; ++r) {
      const int64_t n = r / Ho, y = r % Ho;
      for (int64_t i = 0; i < kh; ++i) {  // the label rows under the taps
        const int64_t yy = y + i - c.ph;
        row_ok[static_cast<size_t>(i)] = yy >= 0 && yy < g.Hr;
        if (!row_ok[static_cast<size_t>(i)]) continue;
        const size_t slot = static_cast<size_t>(yy % kh);
        int32_t* row = ring.data() + static_cast<int64_t>(slot) * Wr;
        if (ring_key[slot] != n * g.Hr + yy) {
          resolve_row(lab, g, hs, ws_off, n, yy, c.K, has_dc, dc, row, local);
          ring_key[slot] = n * g.Hr + yy;
        }
        std::copy(row, row + Wr, cls.data() + i * Wr);
      }
      row_tap_offsets(cls.data(), row_ok.data(), c, Wr, zero_row, off.data());
      if (channels_last)
        forward_row(table, off.data(), T, bias, Co, Wo, true, o + r * Wo * Co, 0, buf.data(), u.data());
      else
        forward_row(table, off.data(), T, bias, Co, Wo, false, o + n * Co * Ho * Wo + y * Wo, Ho * Wo,
                    buf.data(), u.data());
    }
    if (local.any) {
      std::lock_guard<std::mutex> lock(mu);
      bad.merge(local);
    }
  });
  raise_if_bad("onehot_conv2d", bad, c.K, dontcare);
}

at::Tensor onehot_conv2d_cpu(const at::Tensor& labels, const at::Tensor& weight,
                             const std::optional<at::Tensor>& bias, std::optional<int64_t> dontcare,
                             at::OptionalIntArrayRef size, at::IntArrayRef padding, c10::string_view mode) {
  TORCH_CHECK(labels.device().is_cpu() && weight.device().is_cpu(),
              "sbgan_fast::onehot_conv2d (CPU kernel): labels and weight must be CPU tensors");
  TORCH_CHECK_TYPE(at::isFloatingType(weight.scalar_type()),
                   "onehot_conv2d: weight must be a floating-point tensor, got ", weight.scalar_type());
  const LabelGeometry g = label_geometry("onehot_conv2d", labels, size, mode);
  const ConvGeometry c = conv_geometry("onehot_conv2d", g, weight.sizes(), dontcare, padding);
  const auto acc_type = at::toOpMathType(weight.scalar_type());
  // wt[i][j][class][o], contiguous, accumulation type, followed by one all-zero row of C_out.
  const int64_t table_rows = c.kh * c.kw * c.C;
  at::Tensor wt = at::empty({table_rows + 1, c.Co}, weight.options().dtype(acc_type));
  wt.narrow(0, 0, table_rows).view({c.kh, c.kw, c.C, c.Co}).copy_(weight.permute({2, 3, 1, 0}));
  wt.narrow(0, table_rows, 1).zero_();
  at::Tensor bias_acc;
  if (bias.has_value() && bias->defined()) {
    TORCH_CHECK(bias->device().is_cpu(), "onehot_conv2d: bias must be a CPU tensor like weight");
    TORCH_CHECK_VALUE(bias->dim() == 1 && bias->size(0) == c.Co, "onehot_conv2d: bias must be (C_out,) = (",
                      c.Co, ",), got shape ", bias->sizes());
    bias_acc = bias->to(acc_type).contiguous();
  }
  const bool channels_last = weight.suggest_memory_format() == at::MemoryFormat::ChannelsLast;
  at::Tensor out = at::empty({g.N, c.Co, c.Ho, c.Wo}, weight.options(),
                             channels_last ? at::MemoryFormat::ChannelsLast : at::MemoryFormat::Contiguous);
  if (out.numel() == 0) return out;
  advise_huge_pages(out);
  AT_DISPATCH_INTEGRAL_TYPES(g.labels.scalar_type(), "sbgan_fast::onehot_conv2d labels", [&] {
    using lab_t = scalar_t;
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, weight.scalar_type(),
                                    "sbgan_fast::onehot_conv2d", [&] {
      forward_impl<lab_t, scalar_t>(g, c, dontcare, wt, bias_acc, out, channels_last);
    });
  });
  return out;
}

template <typename lab_t, typename scalar_t>
void backward_impl(const LabelGeometry& g, const ConvGeometry& c, std::optional<int64_t> dontcare,
                   const at::Tensor& grad_out, at::Tensor& gw_acc, at::Tensor& gb_acc) {
  using acc_t = at::opmath_type<scalar_t>;
  const lab_t* lab = g.labels.data_ptr<lab_t>();
  const scalar_t* go = grad_out.data_ptr<scalar_t>();
  const int64_t gsN = grad_out.stride(0), gsC = grad_out.stride(1), gsH = grad_out.stride(2),
                gsW = grad_out.stride(3);
  const std::vector<int64_t> hs = g.source_rows();
  std::vector<int64_t> ws_off = g.source_cols();
  for (auto& x : ws_off) x *= g.sW;
  const bool has_dc = dontcare.has_value();
  const int64_t dc = dontcare.value_or(0);
  const int64_t Co = c.Co, Ho = c.Ho, Wo = c.Wo;
  const int64_t rows = g.N * Ho;
  const int64_t table_size = c.kh * c.kw * c.C * Co;
  // The number of blocks depends on the shapes only (never on the thread count), so the result is
  // the same bits on any machine: at most 32, at most 256 MiB of partial tables, and few enough that
  // zeroing and summing the tables costs little next to the accumulation itself (one table per
  // kWorkPerTable adds per table entry).
  constexpr int64_t kWorkPerTable = 32;
  const int64_t work = rows * Wo * c.kh * c.kw * Co;
  const int64_t max_blocks_mem = std::max<int64_t>(
      1, (int64_t{256} << 20) / static_cast<int64_t>((table_size + Co) * sizeof(acc_t)));
  const int64_t max_blocks_work = std::max<int64_t>(1, work / (kWorkPerTable * (table_size + Co)));
  int64_t nblocks = std::max<int64_t>(1, std::min<int64_t>({rows, 32, max_blocks_mem, max_blocks_work}));
  if (nblocks > 4) nblocks -= nblocks % 4;  // even split over 2 or 4 threads
  at::Tensor partial = at::zeros({nblocks, table_size + Co}, gw_acc.options());
  acc_t* part = partial.data_ptr<acc_t>();
  BadLabels bad;
  std::mutex mu;

  at::parallel_for(0, nblocks, 1, [&](int64_t b0, int64_t b1) {
    std::vector<acc_t> vec(static_cast<size_t>(Wo * Co));
    std::vector<int32_t> cls(static_cast<size_t>(g.Wr));
    BadLabels local;
    for (int64_t b = b0; b < b1; ++b) {
      acc_t* table = part + b * (table_size + Co);
      acc_t* gb = table + table_size;
      const int64_t r0 = rows * b / nblocks, r1 = rows * (b + 1) / nblocks;
      for (int64_t r = r0; r < r1; ++r) {
        const int64_t n = r / Ho, y = r % Ho;
        acc_t* v = vec.data();
        const scalar_t* src = go + n * gsN + y * gsH;
        bool converted = false;
#if SBGAN_X86_AVX2
        if constexpr (std::is_same_v<scalar_t, float>) {
          if (gsW == 1 && cpu_has_avx2()) {  // NCHW fp32 gradient: register transposes
            nchw_row_to_pixel_major_avx2(src, gsC, Co, Wo, v);
            converted = true;
          }
        }
#endif
        if (converted) {
        } else if (gsC == 1) {  // channels-last gradient: rows of C_out are contiguous
          for (int64_t x = 0; x < Wo; ++x)
            for (int64_t o = 0; o < Co; ++o) v[x * Co + o] = static_cast<acc_t>(src[x * gsW + o]);
        } else {
          for (int64_t o = 0; o < Co; ++o)
            for (int64_t x = 0; x < Wo; ++x) v[x * Co + o] = static_cast<acc_t>(src[o * gsC + x * gsW]);
        }
        add_row_sum(gb, v, Wo, Co);
        row_taps_backward(lab, g, c, hs, ws_off, n, y, has_dc, dc, cls.data(), table, v, local);
      }
    }
    if (local.any) {
      std::lock_guard<std::mutex> lock(mu);
      bad.merge(local);
    }
  });
  raise_if_bad("onehot_conv2d", bad, c.K, dontcare);

  // Sum the block tables in block order.
  acc_t* gw = gw_acc.data_ptr<acc_t>();
  acc_t* gbo = gb_acc.data_ptr<acc_t>();
  const int64_t total = table_size + Co;
  at::parallel_for(0, total, 4096, [&](int64_t e0, int64_t e1) {
    for (int64_t e = e0; e < e1; ++e) {
      acc_t s = 0;
      for (int64_t b = 0; b < nblocks; ++b) s += part[b * total + e];
      if (e < table_size) gw[e] = s; else gbo[e - table_size] = s;
    }
  });
}

std::tuple<at::Tensor, at::Tensor> onehot_conv2d_backward_cpu(
    const at::Tensor& grad_out, const at::Tensor& labels, const at::Tensor& weight,
    std::optional<int64_t> dontcare, at::OptionalIntArrayRef size, at::IntArrayRef padding, c10::string_view mode) {
  TORCH_CHECK(grad_out.device().is_cpu() && labels.device().is_cpu() && weight.device().is_cpu(),
              "sbgan_fast::onehot_conv2d_backward (CPU kernel): all tensors must be CPU tensors");
  const LabelGeometry g = label_geometry("onehot_conv2d", labels, size, mode);
  const ConvGeometry c = conv_geometry("onehot_conv2d", g, weight.sizes(), dontcare, padding);
  TORCH_CHECK_VALUE(grad_out.dim() == 4 && grad_out.size(0) == g.N && grad_out.size(1) == c.Co &&
                        grad_out.size(2) == c.Ho && grad_out.size(3) == c.Wo,
                    "onehot_conv2d backward: grad_out must have shape (", g.N, ", ", c.Co, ", ", c.Ho, ", ",
                    c.Wo, "), got ", grad_out.sizes());
  const auto acc_type = at::toOpMathType(weight.scalar_type());
  const at::Tensor grad = grad_out.scalar_type() == weight.scalar_type() ? grad_out
                                                                         : grad_out.to(weight.scalar_type());
  at::Tensor gw_acc = at::empty({c.kh, c.kw, c.C, c.Co}, weight.options().dtype(acc_type));
  at::Tensor gb_acc = at::empty({c.Co}, weight.options().dtype(acc_type));
  if (grad.numel() == 0) {
    gw_acc.zero_();
    gb_acc.zero_();
  } else {
    AT_DISPATCH_INTEGRAL_TYPES(g.labels.scalar_type(), "sbgan_fast::onehot_conv2d_backward labels", [&] {
      using lab_t = scalar_t;
      AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, weight.scalar_type(),
                                      "sbgan_fast::onehot_conv2d_backward", [&] {
        backward_impl<lab_t, scalar_t>(g, c, dontcare, grad, gw_acc, gb_acc);
      });
    });
  }
  at::Tensor grad_weight = gw_acc.permute({3, 2, 0, 1}).to(weight.scalar_type())
                               .contiguous(weight.suggest_memory_format());
  at::Tensor grad_bias = gb_acc.to(weight.scalar_type());
  return {grad_weight, grad_bias};
}

}  // namespace

TORCH_LIBRARY_IMPL(sbgan_fast, CPU, m) {
  m.impl("onehot_conv2d", &onehot_conv2d_cpu);
  m.impl("onehot_conv2d_backward", &onehot_conv2d_backward_cpu);
}

}  // namespace sbgan_fast
