#include "tests/hostile/rogue_server.h"

#include <chrono>
#include <cstring>
#include <limits>
#include <map>
#include <optional>
#include <random>
#include <span>
#include <string_view>

#include <nlohmann/json.hpp>

#include "core/clock.h"
#include "core/request_auth.h"
#include "core/uid.h"
#include "dht/announcement.h"
#include "dht/dht.h"
#include "net/http_client.h"
#include "net/http_server.h"
#include "tensor/safetensors.h"

namespace dmoe::hostile {
namespace {

using namespace std::chrono_literals;

std::vector<uint8_t> AsBytes(const std::vector<float>& values) {
  std::vector<uint8_t> out(values.size() * sizeof(float));
  std::memcpy(out.data(), values.data(), out.size());
  return out;
}

std::vector<uint8_t> Blob(const std::string& name, std::vector<int64_t> shape,
                          const std::vector<float>& values,
                          const std::map<std::string, std::string>& metadata) {
  std::vector<uint8_t> data = AsBytes(values);
  std::vector<safetensors::TensorRef> refs;
  if (!name.empty()) refs.push_back({name, safetensors::DType::kF32, std::move(shape), data});
  Result<std::vector<uint8_t>> blob = safetensors::Encode(refs, metadata);
  return blob.ok() ? std::move(blob).value() : std::vector<uint8_t>{};
}

// The poisoned answer to one WebSocket request; nullopt = stay silent.
std::optional<std::vector<uint8_t>> Answer(RogueAnswer kind, std::span<const uint8_t> request,
                                           int64_t hidden_dim) {
  Result<safetensors::Decoded> decoded = safetensors::Decode(request);
  if (!decoded.ok()) return std::nullopt;
  const std::string id = decoded->metadata.count("id") ? decoded->metadata.at("id") : "";
  const std::string uid = decoded->metadata.count("uid") ? decoded->metadata.at("uid") : "";
  const std::string op = decoded->metadata.count("op") ? decoded->metadata.at("op") : "forward";
  const safetensors::TensorView* x = decoded->Find("x");
  const int64_t rows = x != nullptr && !x->shape.empty() ? x->shape[0] : 1;
  const std::map<std::string, std::string> meta = {{"id", id}, {"uid", uid}, {"step", "0"}};
  const std::string out = op == "backward" ? "grad_x" : "y";
  const auto n = static_cast<size_t>(rows * hidden_dim);
  switch (kind) {
    case RogueAnswer::kStall:
      return std::nullopt;
    case RogueAnswer::kGarbage: {
      // Random bytes as y's data under the request's id: random float bits, so NaN, Inf, 1e30 and
      // denormals alike. (Bytes that are no blob at all are ignored by the caller: a stall.)
      std::mt19937 rng(static_cast<uint32_t>(rows * 7919 + static_cast<int64_t>(id.size())));
      std::vector<float> junk(n);
      for (float& f : junk) {
        const uint32_t bits = rng();
        std::memcpy(&f, &bits, sizeof(f));
      }
      return Blob(out, {rows, hidden_dim}, junk, meta);
    }
    case RogueAnswer::kHuge:
      return Blob(out, {rows, hidden_dim}, std::vector<float>(n, 3e38f), meta);
    case RogueAnswer::kWrongShape:
      return Blob(out, {rows, hidden_dim + 1},
                  std::vector<float>(static_cast<size_t>(rows * (hidden_dim + 1)), 0.5f), meta);
    case RogueAnswer::kNan:
      return Blob(out, {rows, hidden_dim},
                  std::vector<float>(n, std::numeric_limits<float>::quiet_NaN()), meta);
    case RogueAnswer::kInvalidArgument:
      return Blob("", {}, {},
                  {{"id", id},
                   {"uid", uid},
                   {"error_code", "invalid_argument"},
                   {"error_message", "rogue: x is fine, but no"}});
  }
  return std::nullopt;
}

}  // namespace

const char* RogueAnswerName(RogueAnswer answer) {
  switch (answer) {
    case RogueAnswer::kGarbage:
      return "garbage";
    case RogueAnswer::kHuge:
      return "huge";
    case RogueAnswer::kWrongShape:
      return "wrong_shape";
    case RogueAnswer::kNan:
      return "nan";
    case RogueAnswer::kInvalidArgument:
      return "invalid_argument";
    case RogueAnswer::kStall:
      return "stall";
  }
  return "?";
}

Result<std::unique_ptr<RogueServer>> RogueServer::Start(RogueServerOptions options) {
  std::unique_ptr<RogueServer> s(new RogueServer());
  s->options_ = std::move(options);
  net::HttpServerOptions http_options;
  http_options.host = "127.0.0.1";
  http_options.threads = 1;
  s->http_ = std::make_unique<net::HttpServer>(http_options);
  // It proves the key it announces with (docs/protocol.md section 4), so clients do call it: the
  // poison must be caught in its answers, not by the endpoint proof.
  RogueServer* self = s.get();
  s->http_->Handle("GET", "/v1/health", [self](net::Request req, net::Responder respond) {
    nlohmann::json body = {{"status", "ok"}, {"peer_id", self->identity_.peer_id()}};
    if (std::optional<std::string_view> challenge = req.QueryValue("challenge")) {
      body["public_key"] = self->identity_.public_key_hex();
      body["proof"] = SignProof(self->identity_, *challenge);
    }
    respond(net::Response::Json(200, body.dump()));
  });
  const RogueAnswer kind = s->options_.answer;
  const int64_t d = s->options_.hidden_dim;
  auto requests = s->requests_;
  net::WsHandlers handlers;
  handlers.on_message = [kind, d, requests](const std::shared_ptr<net::WsConnection>& conn,
                                            net::Bytes message) {
    requests->fetch_add(1);
    std::optional<std::vector<uint8_t>> answer = Answer(kind, message, d);
    if (answer) conn->Send(std::move(*answer)).IgnoreError();
  };
  s->http_->HandleWebSocket("/v1/ws", std::move(handlers));
  DMOE_RETURN_IF_ERROR(s->http_->Start());

  if (!s->options_.dht_bootstrap.empty()) {
    dht::DhtOptions dht_options;
    dht_options.clock = &RealClock::Instance();
    dht_options.listen = "127.0.0.1:0";
    dht_options.bootstrap = {s->options_.dht_bootstrap};
    dht_options.node.network = s->options_.dht_network;
    dht_options.identity = s->identity_;
    DMOE_ASSIGN_OR_RETURN(s->dht_, dht::Dht::Start(std::move(dht_options)));
    DMOE_RETURN_IF_ERROR(s->dht_->WaitBootstrapped(10s));
    const std::string peer = s->dht_->peer_id();
    for (const std::string& text : s->options_.uids) {
      DMOE_ASSIGN_OR_RETURN(ExpertUid uid, ParseExpertUid(text));
      dht::ExpertAnnouncement value{s->endpoint(), 0, 0.0, "ffn", d};
      DMOE_RETURN_IF_ERROR(
          s->dht_->PutBlocking(dht::ExpertKey(text), peer, value.ToJson(), 600s).status());
      for (size_t depth = 0; depth < uid.indices.size(); ++depth) {
        Status put = s->dht_
                         ->PutBlocking(dht::PrefixKey(uid.GridPrefixAt(depth)),
                                       std::to_string(uid.indices[depth]),
                                       dht::PrefixEntry{text, peer}.ToJson(), 600s)
                         .status();
        // A grid row another rogue (or the honest server) already announced is as good.
        if (!put.ok() && put.code() != Code::kPermissionDenied) return put;
      }
    }
  }
  return s;
}

RogueServer::~RogueServer() { Stop(); }

std::string RogueServer::endpoint() const {
  return "http://127.0.0.1:" + std::to_string(http_->port());
}

void RogueServer::Stop() {
  if (http_) http_->Stop(std::chrono::milliseconds(500));
  if (dht_) dht_->Stop();
}

std::vector<int> SendHugeGradients(const std::string& endpoint, const std::string& uid,
                                   int64_t hidden_dim, const std::vector<float>& scales,
                                   int64_t batch) {
  std::vector<int> statuses;
  std::mt19937 rng(12);
  std::uniform_real_distribution<float> unit(-1.0f, 1.0f);
  const auto n = static_cast<size_t>(batch * hidden_dim);
  for (float scale : scales) {
    std::vector<float> x(n), g(n);
    for (size_t i = 0; i < n; ++i) {
      x[i] = unit(rng);
      g[i] = scale * unit(rng);
    }
    std::vector<uint8_t> xb = AsBytes(x), gb = AsBytes(g);
    Result<std::vector<uint8_t>> blob =
        safetensors::Encode({{"x", safetensors::DType::kF32, {batch, hidden_dim}, xb},
                             {"grad_y", safetensors::DType::kF32, {batch, hidden_dim}, gb}},
                            {});
    if (!blob.ok()) {
      statuses.push_back(0);
      continue;
    }
    Result<net::Response> r =
        net::Fetch("POST", endpoint + "/v1/experts/" + uid + "/backward",
                   {{"Content-Type", "application/x-safetensors"}}, std::move(blob).value(), 30s,
                   net::RequestOptions{.raw_error_responses = true});
    statuses.push_back(r.ok() ? r->status : 0);
  }
  return statuses;
}

}  // namespace dmoe::hostile
