// The data sets a trainer can learn from, chosen by dmoe-train's --data, and the parser of that
// flag's value. Each source has its reader in data/: data/fashion_mnist.h for images,
// data/text_corpus.h for text. Torch-free; every function is pure and safe from any thread.
#ifndef DMOE_DATA_DATA_SOURCE_H_
#define DMOE_DATA_DATA_SOURCE_H_

#include <cstddef>
#include <string>
#include <string_view>

#include "core/status.h"

namespace dmoe::data {

enum class DataSource {
  kFashionMnist,  // --data fashion-mnist: 28x28 grey images, 10 classes (data/fashion_mnist.h)
  kKjv,           // --data kjv: the King James Version from Debian's bible-kjv (data/text_corpus.h)
  kTextFile,      // --data text:FILE: the bytes of any file, as text (data/text_corpus.h)
};

// True for the sources a language model trains on (kKjv, kTextFile).
bool IsTextSource(DataSource source);

// What --data names: a source, and for kTextFile the file's path exactly as given (relative paths
// stay relative to the process's working directory). `path` is empty for the other sources.
struct DataSpec {
  DataSource source = DataSource::kFashionMnist;
  std::string path;
};

// The longest --data value accepted, and so the longest FILE of text:FILE (Linux's PATH_MAX).
inline constexpr size_t kMaxDataValueBytes = 4096;

// Parses a --data value: exactly `fashion-mnist`, `kjv`, or `text:FILE` with FILE non-empty.
// Case matters and nothing is trimmed. The file is not opened here. kInvalidArgument naming what is
// wrong for anything else: an unknown name, an empty FILE, a NUL byte in FILE, or a value longer
// than kMaxDataValueBytes. The message quotes the value with non-printable bytes as \xNN.
Result<DataSpec> ParseDataSpec(std::string_view value);

}  // namespace dmoe::data

#endif  // DMOE_DATA_DATA_SOURCE_H_
