// Host-side helpers shared by the CPU (.cpp) and CUDA (.cu) kernels of sbgan_fast._C.
//
// Label maps are integer tensors (N,H,W) or (N,1,H,W) of any integer dtype and any strides.
// A label value v maps to a one-hot channel ("class index"):
//   v == dontcare (when given)  -> K (the extra last channel)
//   0 <= v < K                  -> v
//   anything else               -> -1 (bad: recorded, never written, reported after the pass)
// The optional nearest resize to (H', W') takes, for output row / column `dst`, the source index
// `src` given by one of two rules (the `mode` argument of the ops):
//   "nearest"        torch's F.interpolate(mode='nearest') exactly (the top-left corner of the block):
//                      src = dst                                  when out == in
//                      src = dst >> 1                             when out == 2 * in
//                      src = min(floor(float(dst) * scale), in-1) otherwise, scale = float(in) / float(out)
//                                                                 in fp32.
//   "nearest-exact"  PIL's Image.resize(..., Image.NEAREST) of 8-bit ('L', 'P') and 32-bit ('I')
//                    images exactly (the centre of the block): with
//                    a = double(in) / double(out), a running double sum x = a * 0.5, x += a for each
//                    next index (PIL's ImagingScaleAffine), src = min(int(x), in-1). This equals
//                    floor((dst + 0.5) * in / out) except where that value is an integer or within
//                    rounding of one; there PIL's running sum decides, and torch's
//                    F.interpolate(mode='nearest-exact') (fp32 scale, no running sum) can differ.
// The source indices are computed once per call on the host (source_indices) and shared by the CPU
// kernels, the CUDA kernels (copied to the device) and, in the same arithmetic, by the Python reference.
#pragma once

#include <ATen/ATen.h>
#include <c10/util/string_view.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <optional>
#include <string>
#include <vector>

#if defined(__CUDACC__)
#define SBGAN_HOST_DEVICE __host__ __device__
#else
#define SBGAN_HOST_DEVICE
#endif

namespace sbgan_fast {

// The two resize rules (see the file comment).
enum class ResizeMode : int32_t { Nearest = 0, NearestExact = 1 };

// Parse the `mode` argument of op `op`; a ValueError names the op, the argument and the allowed values
// (the same message as the Python entry points).
inline ResizeMode parse_resize_mode(const char* op, c10::string_view mode) {
  if (mode == "nearest") return ResizeMode::Nearest;
  if (mode == "nearest-exact") return ResizeMode::NearestExact;
  TORCH_CHECK_VALUE(false, op, ": mode must be 'nearest' or 'nearest-exact', got '", std::string(mode), "'");
  return ResizeMode::Nearest;  // unreachable
}

// torch's nearest source index (see the file comment). `scale` must be float(in) / float(out).
inline int64_t nearest_source_index(int64_t dst, int64_t in, int64_t out, float scale) {
  if (out == in) return dst;
  if (out == 2 * in) return dst >> 1;
  const int64_t src = static_cast<int64_t>(std::floor(static_cast<float>(dst) * scale));
  return src < in - 1 ? src : in - 1;
}

// Source index of every output index 0..out-1 of a resize from `in` to `out` by rule `mode` (host).
// "nearest-exact" is PIL's running double sum (see the file comment); it must stay a plain sequence
// of IEEE double additions (no reassociation, no fast-math), which it is on every target of this build.
inline std::vector<int64_t> source_indices(int64_t in, int64_t out, ResizeMode mode) {
  std::vector<int64_t> idx(static_cast<size_t>(out));
  if (mode == ResizeMode::Nearest) {
    const float scale = static_cast<float>(in) / static_cast<float>(out);
    for (int64_t d = 0; d < out; ++d) idx[static_cast<size_t>(d)] = nearest_source_index(d, in, out, scale);
    return idx;
  }
  const double a = static_cast<double>(in) / static_cast<double>(out);
  volatile double x = a * 0.5;  // volatile: each step is rounded to double, exactly as PIL's loop
  for (int64_t d = 0; d < out; ++d) {
    const int64_t src = static_cast<int64_t>(x);  // x >= 0: truncation is floor, as PIL's COORD
    idx[static_cast<size_t>(d)] = src < in - 1 ? src : in - 1;
    x = x + a;
  }
  return idx;
}

// Class index of label value v (see the file comment); -1 for a bad value.
SBGAN_HOST_DEVICE inline int32_t resolve_label(int64_t v, int64_t num_classes, bool has_dontcare,
                                               int64_t dontcare) {
  if (has_dontcare && v == dontcare) return static_cast<int32_t>(num_classes);
  if (v >= 0 && v < num_classes) return static_cast<int32_t>(v);
  return -1;
}

// Geometry of a label map and its (optional) nearest resize.
struct LabelGeometry {
  at::Tensor labels;   // (N,H,W) view of the caller's tensor (no copy)
  int64_t N = 0, H = 0, W = 0;          // source label map
  int64_t sN = 0, sH = 0, sW = 0;       // its strides, in elements
  int64_t Hr = 0, Wr = 0;               // resized size (== H, W without `size`)
  ResizeMode mode = ResizeMode::Nearest;

  // True when the map is resized (otherwise every source index is the output index).
  bool resized() const { return Hr != H || Wr != W; }
  std::vector<int64_t> source_rows() const { return source_indices(H, Hr, mode); }
  std::vector<int64_t> source_cols() const { return source_indices(W, Wr, mode); }
};

// Check the label argument of op `op`, the optional target size and the resize rule; never copies
// the labels.
inline LabelGeometry label_geometry(const char* op, const at::Tensor& labels_in,
                                    const at::OptionalIntArrayRef& size, c10::string_view mode) {
  TORCH_CHECK_TYPE(at::isIntegralType(labels_in.scalar_type(), /*includeBool=*/false),
                   op, ": labels must have an integer dtype, got ", labels_in.scalar_type());
  at::Tensor labels = labels_in;
  if (labels.dim() == 4) {
    TORCH_CHECK_VALUE(labels.size(1) == 1, op, ": labels must be (N,H,W) or (N,1,H,W), got shape ",
                      labels.sizes());
    labels = labels.select(1, 0);
  }
  TORCH_CHECK_VALUE(labels.dim() == 3, op, ": labels must be (N,H,W) or (N,1,H,W), got shape ",
                    labels_in.sizes());
  LabelGeometry g;
  g.mode = parse_resize_mode(op, mode);
  g.labels = labels;
  g.N = labels.size(0);
  g.H = labels.size(1);
  g.W = labels.size(2);
  g.sN = labels.stride(0);
  g.sH = labels.stride(1);
  g.sW = labels.stride(2);
  g.Hr = g.H;
  g.Wr = g.W;
  if (size.has_value()) {
    TORCH_CHECK_VALUE(size->size() == 2 && (*size)[0] > 0 && (*size)[1] > 0, op,
                      ": size must be a pair of positive ints (H', W'), got ", *size);
    g.Hr = (*size)[0];
    g.Wr = (*size)[1];
    TORCH_CHECK_VALUE(g.H > 0 && g.W > 0, op, ": cannot resize an empty label map of shape ",
                      labels_in.sizes(), " to ", *size);
  }
  return g;
}

// Smallest and largest bad label value seen in a pass. The error reports the smallest when it is
// negative, else the largest: the same value the reference path's range check names.
struct BadLabels {
  int64_t min_bad = std::numeric_limits<int64_t>::max();
  int64_t max_bad = std::numeric_limits<int64_t>::min();
  bool any = false;

  void add(int64_t v) {
    any = true;
    min_bad = std::min(min_bad, v);
    max_bad = std::max(max_bad, v);
  }
  void merge(const BadLabels& o) {
    if (!o.any) return;
    any = true;
    min_bad = std::min(min_bad, o.min_bad);
    max_bad = std::max(max_bad, o.max_bad);
  }
};

// Raise a ValueError naming the bad label value (message identical to the reference path's).
inline void raise_if_bad(const char* op, const BadLabels& bad, int64_t num_classes,
                         std::optional<int64_t> dontcare) {
  if (!bad.any) return;
  const int64_t v = bad.min_bad < 0 ? bad.min_bad : bad.max_bad;
  std::string extra;
  if (dontcare.has_value()) extra = " or the don't-care value " + std::to_string(*dontcare);
  TORCH_CHECK_VALUE(false, op, ": label value ", v, " is outside [0, ", num_classes, ")", extra,
                    " (num_classes=", num_classes, "); check the dataset's class count");
}

// Convolution geometry of onehot_conv2d (stride 1, dilation 1, zero padding).
struct ConvGeometry {
  int64_t Co = 0, C = 0, kh = 0, kw = 0;  // weight (Co, C, kh, kw); C = K (+1 with dontcare)
  int64_t K = 0;                          // num_classes
  int64_t ph = 0, pw = 0;
  int64_t Ho = 0, Wo = 0;                 // output size
};

inline ConvGeometry conv_geometry(const char* op, const LabelGeometry& g, c10::IntArrayRef weight_sizes,
                                  std::optional<int64_t> dontcare, c10::IntArrayRef padding) {
  TORCH_CHECK_VALUE(weight_sizes.size() == 4, op, ": weight must be (C_out, K, kh, kw), got shape ",
                    weight_sizes);
  TORCH_CHECK_VALUE(padding.size() == 2 && padding[0] >= 0 && padding[1] >= 0, op,
                    ": padding must be two non-negative ints (ph, pw), got ", padding);
  ConvGeometry c;
  c.Co = weight_sizes[0];
  c.C = weight_sizes[1];
  c.kh = weight_sizes[2];
  c.kw = weight_sizes[3];
  c.K = c.C - (dontcare.has_value() ? 1 : 0);
  TORCH_CHECK_VALUE(c.K > 0 && c.kh > 0 && c.kw > 0 && c.Co > 0, op,
                    ": weight must be (C_out, K (+1 with dontcare), kh, kw) with positive sizes, got ",
                    weight_sizes, dontcare.has_value() ? " with dontcare" : " without dontcare");
  c.ph = padding[0];
  c.pw = padding[1];
  c.Ho = g.Hr + 2 * c.ph - c.kh + 1;
  c.Wo = g.Wr + 2 * c.pw - c.kw + 1;
  TORCH_CHECK_VALUE(c.Ho > 0 && c.Wo > 0, op, ": the label map (", g.Hr, "x", g.Wr,
                    " after resize) is smaller than the kernel (", c.kh, "x", c.kw, ") with padding ",
                    padding);
  return c;
}

}  // namespace sbgan_fast
