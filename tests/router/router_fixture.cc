#include "tests/router/router_fixture.h"

#include <chrono>
#include <nlohmann/json.hpp>

#include "core/clock.h"
#include "tests/testing/in_process_router.h"

namespace dmoe::router {

using namespace std::chrono_literals;

std::vector<testing::F32Tensor> TinyState(float fill) {
  return {{"layer0.weight", {3, 4}, std::vector<float>(12, fill)},
          {"layer0.bias", {3}, std::vector<float>(3, fill)},
          {"layer1.weight", {3}, std::vector<float>(3, 1.0f)},
          {"layer1.bias", {3}, std::vector<float>(3, 0.0f)}};
}

std::vector<uint8_t> ModelBlob(const std::vector<testing::F32Tensor>& tensors,
                               const std::string& spec, const std::string& version) {
  return testing::EncodeF32(tensors, {{"spec", spec}, {"version", version}});
}

std::vector<uint8_t> TinyModel(const std::string& version) {
  return ModelBlob(TinyState(), kTinySpec, version);
}

namespace {

std::string ErrorField(const net::Response& response, const char* field, const char* absent) {
  nlohmann::json j = nlohmann::json::parse(response.body_view(), nullptr, false);
  if (!j.is_object() || !j.contains("error") || !j["error"].is_object() ||
      !j["error"].contains(field) || !j["error"][field].is_string()) {
    return absent;
  }
  return j["error"][field].get<std::string>();
}

net::Response Call(const std::string& method, const std::string& url, net::Headers headers,
                   std::vector<uint8_t> body) {
  Result<net::Response> r = net::Fetch(method, url, std::move(headers), std::move(body), 30s,
                                       net::RequestOptions{.raw_error_responses = true});
  EXPECT_TRUE(r.ok()) << method << " " << url << ": " << r.status().ToString();
  return r.ok() ? std::move(r).value() : net::Response{};
}

}  // namespace

std::string ErrorCodeOf(const net::Response& response) {
  return ErrorField(response, "code", "<none>");
}
std::string ErrorMessageOf(const net::Response& response) {
  return ErrorField(response, "message", "");
}

net::Headers SignatureHeaders(const RequestSignature& sig) {
  return {{kKeyHeader, sig.key_hex},
          {kTimestampHeader, sig.timestamp_ms},
          {kNonceHeader, sig.nonce_hex},
          {kSignatureHeader, sig.signature_hex}};
}

int64_t NowMs() { return RealClock::Instance().NowUnixMs(); }

void RouterTest::TearDown() {
  if (router_) router_->Stop();
}

void RouterTest::StartRouter(RouterOptions options) {
  options.listen_host = "127.0.0.1";
  options.listen_port = 0;
  options.db_dir = dir_.Sub("router");
  options.inference_threads = 1;
  Result<std::unique_ptr<Router>> r = testing::StartInProcessRouter(std::move(options));
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  router_ = std::move(r).value();
}

net::Response RouterTest::Publish(const std::string& name, std::vector<uint8_t> body,
                                  net::Headers headers) {
  if (!headers.Has("Content-Type")) headers.Set("Content-Type", "application/x-safetensors");
  return Call("PUT", router_->endpoint() + "/v1/models/" + name, std::move(headers),
              std::move(body));
}

net::Response RouterTest::SignedPublish(const Identity& trainer, const std::string& name,
                                        std::vector<uint8_t> body, const std::string& for_peer_id) {
  const std::string path = "/v1/models/" + name;
  RequestSignature sig = SignRequest(
      trainer, for_peer_id.empty() ? router_->peer_id() : for_peer_id, "PUT", path, body, NowMs());
  return Publish(name, std::move(body), SignatureHeaders(sig));
}

net::Response RouterTest::Infer(const std::string& name, const std::string& content_type,
                                std::vector<uint8_t> body) {
  net::Headers headers;
  if (!content_type.empty()) headers.Set("Content-Type", content_type);
  return Call("POST", router_->endpoint() + "/v1/models/" + name + "/infer", std::move(headers),
              std::move(body));
}

int64_t RouterTest::ListedVersion(const std::string& name) {
  Result<net::Response> r = net::Fetch("GET", router_->endpoint() + "/v1/models", {}, {}, 30s);
  if (!r.ok()) return -1;
  nlohmann::json j = nlohmann::json::parse(r->body_view(), nullptr, false);
  if (!j.is_object() || !j.contains("models")) return -1;
  for (const nlohmann::json& m : j["models"]) {
    if (m.value("name", "") == name) return m.value("version", int64_t{-1});
  }
  return 0;
}

}  // namespace dmoe::router
