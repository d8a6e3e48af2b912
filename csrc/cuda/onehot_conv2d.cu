// CUDA kernels of sbgan_fast::onehot_conv2d and its backward (schemas in csrc/sbgan_ops.cpp).
//
// 1. resolve_kernel: one thread per pixel of the resized label map (its source pixel from the resize
//    tables of rule `mode`, see cuda_common.cuh) writes its class index (int32, (N, H', W'), -1 for
//    a bad label, which is also recorded for the error raised afterwards).
//    This small map (1/C_out of the output) is read by the taps of the next kernels.
// 2. forward_kernel: one thread per output value out[n, o, y, x] = bias[o] + sum over in-bounds taps
//    of wt[i][j][cls(n, y+i-ph, x+j-pw)][o], with wt = weight pre-transposed to (kh, kw, C, C_out) in
//    the accumulation type (fp32; fp64 for fp64 weights). The thread order follows the output's
//    memory format (x fastest for NCHW, o fastest for channels-last), so stores coalesce.
// 3. backward_kernel: one thread per grad_out value (o fastest: the threads of a warp hit distinct
//    addresses) adds it with atomicAdd into gw[i][j][cls][o] for each in-bounds tap. The fp32 atomics
//    make grad_weight's last bits depend on the order of the additions (not bitwise deterministic, as
//    for torch's own scatter-add based gradients on CUDA). grad_bias = grad_out.sum((0, 2, 3)) in the
//    accumulation type (deterministic).
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <torch/library.h>

#include "cuda_common.cuh"

namespace sbgan_fast {
namespace cuda {
namespace {

template <typename lab_t>
__global__ void resolve_kernel(const lab_t* __restrict__ lab, DeviceLabels d, int32_t* __restrict__ cls,
                               long long* flags) {
  const int64_t total = d.N * d.Hr * d.Wr;
  for (int64_t p = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; p < total;
       p += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t x = p % d.Wr;
    const int64_t t = p / d.Wr;
    const int64_t y = t % d.Hr;
    const int64_t n = t / d.Hr;
    cls[p] = class_at(lab, d, n, y, x, flags);
  }
}

struct DeviceConv {
  int64_t N, Hr, Wr;      // resized label map
  int64_t Co, C, kh, kw;  // weight
  int64_t ph, pw, Ho, Wo;
};

template <typename scalar_t, typename acc_t>
__global__ void forward_kernel(const int32_t* __restrict__ cls, const acc_t* __restrict__ wt,
                               const acc_t* __restrict__ bias, DeviceConv c, bool channels_last,
                               scalar_t* __restrict__ out) {
  const int64_t total = c.N * c.Co * c.Ho * c.Wo;
  for (int64_t p = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; p < total;
       p += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    int64_t n, o, y, x;
    if (channels_last) {  // p = ((n * Ho + y) * Wo + x) * Co + o
      o = p % c.Co;
      int64_t t = p / c.Co;
      x = t % c.Wo;
      t /= c.Wo;
      y = t % c.Ho;
      n = t / c.Ho;
    } else {  // p = ((n * Co + o) * Ho + y) * Wo + x
      x = p % c.Wo;
      int64_t t = p / c.Wo;
      y = t % c.Ho;
      t /= c.Ho;
      o = t % c.Co;
      n = t / c.Co;
    }
    acc_t acc = bias != nullptr ? bias[o] : acc_t(0);
    const int32_t* cn = cls + n * c.Hr * c.Wr;
    for (int64_t i = 0; i < c.kh; ++i) {
      const int64_t yy = y + i - c.ph;
      if (yy < 0 || yy >= c.Hr) continue;
      for (int64_t j = 0; j < c.kw; ++j) {
        const int64_t xx = x + j - c.pw;
        if (xx < 0 || xx >= c.Wr) continue;
        const int32_t k = cn[yy * c.Wr + xx];
        if (k < 0) continue;
        acc += wt[((i * c.kw + j) * c.C + k) * c.Co + o];
      }
    }
    out[p] = static_cast<scalar_t>(acc);
  }
}

template <typename scalar_t, typename acc_t>
__global__ void backward_kernel(const int32_t* __restrict__ cls, const scalar_t* __restrict__ grad,
                                int64_t gsN, int64_t gsC, int64_t gsH, int64_t gsW, DeviceConv c,
                                acc_t* __restrict__ gw) {
  const int64_t total = c.N * c.Co * c.Ho * c.Wo;
  for (int64_t p = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; p < total;
       p += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t o = p % c.Co;
    int64_t t = p / c.Co;
    const int64_t x = t % c.Wo;
    t /= c.Wo;
    const int64_t y = t % c.Ho;
    const int64_t n = t / c.Ho;
    const acc_t g = static_cast<acc_t>(grad[n * gsN + o * gsC + y * gsH + x * gsW]);
    if (g == acc_t(0)) continue;
    const int32_t* cn = cls + n * c.Hr * c.Wr;
    for (int64_t i = 0; i < c.kh; ++i) {
      const int64_t yy = y + i - c.ph;
      if (yy < 0 || yy >= c.Hr) continue;
      for (int64_t j = 0; j < c.kw; ++j) {
        const int64_t xx = x + j - c.pw;
        if (xx < 0 || xx >= c.Wr) continue;
        const int32_t k = cn[yy * c.Wr + xx];
        if (k < 0) continue;
        atomicAdd(gw + ((i * c.kw + j) * c.C + k) * c.Co + o, g);
      }
    }
  }
}

DeviceConv device_conv(const LabelGeometry& g, const ConvGeometry& c) {
  return DeviceConv{g.N, g.Hr, g.Wr, c.Co, c.C, c.kh, c.kw, c.ph, c.pw, c.Ho, c.Wo};
}

// Class map (N, H', W') int32 of the resized labels; raises naming a bad label value.
at::Tensor resolve_classes(const char* op, const LabelGeometry& g, int64_t num_classes,
                           std::optional<int64_t> dontcare) {
  at::Tensor cls = at::empty({g.N, g.Hr, g.Wr}, g.labels.options().dtype(at::kInt));
  if (cls.numel() == 0) return cls;
  const at::Tensor src = device_source_indices(g);
  const DeviceLabels d = device_labels(g, src, num_classes, dontcare);
  at::Tensor flags = make_bad_flags(g.labels);
  long long* f = reinterpret_cast<long long*>(flags.data_ptr<int64_t>());
  const cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  AT_DISPATCH_INTEGRAL_TYPES(g.labels.scalar_type(), "sbgan_fast::onehot_conv2d labels", [&] {
    resolve_kernel<scalar_t><<<blocks_for(cls.numel()), kThreads, 0, stream>>>(
        g.labels.data_ptr<scalar_t>(), d, cls.data_ptr<int32_t>(), f);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  raise_if_bad_flags(op, flags, num_classes, dontcare);
  return cls;
}

at::Tensor onehot_conv2d_cuda(const at::Tensor& labels, const at::Tensor& weight,
                              const std::optional<at::Tensor>& bias, std::optional<int64_t> dontcare,
                              at::OptionalIntArrayRef size, at::IntArrayRef padding,
                              c10::string_view mode) {
  TORCH_CHECK(labels.is_cuda() && weight.is_cuda() && labels.device() == weight.device(),
              "sbgan_fast::onehot_conv2d (CUDA kernel): labels and weight must be on the same CUDA device, "
              "got ", labels.device(), " and ", weight.device());
  TORCH_CHECK_TYPE(at::isFloatingType(weight.scalar_type()),
                   "onehot_conv2d: weight must be a floating-point tensor, got ", weight.scalar_type());
  const c10::cuda::CUDAGuard guard(weight.device());
  const LabelGeometry g = label_geometry("onehot_conv2d", labels, size, mode);
  const ConvGeometry c = conv_geometry("onehot_conv2d", g, weight.sizes(), dontcare, padding);
  const auto acc_type = at::toOpMathType(weight.scalar_type());
  const at::Tensor wt = weight.permute({2, 3, 1, 0}).to(acc_type).contiguous();
  at::Tensor bias_acc;
  if (bias.has_value() && bias->defined()) {
    TORCH_CHECK(bias->device() == weight.device(), "onehot_conv2d: bias must be on ", weight.device(),
                " like weight, got ", bias->device());
    TORCH_CHECK_VALUE(bias->dim() == 1 && bias->size(0) == c.Co, "onehot_conv2d: bias must be (C_out,) = (",
                      c.Co, ",), got shape ", bias->sizes());
    bias_acc = bias->to(acc_type).contiguous();
  }
  const bool channels_last = weight.suggest_memory_format() == at::MemoryFormat::ChannelsLast;
  at::Tensor out = at::empty({g.N, c.Co, c.Ho, c.Wo}, weight.options(),
                             channels_last ? at::MemoryFormat::ChannelsLast : at::MemoryFormat::Contiguous);
  if (out.numel() == 0) return out;
  const at::Tensor cls = resolve_classes("onehot_conv2d", g, c.K, dontcare);
  const DeviceConv dc = device_conv(g, c);
  const cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, weight.scalar_type(), "sbgan_fast::onehot_conv2d", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    forward_kernel<scalar_t, acc_t><<<blocks_for(out.numel()), kThreads, 0, stream>>>(
        cls.data_ptr<int32_t>(), wt.data_ptr<acc_t>(), bias_acc.defined() ? bias_acc.data_ptr<acc_t>() : nullptr,
        dc, channels_last, out.data_ptr<scalar_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return out;
}

std::tuple<at::Tensor, at::Tensor> onehot_conv2d_backward_cuda(
    const at::Tensor& grad_out, const at::Tensor& labels, const at::Tensor& weight,
    std::optional<int64_t> dontcare, at::OptionalIntArrayRef size, at::IntArrayRef padding,
                              c10::string_view mode) {
  TORCH_CHECK(grad_out.is_cuda() && labels.is_cuda() && weight.is_cuda() &&
                  grad_out.device() == weight.device() && labels.device() == weight.device(),
              "sbgan_fast::onehot_conv2d_backward (CUDA kernel): all tensors must be on the same CUDA device");
  const c10::cuda::CUDAGuard guard(weight.device());
  const LabelGeometry g = label_geometry("onehot_conv2d", labels, size, mode);
  const ConvGeometry c = conv_geometry("onehot_conv2d", g, weight.sizes(), dontcare, padding);
  TORCH_CHECK_VALUE(grad_out.dim() == 4 && grad_out.size(0) == g.N && grad_out.size(1) == c.Co &&
                        grad_out.size(2) == c.Ho && grad_out.size(3) == c.Wo,
                    "onehot_conv2d backward: grad_out must have shape (", g.N, ", ", c.Co, ", ", c.Ho, ", ",
                    c.Wo, "), got ", grad_out.sizes());
  const auto acc_type = at::toOpMathType(weight.scalar_type());
  const at::Tensor grad = grad_out.scalar_type() == weight.scalar_type() ? grad_out
                                                                         : grad_out.to(weight.scalar_type());
  at::Tensor gw = at::zeros({c.kh, c.kw, c.C, c.Co}, weight.options().dtype(acc_type));
  at::Tensor gb = grad.sum(at::IntArrayRef{0, 2, 3}, /*keepdim=*/false, acc_type);
  if (grad.numel() > 0) {
    const at::Tensor cls = resolve_classes("onehot_conv2d", g, c.K, dontcare);
    const DeviceConv dc = device_conv(g, c);
    const cudaStream_t stream = at::cuda::getCurrentCUDAStream();
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, weight.scalar_type(),
                                    "sbgan_fast::onehot_conv2d_backward", [&] {
      using acc_t = at::opmath_type<scalar_t>;
      backward_kernel<scalar_t, acc_t><<<blocks_for(grad.numel()), kThreads, 0, stream>>>(
          cls.data_ptr<int32_t>(), grad.data_ptr<scalar_t>(), grad.stride(0), grad.stride(1), grad.stride(2),
          grad.stride(3), dc, gw.data_ptr<acc_t>());
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  }
  at::Tensor grad_weight = gw.permute({3, 2, 0, 1}).to(weight.scalar_type())
                               .contiguous(weight.suggest_memory_format());
  return {grad_weight, gb.to(weight.scalar_type())};
}

}  // namespace
}  // namespace cuda

TORCH_LIBRARY_IMPL(sbgan_fast, CUDA, m) {
  m.impl("onehot_conv2d", &cuda::onehot_conv2d_cuda);
  m.impl("onehot_conv2d_backward", &cuda::onehot_conv2d_backward_cuda);
}

}  // namespace sbgan_fast
