// Calls cfbi::global_match and cfbi::local_match from C++ through the dispatcher and prints the shapes
// and a checksum. Build with CMake (see CMakeLists.txt); run: ./match_example
#include <ATen/ATen.h>
#include <ATen/core/dispatch/Dispatcher.h>

#include <iostream>
#include <tuple>
#include <vector>

using MatchOutputs = std::tuple<at::Tensor, at::Tensor, at::Tensor>;

int main() {
  at::manual_seed(0);
  const auto query = at::randn({1, 32, 30, 40}) * 0.1;
  const auto reference = at::randn({1, 1, 32, 30, 40}) * 0.1;
  const auto labels = at::randint(0, 3, {1, 1, 30, 40}, at::kLong);
  const auto fg_bias = at::zeros({1}), bg_bias = at::zeros({1});

  auto global_match = c10::Dispatcher::singleton()
                          .findSchemaOrThrow("cfbi::global_match", "")
                          .typed<MatchOutputs(const at::Tensor&, const at::Tensor&, const at::Tensor&, int64_t,
                                              const at::Tensor&, const at::Tensor&, int64_t, int64_t)>();
  auto [fg, bg, argmin] = global_match.call(query, reference, labels, 3, fg_bias, bg_bias, 2, 0);
  std::cout << "global fg " << fg.sizes() << " sum " << fg.sum().item<double>() << "\n";

  auto local_match = c10::Dispatcher::singleton()
                         .findSchemaOrThrow("cfbi::local_match", "")
                         .typed<MatchOutputs(const at::Tensor&, const at::Tensor&, const at::Tensor&, int64_t,
                                             const at::Tensor&, const at::Tensor&, c10::IntArrayRef, int64_t)>();
  const std::vector<int64_t> windows = {4, 8, 12};
  auto [lfg, lbg, largmin] = local_match.call(query, reference.select(1, 0), labels.select(1, 0), 3, fg_bias,
                                              bg_bias, windows, 2);
  std::cout << "local fg " << lfg.sizes() << " sum " << lfg.sum().item<double>() << "\n";
  return 0;
}
