#include "gating/remote_expert.h"

#include <ATen/ATen.h>

#include <nlohmann/json.hpp>
#include <numeric>
#include <stdexcept>

#include "gating/dispatch.h"
#include "net/http_client.h"

namespace dmoe::gating {

Result<ExpertInfo> FetchExpertInfo(const std::string& endpoint, const std::string& uid,
                                   std::chrono::milliseconds timeout) {
  DMOE_ASSIGN_OR_RETURN(net::Response response,
                        net::Fetch("GET", endpoint + "/v1/experts/" + uid, {}, {}, timeout));
  auto j = nlohmann::json::parse(response.body_view(), nullptr, false);
  if (j.is_discarded() || !j.is_object()) {
    return InvalidArgumentError("expert info of " + uid + " at " + endpoint + " is not JSON");
  }
  ExpertInfo info;
  try {
    info.uid = j.at("uid").get<std::string>();
    info.type = j.at("type").get<std::string>();
    info.hidden_dim = j.at("hidden_dim").get<int64_t>();
    info.step = j.at("step").get<int64_t>();
    info.params = j.value("params", int64_t{0});
  } catch (const nlohmann::json::exception& e) {
    return InvalidArgumentError("expert info of " + uid + " at " + endpoint + ": " + e.what());
  }
  return info;
}

RemoteExpertImpl::RemoteExpertImpl(std::string uid, std::string endpoint,
                                   std::shared_ptr<Swarm> swarm, RemoteExpertOptions options)
    : uid_(std::move(uid)),
      endpoint_(std::move(endpoint)),
      swarm_(std::move(swarm)),
      options_(options),
      counters_(std::make_shared<internal::Counters>()) {
  if (!swarm_) throw std::runtime_error("RemoteExpert: a Swarm is required");
  anchor_ = at::zeros({1}).set_requires_grad(true);
}

at::Tensor RemoteExpertImpl::forward(const at::Tensor& x) {
  if (x.dim() != 2 || x.size(0) < 1) {
    throw std::runtime_error("RemoteExpert " + uid_ + ": x must be [N, d] with N >= 1");
  }
  auto state = c10::make_intrusive<internal::DispatchState>();
  state->swarm = swarm_;
  state->counters = counters_;
  state->wire_dtype = options_.wire_dtype;
  state->n = x.size(0);
  state->k = 1;
  state->d = x.size(1);
  internal::ExpertCall call{
      uid_, endpoint_, std::vector<int64_t>(state->n), std::vector<int64_t>(state->n, 0), {},
      -1,   false};
  std::iota(call.rows.begin(), call.rows.end(), 0);
  state->calls.push_back(std::move(call));
  state->backward_policy = {1, options_.backward_timeout, options_.backward_timeout,
                            options_.detect_anomalies};
  internal::RunForward(
      *state, x,
      {1, options_.forward_timeout, options_.forward_timeout, options_.detect_anomalies});
  if (!state->calls[0].answered) {
    throw std::runtime_error("RemoteExpert " + uid_ + " at " + endpoint_ +
                             " gave no usable answer within " +
                             std::to_string(options_.forward_timeout.count()) + " ms");
  }
  return internal::ApplyRemote(anchor_, x, state).squeeze(1).to(x.scalar_type());
}

}  // namespace dmoe::gating
