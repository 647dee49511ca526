// same_fast._stream: the streaming loop (bounded queue, dynamic batching, reordering).
// The streaming issue fills this module; the foundation ships only its version so the build
// path (pybind11, C++17, no CUDA) is exercised from day one.
#include <pybind11/pybind11.h>

namespace py = pybind11;

PYBIND11_MODULE(_stream, m) {
  m.doc() = "same-fast streaming loop (C++)";
  m.attr("ABI_VERSION") = 1;
}
