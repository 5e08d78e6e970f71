// Process logging setup. Every executable calls SetUpLogging once in main; libraries log through
// spdlog's default logger (spdlog::info, ...), which is thread-safe.
#ifndef DMOE_CORE_LOGGING_H_
#define DMOE_CORE_LOGGING_H_

#include <string_view>

#include "core/status.h"

namespace dmoe {

// `level` is one of trace, debug, info, warn, error, off. Logs go to stderr so that stdout stays
// for machine-readable lines such as "listening on ...".
Status SetUpLogging(std::string_view program, std::string_view level);

}  // namespace dmoe

#endif  // DMOE_CORE_LOGGING_H_
