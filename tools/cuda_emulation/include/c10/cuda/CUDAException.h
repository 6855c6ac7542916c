#pragma once
#include "../../emu.h"
#include <c10/util/Exception.h>
#define C10_CUDA_CHECK(x) do { cudaError_t e_ = (x); TORCH_CHECK(e_ == cudaSuccess, "CUDA error ", int(e_)); } while (0)
