// Lets `import cfbi_ops._C` load the library, and with it the TORCH_LIBRARY registrations.
// Only the Python build compiles this file; the CMake library for C++ users does not need Python.
#include <Python.h>

extern "C" PyObject* PyInit__C(void) {
  static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, nullptr, nullptr, nullptr, nullptr,
                                      nullptr};
  return PyModule_Create(&module);
}
