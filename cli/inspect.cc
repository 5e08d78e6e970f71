#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstdint>
#include <cstring>
#include <exception>
#include <iostream>
#include <memory>
#include <string>
#include <vector>

#include <CLI/CLI.hpp>
#include <nlohmann/json.hpp>

#include "cli/commands.h"
#include "core/status.h"
#include "tensor/safetensors.h"

namespace dmoe::cli {
namespace {

// Reads a whole regular file. kNotFound when it cannot be opened, kInvalidArgument when it is not
// a regular file, kInternal on a read error.
Result<std::vector<uint8_t>> ReadFile(const std::string& path) {
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return NotFoundError("cannot open " + path + ": " + std::strerror(errno));
  struct Closer {
    int fd;
    ~Closer() { ::close(fd); }
  } closer{fd};
  struct stat st;
  if (::fstat(fd, &st) != 0) {
    return InternalError("cannot stat " + path + ": " + std::strerror(errno));
  }
  if (!S_ISREG(st.st_mode)) return InvalidArgumentError(path + " is not a regular file");
  std::vector<uint8_t> bytes(static_cast<size_t>(st.st_size));
  size_t done = 0;
  while (done < bytes.size()) {
    const ssize_t n = ::read(fd, bytes.data() + done, bytes.size() - done);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) return InternalError("cannot read " + path + ": " + std::strerror(errno));
    if (n == 0) break;  // The file shrank while we read it; decode what is there.
    done += static_cast<size_t>(n);
  }
  bytes.resize(done);
  return bytes;
}

// A JSON string literal; Decode guarantees valid UTF-8, so dump cannot throw here.
std::string Quoted(const std::string& s) { return nlohmann::json(s).dump(); }

// Pretty JSON with one tensor or metadata entry per line, so a file with hundreds of tensors stays
// readable and greppable.
std::string Format(const safetensors::Decoded& decoded) {
  std::string out = "{\n  \"tensors\": {";
  for (size_t i = 0; i < decoded.tensors.size(); ++i) {
    const safetensors::TensorView& t = decoded.tensors[i];
    out += i == 0 ? "\n    " : ",\n    ";
    out += Quoted(t.name) + ": {\"dtype\": \"" + std::string(safetensors::DTypeName(t.dtype)) +
           "\", \"shape\": [";
    for (size_t d = 0; d < t.shape.size(); ++d) {
      out += (d == 0 ? "" : ", ") + std::to_string(t.shape[d]);
    }
    out += "]}";
  }
  out += decoded.tensors.empty() ? "},\n" : "\n  },\n";
  out += "  \"metadata\": {";
  bool first = true;
  for (const auto& [key, value] : decoded.metadata) {
    out += first ? "\n    " : ",\n    ";
    out += Quoted(key) + ": " + Quoted(value);
    first = false;
  }
  out += decoded.metadata.empty() ? "}\n}" : "\n  }\n}";
  return out;
}

Result<std::string> Describe(const std::string& path) {
  DMOE_ASSIGN_OR_RETURN(std::vector<uint8_t> blob, ReadFile(path));
  DMOE_ASSIGN_OR_RETURN(safetensors::Decoded decoded, safetensors::Decode(blob));
  return Format(decoded);
}

}  // namespace

int RunInspect(const std::string& path, std::ostream& out, std::ostream& err) {
  try {
    Result<std::string> described = Describe(path);
    if (!described.ok()) {
      err << "error: " << described.status().message() << "\n";
      return kExitError;
    }
    out << *described << "\n";
    return kExitOk;
  } catch (const std::exception& e) {
    // Decode guarantees valid UTF-8, so only allocation failure for a huge file can land here.
    err << "error: cannot inspect " << path << ": " << e.what() << "\n";
    return kExitError;
  }
}

void AddInspectCommand(CLI::App& app, int* exit_code) {
  auto path = std::make_shared<std::string>();
  CLI::App* command = app.add_subcommand(
      "inspect", "Validate a .safetensors file and print its tensors (dtype, shape) and metadata");
  command->add_option("file", *path, "the .safetensors file")->required();
  command->callback([path, exit_code] { *exit_code = RunInspect(*path, std::cout, std::cerr); });
}

}  // namespace dmoe::cli
