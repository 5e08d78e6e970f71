// `dmoe experts --router URL`: the swarm as the router sees it (GET /v1/swarm), one line per
// expert: uid, status, server, step, load, latency.
#include <CLI/CLI.hpp>

#include <cstdio>
#include <iostream>
#include <nlohmann/json.hpp>

#include "cli/commands.h"
#include "net/http_client.h"

namespace dmoe::cli {

int RunExperts(const std::string& router, std::ostream& out, std::ostream& err) {
  Result<net::Response> r =
      net::Fetch("GET", router + "/v1/swarm", {}, {}, std::chrono::seconds(30));
  if (!r.ok()) {
    err << "error: " << r.status().message() << "\n";
    return kExitError;
  }
  nlohmann::json swarm = nlohmann::json::parse(r->body_view(), nullptr, false);
  if (!swarm.is_object() || !swarm.contains("experts") || !swarm["experts"].is_array()) {
    err << "error: " << router << "/v1/swarm did not answer the swarm JSON\n";
    return kExitError;
  }
  char line[256];
  std::snprintf(line, sizeof(line), "%-14s %-12s %-24s %8s %6s %10s\n", "uid", "status", "server",
                "step", "load", "latency");
  out << line;
  for (const auto& e : swarm["experts"]) {
    const double latency = e.value("latency_ms", -1.0);
    std::snprintf(line, sizeof(line), "%-14s %-12s %-24s %8lld %5.0f%% %10s\n",
                  e.value("uid", "").c_str(), e.value("status", "").c_str(),
                  e.value("endpoint", "").substr(0, 24).c_str(),
                  static_cast<long long>(e.value("step", int64_t{0})), 100 * e.value("load", 0.0),
                  latency >= 0 ? (std::to_string(latency).substr(0, 5) + " ms").c_str() : "-");
    out << line;
  }
  out << swarm["experts"].size() << " experts on "
      << swarm.value("peers", nlohmann::json::array()).size() << " servers; "
      << swarm.value("models", nlohmann::json::array()).size() << " models\n";
  return kExitOk;
}

void AddExpertsCommand(CLI::App& app, int* exit_code) {
  auto* cmd = app.add_subcommand("experts", "List the swarm's experts as a router sees them");
  auto router = std::make_shared<std::string>();
  cmd->add_option("--router", *router, "router URL, e.g. http://127.0.0.1:8000")->required();
  cmd->callback([=] { *exit_code = RunExperts(*router, std::cout, std::cerr); });
}

}  // namespace dmoe::cli
