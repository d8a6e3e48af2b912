// Device-side helpers of the CUDA kernels of sbgan_fast._C.
#pragma once

#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>

#include <climits>

#include "../common.h"

namespace sbgan_fast {
namespace cuda {

constexpr int kThreads = 256;

// Grid size for a grid-stride loop over `total` items (at least 1 block).
inline unsigned int blocks_for(int64_t total) {
  const int64_t b = (total + kThreads - 1) / kThreads;
  const int64_t cap = int64_t{1} << 20;  // grid-stride loops cover the rest
  return static_cast<unsigned int>(std::max<int64_t>(1, std::min(b, cap)));
}

// Device record of bad label values: [0] = smallest, [1] = largest (int64). Initialised by
// make_bad_flags on the current stream; read back (one synchronisation) by raise_if_bad_flags.
static __global__ void init_bad_flags_kernel(long long* flags) {
  flags[0] = LLONG_MAX;
  flags[1] = LLONG_MIN;
}

inline at::Tensor make_bad_flags(const at::Tensor& like) {
  at::Tensor flags = at::empty({2}, like.options().dtype(at::kLong));
  init_bad_flags_kernel<<<1, 1, 0, at::cuda::getCurrentCUDAStream()>>>(
      reinterpret_cast<long long*>(flags.data_ptr<int64_t>()));
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return flags;
}

__device__ __forceinline__ void record_bad(long long* flags, int64_t v) {
  atomicMin(flags + 0, static_cast<long long>(v));
  atomicMax(flags + 1, static_cast<long long>(v));
}

inline void raise_if_bad_flags(const char* op, const at::Tensor& flags, int64_t num_classes,
                               std::optional<int64_t> dontcare) {
  const at::Tensor host = flags.cpu();  // synchronises with the kernels that wrote it
  const int64_t* f = host.data_ptr<int64_t>();
  BadLabels bad;
  if (f[0] <= f[1]) {
    bad.any = true;
    bad.min_bad = f[0];
    bad.max_bad = f[1];
  }
  raise_if_bad(op, bad, num_classes, dontcare);
}

// Source row and column indices of the resize on the device: one int64 tensor of H' + W' values,
// rows first, computed on the host by source_indices (../common.h, the same arithmetic as the CPU
// kernels and the reference) and copied asynchronously from pinned memory on the current stream.
// Undefined when the map is not resized (every source index is then the output index).
inline at::Tensor device_source_indices(const LabelGeometry& g) {
  if (!g.resized()) return at::Tensor();
  const std::vector<int64_t> rows = g.source_rows();
  const std::vector<int64_t> cols = g.source_cols();
  at::Tensor host = at::empty({g.Hr + g.Wr}, at::TensorOptions().dtype(at::kLong).pinned_memory(true));
  int64_t* h = host.data_ptr<int64_t>();
  std::copy(rows.begin(), rows.end(), h);
  std::copy(cols.begin(), cols.end(), h + g.Hr);
  return host.to(g.labels.device(), /*non_blocking=*/true);
}

// Label geometry passed by value to kernels.
struct DeviceLabels {
  int64_t N, H, W, sN, sH, sW, Hr, Wr;
  const int64_t* src_h;  // (H',) source rows, or nullptr: row y reads row y
  const int64_t* src_w;  // (W',) source columns, or nullptr: column x reads column x
  int64_t K;
  bool has_dc;
  int64_t dc;
};

// `src` from device_source_indices(g) (must stay alive until the kernels using it are enqueued).
inline DeviceLabels device_labels(const LabelGeometry& g, const at::Tensor& src, int64_t num_classes,
                                  std::optional<int64_t> dontcare) {
  const int64_t* s = src.defined() ? src.data_ptr<int64_t>() : nullptr;
  return DeviceLabels{g.N, g.H, g.W, g.sN, g.sH, g.sW, g.Hr, g.Wr, s, s != nullptr ? s + g.Hr : nullptr,
                      num_classes, dontcare.has_value(), dontcare.value_or(0)};
}

// Class index at (n, y, x) of the resized map; records and returns -1 for a bad label.
template <typename lab_t>
__device__ __forceinline__ int32_t class_at(const lab_t* __restrict__ lab, const DeviceLabels& d, int64_t n,
                                            int64_t y, int64_t x, long long* flags) {
  const int64_t sy = d.src_h != nullptr ? d.src_h[y] : y;
  const int64_t sx = d.src_w != nullptr ? d.src_w[x] : x;
  const int64_t v = static_cast<int64_t>(lab[n * d.sN + sy * d.sH + sx * d.sW]);
  const int32_t c = resolve_label(v, d.K, d.has_dc, d.dc);
  if (c < 0) record_bad(flags, v);
  return c;
}

}  // namespace cuda
}  // namespace sbgan_fast
