#pragma once
#include "emu.h"
#include <torch/headeronly/util/BFloat16.h>  // header-only c10::BFloat16
struct __nv_bfloat16 { c10::BFloat16 h; };
inline __nv_bfloat16 __float2bfloat16_rn(float f) { return __nv_bfloat16{c10::BFloat16(f)}; }
inline float __bfloat162float(__nv_bfloat16 h) { return static_cast<float>(h.h); }
