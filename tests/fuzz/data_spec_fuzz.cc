// The --data value comes from a command line: its parser must refuse garbage with a message a
// terminal can print, and accept only the three forms, which it must give back exactly.
#include <cstdint>
#include <cstdlib>
#include <string>
#include <string_view>

#include "data/data_source.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using dmoe::data::DataSource;
  const std::string_view value(reinterpret_cast<const char*>(data), size);
  dmoe::Result<dmoe::data::DataSpec> spec = dmoe::data::ParseDataSpec(value);
  if (!spec.ok()) {
    const dmoe::Status status = spec.status();
    if (status.code() != dmoe::Code::kInvalidArgument) std::abort();
    for (char c : status.message()) {
      if (c < 0x20 || c > 0x7e) std::abort();  // the value is quoted with \xNN escapes
    }
    return 0;
  }
  switch (spec->source) {
    case DataSource::kFashionMnist:
      if (value != "fashion-mnist" || !spec->path.empty()) std::abort();
      break;
    case DataSource::kKjv:
      if (value != "kjv" || !spec->path.empty()) std::abort();
      break;
    case DataSource::kTextFile:
      if ("text:" + spec->path != value || spec->path.empty() ||
          spec->path.find('\0') != std::string::npos) {
        std::abort();
      }
      break;
  }
  if (size > dmoe::data::kMaxDataValueBytes) std::abort();
  return 0;
}
