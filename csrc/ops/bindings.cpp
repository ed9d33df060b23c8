// The one binding file: op schemas of the rpo_kernels:: namespace, their CUDA kernels, and the Python module
// rpo_kernels._C that loads them (importing it runs the registrations; it defines no Python functions).
// Fake (meta) partners for torch.compile live in rpo_kernels/cuda/ops.py.
#include <Python.h>
#include <torch/library.h>

#include "ops.h"

TORCH_LIBRARY(rpo_kernels, m) {
  m.def(
      "lane_decode(Tensor q, Tensor prefix_k, Tensor prefix_v, Tensor suffix_k, Tensor suffix_v, Tensor tables, "
      "int num_groups, int prefix_tokens, float softmax_scale) -> (Tensor, Tensor)");
}

TORCH_LIBRARY_IMPL(rpo_kernels, CUDA, m) {
  m.impl("lane_decode", &rpo_torch::lane_decode);
}

extern "C" PyObject* PyInit__C(void) {
  static PyModuleDef module = {PyModuleDef_HEAD_INIT, "_C", "CUDA kernels of rpo_kernels (torch.ops.rpo_kernels)",
                               -1, nullptr, nullptr, nullptr, nullptr, nullptr};
  return PyModule_Create(&module);
}
