// The module init of cfbi_ops._C_cuda (its own source, so that each extension has its own object file).
#define CFBI_PY_MODULE _C_cuda
#include "python_module.cpp"
