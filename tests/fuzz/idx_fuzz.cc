// IDX files are read from disk into the trainer; a corrupt file must be refused, not crash it.
#include <cstdint>
#include <cstdlib>

#include "data/fashion_mnist.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  auto parsed = dmoe::data::ParseIdx({data, size});
  if (parsed.ok()) {
    uint64_t total = 1;
    for (int64_t d : parsed->dims) total *= static_cast<uint64_t>(d);
    if (total != parsed->data.size()) std::abort();
  } else if (parsed.status().code() != dmoe::Code::kInvalidArgument) {
    std::abort();
  }
  return 0;
}
