#include "dht/announcement.h"

#include <nlohmann/json.hpp>

namespace dmoe::dht {
namespace {

Result<nlohmann::json> ParseObject(std::string_view text, std::string_view what) {
  nlohmann::json j = nlohmann::json::parse(text, nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded() || !j.is_object()) {
    return InvalidArgumentError(std::string(what) + " is not a JSON object");
  }
  return j;
}

}  // namespace

std::string ExpertKey(std::string_view uid) { return "expert/" + std::string(uid); }
std::string PrefixKey(std::string_view grid_prefix) { return "prefix/" + std::string(grid_prefix); }

std::string ExpertAnnouncement::ToJson() const {
  return nlohmann::json{{"endpoint", endpoint},
                        {"step", step},
                        {"load", load},
                        {"type", type},
                        {"hidden_dim", hidden_dim}}
      .dump();
}

Result<ExpertAnnouncement> ExpertAnnouncement::Parse(std::string_view json) {
  DMOE_ASSIGN_OR_RETURN(nlohmann::json j, ParseObject(json, "expert announcement"));
  ExpertAnnouncement a;
  auto endpoint = j.find("endpoint");
  if (endpoint == j.end() || !endpoint->is_string()) {
    return InvalidArgumentError("expert announcement has no string 'endpoint'");
  }
  a.endpoint = endpoint->get<std::string>();
  if (a.endpoint.rfind("http://", 0) != 0) {
    return InvalidArgumentError("expert announcement endpoint '" + a.endpoint + "' is not http://");
  }
  if (auto it = j.find("step"); it != j.end() && it->is_number_integer())
    a.step = it->get<int64_t>();
  if (auto it = j.find("load"); it != j.end() && it->is_number()) a.load = it->get<double>();
  if (auto it = j.find("type"); it != j.end() && it->is_string()) a.type = it->get<std::string>();
  if (auto it = j.find("hidden_dim"); it != j.end() && it->is_number_integer()) {
    a.hidden_dim = it->get<int64_t>();
  }
  return a;
}

std::string PrefixEntry::ToJson() const {
  return nlohmann::json{{"uid", uid}, {"peer_id", peer_id}}.dump();
}

Result<PrefixEntry> PrefixEntry::Parse(std::string_view json) {
  DMOE_ASSIGN_OR_RETURN(nlohmann::json j, ParseObject(json, "prefix entry"));
  auto uid = j.find("uid");
  auto peer = j.find("peer_id");
  if (uid == j.end() || !uid->is_string() || peer == j.end() || !peer->is_string()) {
    return InvalidArgumentError("prefix entry needs string 'uid' and 'peer_id'");
  }
  return PrefixEntry{uid->get<std::string>(), peer->get<std::string>()};
}

}  // namespace dmoe::dht
