// CPU kernel of sbgan_fast::one_hot (schema in csrc/sbgan_ops.cpp).
//
// One pass over the output, parallel over output rows (n, y) with at::parallel_for (OpenMP):
// each row resolves its W' labels once (resize by the rule `mode` through the source index tables
// of ../common.h, dontcare, range check) into a small buffer,
// then writes every output value of that row exactly once:
//   NCHW:          for each channel k, out[n, k, y, :] = (cls == k)  (contiguous, vectorizable)
//   channels-last: zero the row's W' x C block, then set one value per pixel.
// A bad label is recorded (smallest / largest value) and leaves its pixel all-zero; the op raises
// a ValueError naming the value after the pass. Nothing is ever written out of bounds.
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <mutex>

#include "../common.h"
#include "cpu_utils.h"

namespace sbgan_fast {
namespace {

template <typename lab_t, typename out_t>
void one_hot_rows(const LabelGeometry& g, int64_t num_classes, bool has_dc, int64_t dc, int64_t C,
                  bool channels_last, out_t* out, BadLabels& bad) {
  const lab_t* lab = g.labels.data_ptr<lab_t>();
  const int64_t Hr = g.Hr, Wr = g.Wr;
  const std::vector<int64_t> hs = g.source_rows();
  std::vector<int64_t> ws = g.source_cols();
  for (auto& x : ws) x *= g.sW;  // column offsets in elements
  const int64_t plane = Hr * Wr;
  const int64_t rows = g.N * Hr;
  // About 64k output values per task.
  const int64_t grain = std::max<int64_t>(1, (int64_t{1} << 16) / std::max<int64_t>(1, Wr * C));
  std::mutex mu;
  const out_t one = static_cast<out_t>(1);
  const out_t zero = static_cast<out_t>(0);

  at::parallel_for(0, rows, grain, [&](int64_t begin, int64_t end) {
    std::vector<int32_t> cls(static_cast<size_t>(Wr));
    BadLabels local;
    for (int64_t r = begin; r < end; ++r) {
      const int64_t n = r / Hr, y = r % Hr;
      const lab_t* src = lab + n * g.sN + hs[static_cast<size_t>(y)] * g.sH;
      for (int64_t x = 0; x < Wr; ++x) {
        const int64_t v = static_cast<int64_t>(src[ws[static_cast<size_t>(x)]]);
        const int32_t c = resolve_label(v, num_classes, has_dc, dc);
        if (c < 0) local.add(v);
        cls[static_cast<size_t>(x)] = c;
      }
      const int32_t* cl = cls.data();
      if (!channels_last) {
        out_t* base = out + n * C * plane + y * Wr;
        for (int64_t k = 0; k < C; ++k) {
          out_t* o = base + k * plane;
          const int32_t kk = static_cast<int32_t>(k);
#pragma omp simd
          for (int64_t x = 0; x < Wr; ++x) o[x] = cl[x] == kk ? one : zero;
        }
      } else {
        out_t* o = out + r * Wr * C;
        std::fill(o, o + Wr * C, zero);
        for (int64_t x = 0; x < Wr; ++x) {
          if (cl[x] >= 0) o[x * C + cl[x]] = one;
        }
      }
    }
    if (local.any) {
      std::lock_guard<std::mutex> lock(mu);
      bad.merge(local);
    }
  });
}

at::Tensor one_hot_cpu(const at::Tensor& labels, int64_t num_classes, std::optional<int64_t> dontcare,
                       at::OptionalIntArrayRef size, at::ScalarType dtype, bool channels_last,
                       c10::string_view mode) {
  TORCH_CHECK(labels.device().is_cpu(), "sbgan_fast::one_hot (CPU kernel): labels must be a CPU tensor");
  TORCH_CHECK_VALUE(num_classes > 0, "one_hot: num_classes must be positive, got ", num_classes);
  const LabelGeometry g = label_geometry("one_hot", labels, size, mode);
  const int64_t C = num_classes + (dontcare.has_value() ? 1 : 0);
  const auto fmt = channels_last ? at::MemoryFormat::ChannelsLast : at::MemoryFormat::Contiguous;
  at::Tensor out = at::empty({g.N, C, g.Hr, g.Wr}, labels.options().dtype(dtype), fmt);
  if (out.numel() == 0) return out;
  advise_huge_pages(out);
  BadLabels bad;
  const bool has_dc = dontcare.has_value();
  const int64_t dc = dontcare.value_or(0);
  AT_DISPATCH_INTEGRAL_TYPES(g.labels.scalar_type(), "sbgan_fast::one_hot labels", [&] {
    using lab_t = scalar_t;
    AT_DISPATCH_FLOATING_TYPES_AND4(at::kHalf, at::kBFloat16, at::kByte, at::kBool, dtype,
                                    "sbgan_fast::one_hot out", [&] {
      one_hot_rows<lab_t, scalar_t>(g, num_classes, has_dc, dc, C, channels_last,
                                    out.data_ptr<scalar_t>(), bad);
    });
  });
  raise_if_bad("one_hot", bad, num_classes, dontcare);
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(sbgan_fast, CPU, m) { m.impl("one_hot", &one_hot_cpu); }

}  // namespace sbgan_fast
