#pragma once
#include "../../emu.h"
namespace c10::cuda { struct FakeStream { cudaStream_t stream() const { return nullptr; } }; inline FakeStream getCurrentCUDAStream() { return {}; } }
