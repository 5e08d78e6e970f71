// Writing a file so that readers see either the old file or the complete new one, never a prefix,
// even across a crash or power loss.
#ifndef DMOE_STORAGE_ATOMIC_FILE_H_
#define DMOE_STORAGE_ATOMIC_FILE_H_

#include <cstdint>
#include <span>
#include <string>

#include "core/status.h"

namespace dmoe::storage {

// Writes `data` to a temporary file beside `path`, fsyncs it, renames it over `path` and fsyncs the
// directory. The file gets mode 0644. kNotFound when the directory does not exist,
// kPermissionDenied when it is not writable, kResourceExhausted when the disk is full, kInternal
// for other I/O errors; on any error `path` is left as it was and the temporary file is removed.
Status WriteFileAtomically(const std::string& path, std::span<const uint8_t> data);

}  // namespace dmoe::storage

#endif  // DMOE_STORAGE_ATOMIC_FILE_H_
