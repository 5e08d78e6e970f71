#include "core/logging.h"

#include <spdlog/sinks/stdout_color_sinks.h>
#include <spdlog/spdlog.h>

#include <string>

namespace dmoe {

Status SetUpLogging(std::string_view program, std::string_view level) {
  spdlog::level::level_enum parsed = spdlog::level::from_str(std::string(level));
  // from_str maps unknown names to "off"; only accept "off" when it was asked for.
  if (parsed == spdlog::level::off && level != "off") {
    return InvalidArgumentError("unknown log level '" + std::string(level) +
                                "' (allowed: trace, debug, info, warn, error, off)");
  }
  spdlog::drop(std::string(program));  // Allows a second call, e.g. from tests.
  auto logger = spdlog::stderr_color_mt(std::string(program));
  logger->set_level(parsed);
  logger->set_pattern("%Y-%m-%dT%H:%M:%S.%e %^%l%$ %n: %v");
  spdlog::set_default_logger(logger);
  spdlog::flush_on(spdlog::level::warn);
  return Status::Ok();
}

}  // namespace dmoe
