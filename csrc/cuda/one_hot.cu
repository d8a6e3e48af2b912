// CUDA kernel of sbgan_fast::one_hot (schema in csrc/sbgan_ops.cpp).
//
// One thread per output pixel (n, y, x) of the resized map: it resolves its label once (resize by
// the rule `mode` through the source index tables of cuda_common.cuh, dontcare, range check) and
// writes all C = K (+1) values of the pixel.
//   NCHW:          consecutive threads take consecutive x, so each channel's stores coalesce.
//   channels-last: a thread writes its C contiguous values.
// A bad label leaves its pixel all-zero and is recorded with 64-bit atomicMin/atomicMax in a
// two-value device buffer; after the kernel the buffer is copied to the host (one synchronisation)
// and a ValueError names the value. Nothing is ever written out of bounds.
#include <ATen/Dispatch.h>
#include <torch/library.h>

#include "cuda_common.cuh"

namespace sbgan_fast {
namespace cuda {
namespace {

template <typename lab_t, typename out_t>
__global__ void one_hot_kernel(const lab_t* __restrict__ lab, DeviceLabels d, int64_t C, bool channels_last,
                               out_t* __restrict__ out, long long* flags) {
  const int64_t total = d.N * d.Hr * d.Wr;
  const int64_t plane = d.Hr * d.Wr;
  const out_t one = static_cast<out_t>(1);
  const out_t zero = static_cast<out_t>(0);
  for (int64_t p = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; p < total;
       p += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t x = p % d.Wr;
    const int64_t t = p / d.Wr;
    const int64_t y = t % d.Hr;
    const int64_t n = t / d.Hr;
    const int32_t c = class_at(lab, d, n, y, x, flags);
    if (channels_last) {
      out_t* o = out + p * C;
      for (int64_t k = 0; k < C; ++k) o[k] = (k == c) ? one : zero;
    } else {
      out_t* o = out + n * C * plane + y * d.Wr + x;
      for (int64_t k = 0; k < C; ++k) o[k * plane] = (k == c) ? one : zero;
    }
  }
}

at::Tensor one_hot_cuda(const at::Tensor& labels, int64_t num_classes, std::optional<int64_t> dontcare,
                        at::OptionalIntArrayRef size, at::ScalarType dtype, bool channels_last,
                        c10::string_view mode) {
  TORCH_CHECK(labels.is_cuda(), "sbgan_fast::one_hot (CUDA kernel): labels must be a CUDA tensor");
  TORCH_CHECK_VALUE(num_classes > 0, "one_hot: num_classes must be positive, got ", num_classes);
  const c10::cuda::CUDAGuard guard(labels.device());
  const LabelGeometry g = label_geometry("one_hot", labels, size, mode);
  const int64_t C = num_classes + (dontcare.has_value() ? 1 : 0);
  const auto fmt = channels_last ? at::MemoryFormat::ChannelsLast : at::MemoryFormat::Contiguous;
  at::Tensor out = at::empty({g.N, C, g.Hr, g.Wr}, labels.options().dtype(dtype), fmt);
  if (out.numel() == 0) return out;
  const at::Tensor src = device_source_indices(g);
  const DeviceLabels d = device_labels(g, src, num_classes, dontcare);
  at::Tensor flags = make_bad_flags(labels);
  long long* f = reinterpret_cast<long long*>(flags.data_ptr<int64_t>());
  const int64_t pixels = g.N * g.Hr * g.Wr;
  const cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  AT_DISPATCH_INTEGRAL_TYPES(g.labels.scalar_type(), "sbgan_fast::one_hot labels", [&] {
    using lab_t = scalar_t;
    AT_DISPATCH_FLOATING_TYPES_AND4(at::kHalf, at::kBFloat16, at::kByte, at::kBool, dtype,
                                    "sbgan_fast::one_hot out", [&] {
      one_hot_kernel<lab_t, scalar_t><<<blocks_for(pixels), kThreads, 0, stream>>>(
          g.labels.data_ptr<lab_t>(), d, C, channels_last, out.data_ptr<scalar_t>(), f);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  });
  raise_if_bad_flags("one_hot", flags, num_classes, dontcare);
  return out;
}

}  // namespace
}  // namespace cuda

TORCH_LIBRARY_IMPL(sbgan_fast, CUDA, m) { m.impl("one_hot", &cuda::one_hot_cuda); }

}  // namespace sbgan_fast
