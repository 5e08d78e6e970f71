#include "core/host_port.h"

#include <optional>

#include "core/integer.h"

namespace dmoe {
namespace {

bool IsNameChar(char c) {
  return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '-' ||
         c == '_' || c == '.';
}

bool IsIpv6Char(char c) {
  return (c >= 'a' && c <= 'f') || (c >= 'A' && c <= 'F') || (c >= '0' && c <= '9') || c == ':' ||
         c == '.';
}

}  // namespace

std::string HostPort::ToString() const {
  std::string h = host.find(':') != std::string::npos ? "[" + host + "]" : host;
  return h + ":" + std::to_string(port);
}

Result<HostPort> ParseHostPort(std::string_view text, PortRule rule) {
  auto bad = [&](std::string_view why) {
    return InvalidArgumentError("address '" + std::string(text.substr(0, 200)) +
                                "': " + std::string(why) +
                                " (expected HOST:PORT, e.g. 10.0.0.5:7000, [::1]:7000 or "
                                "name.example.org:7000)");
  };
  if (text.find("://") != std::string_view::npos) return bad("no scheme is taken here");
  size_t colon = text.rfind(':');
  if (colon == std::string_view::npos) return bad("missing port");
  std::string_view host = text.substr(0, colon);
  std::string_view port_text = text.substr(colon + 1);
  HostPort out;
  if (!host.empty() && host.front() == '[') {
    if (host.size() < 3 || host.back() != ']') return bad("unclosed or empty '[' ']'");
    host = host.substr(1, host.size() - 2);
    for (char c : host) {
      if (!IsIpv6Char(c)) return bad("bad IPv6 address");
    }
    if (host.find(':') == std::string_view::npos) return bad("bad IPv6 address");
  } else {
    if (host.empty()) return bad("missing host");
    if (host.find(':') != std::string_view::npos) {
      return bad("an IPv6 address must be in brackets");
    }
    for (char c : host) {
      if (!IsNameChar(c)) return bad("bad character in host");
    }
  }
  out.host = std::string(host);
  const std::optional<uint16_t> port = ParseInteger<uint16_t>(port_text);
  if (!port) return bad("port must be 0..65535");
  if (*port == 0 && rule == PortRule::kNonZeroPort) return bad("port must be 1..65535");
  out.port = *port;
  return out;
}

}  // namespace dmoe
