// CPU kernels of sbgan_fast::onehot_conv2d and its backward (schemas in csrc/sbgan_ops.cpp).
//
// A convolution over a one-hot map picks, for each tap (i, j), one weight column: the one of the
// class under the tap. With the weight pre-transposed to wt[i][j][c][:] (C_out contiguous, in the
// accumulation type acc_t = fp32, or fp64 for fp64 weights):
//   out[n, :, y, x] = bias + sum over in-bounds taps of wt[i][j][cls(n, y+i-ph, x+j-pw)][:]
// Work is parallel over output rows (n, y). For each output pixel the (at most kh*kw) weight rows
// under its taps are summed in blocks of 16 channels held in registers, into a tile of 16 pixels x
// C_out that is written once: directly for a channels-last output, transposed (16 contiguous values
// per channel) for NCHW. The label rows under the taps are resolved (resize, dontcare, range check)
// into a small buffer; every label of the resized map is read by some tap, so every one is checked.
// Bad labels contribute nothing and raise a ValueError after the pass. Large outputs are advised to
// use 2 MiB pages (see cpu_utils.h).
//
// Backward (first order): grad_weight[:, c, i, j] = sum of grad_out[n, :, y, x] over the output
// pixels whose tap (i, j) sees class c; grad_bias = sum of grad_out. Deterministic: the rows are
// split into a number of blocks that depends on the shapes only (never on the thread count), each block accumulates
// into its own buffer in a fixed order, and the buffers are summed in block order.
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <mutex>

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
      for (int64_t x = x0; x < x1; ++x) {
        const int32_t cl = cls[x + j - c.pw];
        if (cl < 0) continue;
        acc_t* __restrict__ w = tap + static_cast<int64_t>(cl) * Co;
        acc_t* __restrict__ a = vec + x * Co;
#pragma omp simd
        for (int64_t o = 0; o < Co; ++o) w[o] += a[o];
      }
    }
  }
}

// Forward of one output pixel: a[0..Co) = bias + sum of the m weight rows w[0..m) (each Co long).
// Blocks of 16 channels are summed in registers; every tap adds in the same (i, j) order.
template <typename acc_t>
inline void sum_rows(const acc_t* const* w, int64_t m, const acc_t* bias, int64_t Co, acc_t* __restrict__ a) {
  constexpr int64_t kLanes = 16;
  int64_t o = 0;
  for (; o + kLanes <= Co; o += kLanes) {
    acc_t v[kLanes];
    for (int64_t l = 0; l < kLanes; ++l) v[l] = bias != nullptr ? bias[o + l] : acc_t(0);
    for (int64_t t = 0; t < m; ++t) {
      const acc_t* __restrict__ src = w[t] + o;
      for (int64_t l = 0; l < kLanes; ++l) v[l] += src[l];
    }
    for (int64_t l = 0; l < kLanes; ++l) a[o + l] = v[l];
  }
  for (; o < Co; ++o) {
    acc_t v = bias != nullptr ? bias[o] : acc_t(0);
    for (int64_t t = 0; t < m; ++t) v += w[t][o];
    a[o] = v;
  }
}

template <typename lab_t, typename scalar_t>
void forward_impl(const LabelGeometry& g, const ConvGeometry& c, std::optional<int64_t> dontcare,
                  const at::Tensor& wt, const at::Tensor& bias_acc, at::Tensor& out, bool channels_last) {
  using acc_t = at::opmath_type<scalar_t>;
  constexpr int64_t kTile = 16;  // output pixels per tile (the NCHW store writes kTile contiguous values)
  const lab_t* lab = g.labels.data_ptr<lab_t>();
  const acc_t* table = wt.data_ptr<acc_t>();
  const acc_t* bias = bias_acc.defined() ? bias_acc.data_ptr<acc_t>() : nullptr;
  scalar_t* o = out.data_ptr<scalar_t>();
  const std::vector<int64_t> hs = source_indices(g.H, g.Hr, g.scale_h);
  std::vector<int64_t> ws_off = source_indices(g.W, g.Wr, g.scale_w);
  for (auto& x : ws_off) x *= g.sW;
  const bool has_dc = dontcare.has_value();
  const int64_t dc = dontcare.value_or(0);
  const int64_t Co = c.Co, Ho = c.Ho, Wo = c.Wo, Wr = g.Wr, kh = c.kh, kw = c.kw;
  const int64_t rows = g.N * Ho;
  const int64_t work_per_row = std::max<int64_t>(1, Wo * Co * kh * kw);
  const int64_t grain = std::max<int64_t>(1, (int64_t{1} << 16) / work_per_row);
  BadLabels bad;
  std::mutex mu;

  at::parallel_for(0, rows, grain, [&](int64_t begin, int64_t end) {
    std::vector<acc_t> tile(static_cast<size_t>(kTile * Co));
    std::vector<int32_t> cls(static_cast<size_t>(kh * Wr));
    std::vector<char> row_ok(static_cast<size_t>(kh));
    std::vector<const acc_t*> taps(static_cast<size_t>(kh * kw));
    BadLabels local;
    for (int64_t r = begin; r < end; ++r) {
      const int64_t n = r / Ho, y = r % Ho;
      for (int64_t i = 0; i < kh; ++i) {  // the label rows under the taps
        const int64_t yy = y + i - c.ph;
        row_ok[static_cast<size_t>(i)] = yy >= 0 && yy < g.Hr;
        if (row_ok[static_cast<size_t>(i)])
          resolve_row(lab, g, hs, ws_off, n, yy, c.K, has_dc, dc, cls.data() + i * Wr, local);
      }
      for (int64_t x0 = 0; x0 < Wo; x0 += kTile) {
        const int64_t nx = std::min(kTile, Wo - x0);
        for (int64_t xi = 0; xi < nx; ++xi) {
          const int64_t x = x0 + xi;
          int64_t m = 0;
          for (int64_t i = 0; i < kh; ++i) {
            if (!row_ok[static_cast<size_t>(i)]) continue;
            const int32_t* cl = cls.data() + i * Wr;
            for (int64_t j = 0; j < kw; ++j) {
              const int64_t xx = x + j - c.pw;
              if (xx < 0 || xx >= Wr || cl[xx] < 0) continue;
              taps[static_cast<size_t>(m++)] = table + ((i * kw + j) * c.C + cl[xx]) * Co;
            }
          }
          sum_rows(taps.data(), m, bias, Co, tile.data() + xi * Co);
        }
        const acc_t* t = tile.data();
        if (channels_last) {
          scalar_t* dst = o + (r * Wo + x0) * Co;
          for (int64_t e = 0; e < nx * Co; ++e) dst[e] = static_cast<scalar_t>(t[e]);
        } else {
          scalar_t* dst = o + (n * Co * Ho + y) * Wo + x0;
          for (int64_t oc = 0; oc < Co; ++oc) {
            scalar_t* d = dst + oc * Ho * Wo;
            for (int64_t xi = 0; xi < nx; ++xi) d[xi] = static_cast<scalar_t>(t[xi * Co + oc]);
          }
        }
      }
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
                             at::OptionalIntArrayRef size, at::IntArrayRef padding) {
  TORCH_CHECK(labels.device().is_cpu() && weight.device().is_cpu(),
              "sbgan_fast::onehot_conv2d (CPU kernel): labels and weight must be CPU tensors");
  TORCH_CHECK_TYPE(at::isFloatingType(weight.scalar_type()),
                   "onehot_conv2d: weight must be a floating-point tensor, got ", weight.scalar_type());
  const LabelGeometry g = label_geometry("onehot_conv2d", labels, size);
  const ConvGeometry c = conv_geometry("onehot_conv2d", g, weight.sizes(), dontcare, padding);
  const auto acc_type = at::toOpMathType(weight.scalar_type());
  // wt[i][j][class][o], contiguous, accumulation type.
  const at::Tensor wt = weight.permute({2, 3, 1, 0}).to(acc_type).contiguous();
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
  const std::vector<int64_t> hs = source_indices(g.H, g.Hr, g.scale_h);
  std::vector<int64_t> ws_off = source_indices(g.W, g.Wr, g.scale_w);
  for (auto& x : ws_off) x *= g.sW;
  const bool has_dc = dontcare.has_value();
  const int64_t dc = dontcare.value_or(0);
  const int64_t Co = c.Co, Ho = c.Ho, Wo = c.Wo;
  const int64_t rows = g.N * Ho;
  const int64_t table_size = c.kh * c.kw * c.C * Co;
  // The number of blocks depends on the shapes only (never on the thread count), so the result is
  // the same bits on any machine: at most 32, at most 256 MiB of partial tables, and few enough that
  // zeroing and summing the tables costs at most about 1/8 of the accumulation itself.
  const int64_t work = rows * Wo * c.kh * c.kw * Co;
  const int64_t max_blocks_mem = std::max<int64_t>(
      1, (int64_t{256} << 20) / static_cast<int64_t>((table_size + Co) * sizeof(acc_t)));
  const int64_t max_blocks_work = std::max<int64_t>(1, work / (8 * (table_size + Co)));
  const int64_t nblocks = std::max<int64_t>(1, std::min<int64_t>({rows, 32, max_blocks_mem, max_blocks_work}));
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
        if (gsC == 1) {  // channels-last gradient: rows of C_out are contiguous
          for (int64_t x = 0; x < Wo; ++x)
            for (int64_t o = 0; o < Co; ++o) v[x * Co + o] = static_cast<acc_t>(src[x * gsW + o]);
        } else {
          for (int64_t o = 0; o < Co; ++o)
            for (int64_t x = 0; x < Wo; ++x) v[x * Co + o] = static_cast<acc_t>(src[o * gsC + x * gsW]);
        }
        for (int64_t x = 0; x < Wo; ++x)
          for (int64_t o = 0; o < Co; ++o) gb[o] += v[x * Co + o];
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
    std::optional<int64_t> dontcare, at::OptionalIntArrayRef size, at::IntArrayRef padding) {
  TORCH_CHECK(grad_out.device().is_cpu() && labels.device().is_cpu() && weight.device().is_cpu(),
              "sbgan_fast::onehot_conv2d_backward (CPU kernel): all tensors must be CPU tensors");
  const LabelGeometry g = label_geometry("onehot_conv2d", labels, size);
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
