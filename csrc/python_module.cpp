// Lets `import cfbi_ops._C` (and cfbi_ops._C_cuda) load the library, and with it its STABLE_TORCH_LIBRARY
// registrations. CFBI_PY_MODULE names the module. Built against the limited Python API (abi3: one binary for every
// CPython >= 3.10). Only the Python build compiles this file; the CMake library for C++ users does not need Python.
#ifndef Py_LIMITED_API
#define Py_LIMITED_API 0x030a0000
#endif
#include <Python.h>

#ifndef CFBI_PY_MODULE
#define CFBI_PY_MODULE _C
#endif

#define CFBI_CONCAT_(a, b) a##b
#define CFBI_CONCAT(a, b) CFBI_CONCAT_(a, b)
#define CFBI_STRING_(a) #a
#define CFBI_STRING(a) CFBI_STRING_(a)

PyMODINIT_FUNC CFBI_CONCAT(PyInit_, CFBI_PY_MODULE)(void) {
  static struct PyModuleDef module = {
      PyModuleDef_HEAD_INIT, CFBI_STRING(CFBI_PY_MODULE), nullptr, -1, nullptr, nullptr, nullptr, nullptr, nullptr};
  return PyModule_Create(&module);
}
