// Lowercase hexadecimal, as PROTOCOL section 1 writes keys, signatures and peer ids.
#ifndef DMOE_CORE_HEX_H_
#define DMOE_CORE_HEX_H_

#include <cstdint>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "core/status.h"

namespace dmoe {

std::string HexEncode(std::span<const uint8_t> bytes);
// Accepts upper or lower case; kInvalidArgument for odd length or a non-hex character.
Result<std::vector<uint8_t>> HexDecode(std::string_view hex);

}  // namespace dmoe

#endif  // DMOE_CORE_HEX_H_
