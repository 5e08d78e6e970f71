#include "net/url.h"

#include "core/host_port.h"

namespace dmoe::net {

std::string Url::HostPort() const { return dmoe::HostPort{host, port}.ToString(); }

Result<Url> ParseUrl(std::string_view url) {
  auto bad = [&](std::string_view why) {
    return InvalidArgumentError("bad URL '" + std::string(url.substr(0, 200)) + "': " +
                                std::string(why) + " (want http://host:port/path or ws://...)");
  };
  Url out;
  size_t scheme_end = url.find("://");
  if (scheme_end == std::string_view::npos) return bad("no scheme");
  for (char c : url.substr(0, scheme_end)) {
    out.scheme.push_back((c >= 'A' && c <= 'Z') ? static_cast<char>(c - 'A' + 'a') : c);
  }
  if (out.scheme != "http" && out.scheme != "ws") return bad("scheme must be http or ws");
  std::string_view rest = url.substr(scheme_end + 3);
  size_t path_start = rest.find_first_of("/?");
  std::string_view authority = rest.substr(0, path_start);
  out.target = path_start == std::string_view::npos ? "/" : std::string(rest.substr(path_start));
  if (out.target[0] == '?') out.target.insert(0, "/");
  if (authority.empty()) return bad("no host");
  if (authority.find('@') != std::string_view::npos) return bad("user info is not supported");
  // HOST[:PORT], parsed as every address is (core/host_port.h); the port defaults to 80.
  const bool has_port = authority.back() != ']' && authority.find(':') != std::string_view::npos;
  Result<dmoe::HostPort> host_port = ParseHostPort(
      has_port ? std::string(authority) : std::string(authority) + ":80", PortRule::kNonZeroPort);
  if (!host_port.ok()) return bad(host_port.status().message());
  out.host = std::move(host_port->host);
  out.port = host_port->port;
  for (char c : out.target) {
    if (static_cast<unsigned char>(c) <= ' ' || c == 0x7f) return bad("space or control character");
  }
  return out;
}

bool IsLoopbackHost(std::string_view host) {
  return host == "localhost" || host == "::1" || host == "[::1]" || host.rfind("127.", 0) == 0;
}

}  // namespace dmoe::net
