// HTTP body throughput on loopback: a 64 MiB POST until the handler has the body, and a 64 MiB GET
// including the server building the body, through net::HttpServer and net::HttpClient on one
// warm keep-alive connection. Usage: http_body [--smoke]. Writes
// ${DMOE_BENCH_OUT:-bench/results}/http_body.json. Figures in MB/s (1e6 bytes per second).
#include <atomic>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "bench/harness.h"
#include "net/http_client.h"
#include "net/http_server.h"

namespace {

using namespace std::chrono_literals;
using Clock = std::chrono::steady_clock;
using dmoe::net::Bytes;

constexpr size_t kSize = 64ull << 20;

double Mbps(Clock::duration d) {
  return static_cast<double>(kSize) / 1e6 / std::chrono::duration<double>(d).count();
}

}  // namespace

int main(int argc, char** argv) {
  bool smoke = false;
  if (!dmoe::bench::ParseFlags(argc, argv, "[--smoke]", {}, &smoke)) return 2;
  const int rounds = smoke ? 1 : 8;

  dmoe::net::HttpServerOptions options;
  options.max_body_bytes = kSize;
  dmoe::net::HttpServer server(options);
  std::atomic<int64_t> handler_at{0};
  server.Handle("POST", "/sink", [&](dmoe::net::Request req, dmoe::net::Responder respond) {
    handler_at = Clock::now().time_since_epoch().count();
    respond(dmoe::net::Response::Text(200, "text/plain", std::to_string(req.body.size())));
  });
  server.Handle("GET", "/source", [&](dmoe::net::Request, dmoe::net::Responder respond) {
    respond(dmoe::net::Response::Binary(200, "application/octet-stream", Bytes(kSize, 0x5a)));
  });
  if (dmoe::Status s = server.Start(); !s.ok()) {
    std::fprintf(stderr, "http_body: %s\n", s.ToString().c_str());
    return 1;
  }
  const std::string base = "http://127.0.0.1:" + std::to_string(server.port());
  dmoe::net::HttpClient client;
  // Warm the connection so the numbers measure the body, not the connect.
  if (!client.Fetch("POST", base + "/sink", {}, {}, 10s).ok()) {
    std::fprintf(stderr, "http_body: the warm-up request failed\n");
    return 1;
  }
  std::vector<double> post, get;
  for (int round = 0; round < rounds; ++round) {
    Bytes body(kSize, 0x5a);  // Built outside the timed part.
    const auto start = Clock::now();
    auto up = client.Fetch("POST", base + "/sink", {}, std::move(body), 60s);
    const auto mid = Clock::now();
    auto down = client.Fetch("GET", base + "/source", {}, {}, 60s);
    const auto end = Clock::now();
    if (!up.ok() || up->body_view() != std::to_string(kSize) || !down.ok() ||
        down->body.size() != kSize) {
      std::fprintf(stderr, "http_body: round %d: %s / %s\n", round,
                   up.ok() ? "POST ok" : up.status().ToString().c_str(),
                   down.ok() ? "GET ok" : down.status().ToString().c_str());
      return 1;
    }
    const auto upload = Clock::time_point(Clock::duration(handler_at.load())) - start;
    post.push_back(Mbps(upload));
    get.push_back(Mbps(end - mid));
    std::printf(
        "64 MiB POST: %.0f MB/s until the handler has the body; 64 MiB GET: %.0f MB/s "
        "(including the server building the body)\n",
        post.back(), get.back());
  }
  server.Stop(5s);
  const double post_p50 = dmoe::bench::Percentile(post, 0.5);
  const double get_p50 = dmoe::bench::Percentile(get, 0.5);
  std::printf("http_body: median of %d rounds: POST %.0f MB/s, GET %.0f MB/s\n", rounds, post_p50,
              get_p50);
  const nlohmann::json report = {{"benchmark", "http_body"},
                                 {"smoke", smoke},
                                 {"unit", "MB/s (1e6 bytes per second)"},
                                 {"body_bytes", kSize},
                                 {"rounds", rounds},
                                 {"post_mbps", post},
                                 {"get_mbps", get},
                                 {"post_mbps_p50", post_p50},
                                 {"get_mbps_p50", get_p50}};
  return dmoe::bench::Report("http_body", report) ? 0 : 1;
}
