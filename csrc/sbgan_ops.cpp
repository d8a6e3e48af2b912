// sbgan_fast._C: operator schemas of the C++/CUDA ops and the Python module.
//
// Kernels are registered per device in csrc/cpu/*.cpp (CPU) and csrc/cuda/*.cu (CUDA, when built
// with nvcc). Python reaches them as torch.ops.sbgan_fast.<name>; the autograd wrapper and the
// dispatch entry live in sbgan_fast/ops/_fast_cpp.py.
#include <Python.h>

#include <torch/library.h>

TORCH_LIBRARY(sbgan_fast, m) {
  // Int label map (N,H,W) or (N,1,H,W) -> one-hot (N, K (+1), H', W') of `dtype`, exact 0/1,
  // NCHW-contiguous or channels-last (written directly). `dontcare` -> last channel; `size` ->
  // nearest resize in the same pass, by rule `mode`: "nearest" (torch's F.interpolate rule, the
  // block's top-left corner) or "nearest-exact" (PIL's NEAREST, the block's centre); see
  // csrc/common.h. Bad labels (and an unknown mode) raise ValueError naming the value.
  m.def("one_hot(Tensor labels, int num_classes, int? dontcare, int[]? size, ScalarType dtype, "
        "bool channels_last, str mode=\"nearest\") -> Tensor");
  // conv2d(one_hot(resize(labels, size)), weight, bias, padding) as a gather of weight columns.
  // weight (C_out, K (+1 with dontcare), kh, kw); stride 1. Output in weight's dtype, accumulated in
  // fp32 (fp64 for fp64 weights); channels-last when weight is channels-last, else contiguous.
  // `size` and `mode` resize the labels as in one_hot.
  m.def("onehot_conv2d(Tensor labels, Tensor weight, Tensor? bias, int? dontcare, int[]? size, "
        "int[2] padding, str mode=\"nearest\") -> Tensor");
  // Gradients of onehot_conv2d for weight and bias: (grad_weight like weight, grad_bias (C_out,)
  // in weight's dtype). `weight` supplies the shape, dtype and device only.
  m.def("onehot_conv2d_backward(Tensor grad_out, Tensor labels, Tensor weight, int? dontcare, "
        "int[]? size, int[2] padding, str mode=\"nearest\") -> (Tensor, Tensor)");
}

namespace {

PyObject* cuda_compiled(PyObject* /*self*/, PyObject* /*unused*/) {
#ifdef SBGAN_FAST_WITH_CUDA
  Py_RETURN_TRUE;
#else
  Py_RETURN_FALSE;
#endif
}

PyMethodDef module_methods[] = {
    {"cuda_compiled", cuda_compiled, METH_NOARGS,
     "True when this build of sbgan_fast._C contains the CUDA kernels."},
    {nullptr, nullptr, 0, nullptr}};

PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_C",
                          "C++/CUDA kernels of sbgan_fast, registered as torch.ops.sbgan_fast.*", -1,
                          module_methods};

}  // namespace

// Importing sbgan_fast._C loads this library, whose static initializers register the ops.
PyMODINIT_FUNC PyInit__C(void) { return PyModule_Create(&module_def); }
