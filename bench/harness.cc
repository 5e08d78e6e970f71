#include "bench/harness.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>

namespace dmoe::bench {

namespace {

// Parses all of `text` with `parse` (std::stoll, std::stod); false on any leftover or error.
template <typename T, typename Parse>
bool ParseWhole(const std::string& text, Parse parse, T* out) {
  try {
    size_t used = 0;
    const T value = parse(text, &used);
    if (used != text.size()) return false;
    *out = value;
    return true;
  } catch (const std::exception&) {
    return false;
  }
}

}  // namespace

std::function<bool(const std::string&)> Int64Flag(int64_t* out) {
  return [out](const std::string& v) {
    return ParseWhole<int64_t>(
        v, [](const std::string& s, size_t* used) { return std::stoll(s, used); }, out);
  };
}

std::function<bool(const std::string&)> IntFlag(int* out) {
  return [out](const std::string& v) {
    return ParseWhole<int>(
        v, [](const std::string& s, size_t* used) { return std::stoi(s, used); }, out);
  };
}

std::function<bool(const std::string&)> DoubleFlag(double* out) {
  return [out](const std::string& v) {
    return ParseWhole<double>(
        v, [](const std::string& s, size_t* used) { return std::stod(s, used); }, out);
  };
}

std::function<bool(const std::string&)> StringFlag(std::string* out) {
  return [out](const std::string& v) {
    *out = v;
    return true;
  };
}

bool ParseFlags(int argc, char** argv, const std::string& usage,
                const std::vector<ValueFlag>& value_flags, bool* smoke,
                const std::function<void()>& on_smoke) {
  bool ok = true;
  for (int i = 1; i < argc && ok; ++i) {
    const std::string arg = argv[i];
    if (arg == "--smoke") {
      *smoke = true;
      if (on_smoke) on_smoke();
      continue;
    }
    auto flag = std::find_if(value_flags.begin(), value_flags.end(),
                             [&](const ValueFlag& f) { return f.name == arg; });
    ok = flag != value_flags.end() && i + 1 < argc && flag->set(argv[++i]);
  }
  if (!ok) std::fprintf(stderr, "usage: %s %s\n", argv[0], usage.c_str());
  return ok;
}

double Percentile(std::vector<double> values, double q) {
  if (values.empty()) return 0;
  std::sort(values.begin(), values.end());
  const double rank = std::ceil(q * static_cast<double>(values.size()));
  const size_t index = rank < 1 ? 0 : static_cast<size_t>(rank) - 1;
  return values[std::min(index, values.size() - 1)];
}

Result<std::string> WriteResult(const std::string& name, const nlohmann::json& report) {
  const char* env = std::getenv("DMOE_BENCH_OUT");
  const std::filesystem::path dir = env != nullptr && *env != '\0' ? env : "bench/results";
  std::error_code error;
  std::filesystem::create_directories(dir, error);
  const std::string path = (dir / (name + ".json")).string();
  std::ofstream out(path);
  out << report.dump(2) << "\n";
  if (!out) return UnavailableError("cannot write " + path);
  return path;
}

bool Report(const std::string& name, const nlohmann::json& report) {
  Result<std::string> path = WriteResult(name, report);
  if (!path.ok()) {
    std::fprintf(stderr, "%s: %s\n", name.c_str(), path.status().message().c_str());
    return false;
  }
  std::printf("wrote %s\n", path->c_str());
  return true;
}

std::string After(const std::string& line, const std::string& prefix) {
  const size_t at = line.find(prefix);
  if (at == std::string::npos) return "";
  std::string rest = line.substr(at + prefix.size());
  return rest.substr(0, rest.find(' '));
}

double Seconds(std::chrono::steady_clock::time_point since) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - since).count();
}

}  // namespace dmoe::bench
