// Segments a video with the packages of `cfbi export`, without Python: loads the cfbi op library, the two
// AOTInductor packages (encode.pt2, segment.pt2), reads a folder of frames (binary PPM, P6) and the first frame's
// label mask (binary PGM, P5: 0 background, 1..254 object ids, 255 ignored), runs the loop and writes one PGM label
// mask per frame (object ids) to the output folder.
//
//   segment_video --package DIR --frames DIR --mask FIRST.pgm --out DIR [--ops LIBRARY] [--allow-other-torch]
//
// --ops: the op library (default: the "op_library" of DIR/export.json). The packages call cfbi::global_match and
// cfbi::local_match through the dispatcher, so it must be loaded before them. The host side (the long-edge rule,
// the object ids, the state) follows cfbi_model/inference/exported.py; cfbi_model/inference/export.py
// documents the packages.
#include <ATen/ATen.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <dlfcn.h>
#include <torch/csrc/inductor/aoti_package/model_package_loader.h>
#include <torch/headeronly/version.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <map>
#include <sstream>
#include <stdexcept>
#include <string>
#include <vector>

namespace fs = std::filesystem;

namespace {

constexpr int kIgnored = 255;

struct Error : std::runtime_error {
  using std::runtime_error::runtime_error;
};

// ------------------------------------------------------------------ export.json (keys are unique in the file)
std::string read_text(const fs::path& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw Error("cannot read " + path.string());
  std::stringstream buffer;
  buffer << in.rdbuf();
  return buffer.str();
}

// The raw value after "key": in a flat JSON text (a string without its quotes, a number, or an array's inside).
std::string json_value(const std::string& text, const std::string& key) {
  const auto at = text.find("\"" + key + "\"");
  if (at == std::string::npos) throw Error("export.json has no \"" + key + "\"");
  auto pos = text.find(':', at) + 1;
  while (pos < text.size() && std::isspace(static_cast<unsigned char>(text[pos]))) ++pos;
  if (text[pos] == '"') return text.substr(pos + 1, text.find('"', pos + 1) - pos - 1);
  if (text[pos] == '[') return text.substr(pos + 1, text.find(']', pos) - pos - 1);
  auto end = text.find_first_of(",}\n", pos);
  return text.substr(pos, end - pos);
}

std::vector<int64_t> json_ints(const std::string& text, const std::string& key) {
  std::vector<int64_t> values;
  std::stringstream items(json_value(text, key));
  std::string item;
  while (std::getline(items, item, ',')) values.push_back(std::stoll(item));
  return values;
}

// ------------------------------------------------------------------ PPM / PGM (8-bit binary)
at::Tensor read_pnm(const fs::path& path, const std::string& magic, int64_t channels) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw Error("cannot read " + path.string());
  std::string kind;
  int64_t width = 0, height = 0, maxval = 0;
  in >> kind;
  auto next_number = [&](int64_t& value) {  // skips # comments of the header
    in >> std::ws;
    while (in.peek() == '#') {
      std::string comment;
      std::getline(in, comment);
      in >> std::ws;
    }
    in >> value;
  };
  next_number(width);
  next_number(height);
  next_number(maxval);
  if (kind != magic || !in || width <= 0 || height <= 0 || maxval != 255)
    throw Error(path.string() + " is not an 8-bit binary " + (magic == "P6" ? "PPM (P6)" : "PGM (P5)"));
  in.get();  // the single whitespace after maxval
  auto image = at::empty({height, width, channels}, at::kByte);
  in.read(reinterpret_cast<char*>(image.data_ptr<uint8_t>()), image.numel());
  if (in.gcount() != image.numel()) throw Error(path.string() + " is truncated");
  return channels == 1 ? image.squeeze(2) : image;
}

void write_pgm(const fs::path& path, const at::Tensor& ids) {
  auto data = ids.to(at::kByte).contiguous();
  std::ofstream out(path, std::ios::binary);
  out << "P5\n" << data.size(1) << " " << data.size(0) << "\n255\n";
  out.write(reinterpret_cast<const char*>(data.data_ptr<uint8_t>()), data.numel());
  if (!out) throw Error("cannot write " + path.string());
}

// ------------------------------------------------------------------ the long-edge rule (inference_size)
std::array<int64_t, 2> network_size(int64_t height, int64_t width, double cap) {
  const double factor = std::max(height, width) > cap ? cap / std::max(height, width) : 1.0;
  std::array<int64_t, 2> sides{};
  for (int i = 0; i < 2; ++i) {
    const int64_t side = i == 0 ? height : width;
    auto value = static_cast<int64_t>(factor == 1.0 ? side : factor * side);
    // nearest 16k + 1, halves to even (Python's round; nearbyint under the default rounding mode)
    if ((value - 1) % 16 != 0) value = static_cast<int64_t>(std::nearbyint((value - 1) / 16.0)) * 16 + 1;
    sides[i] = std::max<int64_t>(value, 17);
  }
  return sides;
}

// Nearest resize of labels [H, W] to the grid of an embedding, as cfbi_model.modeling.matching.resize_labels.
at::Tensor resize_labels(const at::Tensor& labels, const at::Tensor& embedding) {
  const auto h = embedding.size(-2), w = embedding.size(-1);
  if (labels.size(0) == h && labels.size(1) == w) return labels;
  auto flat = labels.to(at::kFloat).view({1, 1, labels.size(0), labels.size(1)});
  return at::upsample_nearest2d(flat, {h, w}).to(at::kLong).view({h, w});
}

struct Options {
  fs::path package, frames, mask, out, ops;
  bool allow_other_torch = false;
};

Options parse(int argc, char** argv) {
  Options options;
  for (int i = 1; i < argc; ++i) {
    const std::string flag = argv[i];
    if (flag == "--allow-other-torch") {
      options.allow_other_torch = true;
      continue;
    }
    if (i + 1 >= argc) throw Error("missing value after " + flag);
    const fs::path value = argv[++i];
    if (flag == "--package") options.package = value;
    else if (flag == "--frames") options.frames = value;
    else if (flag == "--mask") options.mask = value;
    else if (flag == "--out") options.out = value;
    else if (flag == "--ops") options.ops = value;
    else throw Error("unknown option " + flag);
  }
  if (options.package.empty() || options.frames.empty() || options.mask.empty() || options.out.empty())
    throw Error("usage: segment_video --package DIR --frames DIR --mask FIRST.pgm --out DIR [--ops LIBRARY] "
                "[--allow-other-torch]");
  return options;
}

int run(const Options& options) {
  const auto manifest = read_text(options.package / "export.json");
  const std::string exported_with = json_value(manifest, "torch_version");
  const std::string here = std::to_string(TORCH_VERSION_MAJOR) + "." + std::to_string(TORCH_VERSION_MINOR) + "." +
                           std::to_string(TORCH_VERSION_PATCH);
  // Another torch release may run the packages (nothing promises it): only when asked.
  if (exported_with.substr(0, exported_with.find('+')) != here && !options.allow_other_torch)
    throw Error(options.package.string() + " was exported with torch " + exported_with + ", this libtorch is " +
                here + ": export it again with this torch, or pass --allow-other-torch");
  if (json_value(manifest, "device") != "cpu") throw Error("this runner runs CPU packages (export with --device cpu)");

  // The op library first: the packages resolve the cfbi:: ops through the dispatcher when they run.
  const fs::path ops = options.ops.empty() ? fs::path(json_value(manifest, "op_library")) : options.ops;
  // Lazy binding: the Python build of the library (cfbi_ops/_C*.so) refers to one Python function, in its module
  // init, which is never called here; the CMake build refers to none.
  if (dlopen(ops.c_str(), RTLD_LAZY | RTLD_GLOBAL) == nullptr)
    throw Error("cannot load the op library " + ops.string() + ": " + dlerror());
  for (const char* op : {"cfbi::global_match", "cfbi::local_match"})
    if (!c10::Dispatcher::singleton().findSchema({op, ""}).has_value())
      throw Error("the op library " + ops.string() + " does not register " + op);

  torch::inductor::AOTIModelPackageLoader encode((options.package / "encode.pt2").string());
  torch::inductor::AOTIModelPackageLoader segment((options.package / "segment.pt2").string());

  std::vector<fs::path> frames;
  for (const auto& entry : fs::directory_iterator(options.frames))
    if (entry.path().extension() == ".ppm") frames.push_back(entry.path());
  std::sort(frames.begin(), frames.end());
  if (frames.empty()) throw Error("no .ppm frames in " + options.frames.string());
  fs::create_directories(options.out);

  const double cap = std::stod(json_value(manifest, "long_edge_cap"));
  const int64_t min_side = std::stoll(json_value(manifest, "min_side"));
  const int64_t max_side = std::stoll(json_value(manifest, "max_side"));
  const int64_t max_objects = std::stoll(json_value(manifest, "max_objects"));
  const auto channels = json_ints(manifest, "reference_channels");

  // The first frame's ids -> compact labels 0..L-1 (in increasing order, as LabelMap), 255 stays ignored.
  const auto mask = read_pnm(options.mask, "P5", 1).to(at::kLong);
  std::vector<int64_t> ids{0};
  std::vector<int64_t> to_label(256, -1);
  to_label[0] = 0;
  to_label[kIgnored] = kIgnored;
  const auto present = std::get<0>(at::_unique(mask));
  auto sorted = std::get<0>(present.sort());
  for (int64_t i = 0; i < sorted.numel(); ++i) {
    const auto id = sorted[i].item<int64_t>();
    if (id != 0 && id != kIgnored) {
      to_label[id] = static_cast<int64_t>(ids.size());
      ids.push_back(id);
    }
  }
  const auto num_labels = static_cast<int64_t>(ids.size());
  if (num_labels - 1 > max_objects)
    throw Error("the mask holds " + std::to_string(num_labels - 1) + " objects; the packages take at most " +
                std::to_string(max_objects) + " (cfbi export --max-objects)");
  auto to_ids = at::zeros({256}, at::kLong);  // ignored pixels are written as background
  for (int64_t l = 0; l < num_labels; ++l) to_ids[l] = ids[l];
  const auto id_lookup = at::tensor(to_label);
  auto labels = id_lookup.index({mask});

  std::vector<at::Tensor> references, reference_labels, previous, previous_labels;
  std::array<int64_t, 2> frame_size{}, net{};
  const auto label_ids = at::arange(num_labels, at::kLong);
  for (size_t index = 0; index < frames.size(); ++index) {
    const auto frame = read_pnm(frames[index], "P6", 3);
    const int64_t height = frame.size(0), width = frame.size(1);
    if (index == 0) {
      if (height < min_side || width < min_side || height > max_side || width > max_side)
        throw Error(frames[index].string() + " is outside the packages' frame sides " + std::to_string(min_side) +
                    ".." + std::to_string(max_side));
      if (labels.size(0) != height || labels.size(1) != width)
        throw Error("the mask's size differs from the first frame's");
      frame_size = {height, width};
      net = network_size(height, width, cap);
    } else if (height != frame_size[0] || width != frame_size[1]) {
      throw Error(frames[index].string() + " differs in size from the first frame");
    }
    auto features = encode.run({frame, at::empty({net[0], net[1], 0}, at::kByte)});
    // The packages read their inputs with the strides they were traced with (contiguous) and do not check them;
    // encode may hand its outputs back channels-last.
    for (auto& feature : features) feature = feature.contiguous();
    if (index > 0) {
      if (num_labels == 1) {
        labels = at::zeros({height, width}, at::kLong);
      } else {
        std::vector<at::Tensor> inputs(features.begin(), features.end());
        for (const auto* group : {&references, &reference_labels, &previous, &previous_labels})
          inputs.insert(inputs.end(), group->begin(), group->end());
        inputs.push_back(label_ids);
        inputs.push_back(at::empty({height, width, 0}, at::kByte));
        labels = segment.run(inputs)[1];
      }
    }
    // State: the previous frame is this one; the first frame is the reference.
    previous.clear();
    previous_labels.clear();
    for (int s = 0; s < 3; ++s) {
      previous.push_back(features[s][0]);
      previous_labels.push_back(resize_labels(labels, features[s]));
      if (index == 0) {
        references.push_back(features[s].narrow(1, 0, channels[s]).contiguous());
        reference_labels.push_back(previous_labels.back().unsqueeze(0));
      }
    }
    write_pgm(options.out / (frames[index].stem().string() + ".pgm"), to_ids.index({labels}));
  }
  std::cout << "segment_video: " << frames.size() << " frames, " << num_labels - 1 << " objects; wrote "
            << options.out.string() << "\n";
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  try {
    return run(parse(argc, argv));
  } catch (const std::exception& error) {
    // c10 errors carry a C++ backtrace after the first line: one line is enough here.
    std::string message = error.what();
    std::cerr << "segment_video: error: " << message.substr(0, message.find('\n')) << "\n";
    return 1;
  }
}
