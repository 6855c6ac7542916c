#pragma once
#include "emu.h"
#include <torch/headeronly/util/Half.h>  // header-only c10::Half
struct __half { c10::Half h; };
inline __half __float2half_rn(float f) { return __half{c10::Half(f)}; }
inline float __half2float(__half h) { return static_cast<float>(h.h); }
