// An in-process router::Router on loopback for tests, and the requests a trainer or a model user
// sends it: publications (signed or not) of a tiny model that needs no experts, and inference.
// Blocking calls with a 30 s deadline; error answers come back as responses so that tests can
// check status and code.
#ifndef DMOE_TESTS_ROUTER_ROUTER_FIXTURE_H_
#define DMOE_TESTS_ROUTER_ROUTER_FIXTURE_H_

#include <gtest/gtest.h>

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "core/identity.h"
#include "core/request_auth.h"
#include "net/http_client.h"
#include "router/router.h"
#include "tests/testing/f32_tensors.h"
#include "tests/testing/temp_dir.h"

namespace dmoe::router {

// A model of local layers only (linear 4 -> 3, layer_norm), so inference needs no swarm.
inline constexpr char kTinySpec[] = R"({"name": "tiny", "input_dim": 4, "layers": [
  {"type": "linear", "out": 3}, {"type": "layer_norm"}]})";

// kTinySpec's state dict: the linear layer filled with `fill`, the norm's weight 1 and bias 0.
std::vector<testing::F32Tensor> TinyState(float fill = 0.25f);
// A publication body: `tensors` as safetensors with __metadata__ spec and version.
std::vector<uint8_t> ModelBlob(const std::vector<testing::F32Tensor>& tensors,
                               const std::string& spec, const std::string& version);
// kTinySpec and TinyState() at `version`.
std::vector<uint8_t> TinyModel(const std::string& version);

// The error "code" and "message" of a PROTOCOL section 3 body; "<none>" and "" when absent.
std::string ErrorCodeOf(const net::Response& response);
std::string ErrorMessageOf(const net::Response& response);

// The four X-DMoE-* headers of a signed request.
net::Headers SignatureHeaders(const RequestSignature& sig);

// The router's unix-ms clock, for versions.
int64_t NowMs();

class RouterTest : public ::testing::Test {
 protected:
  void TearDown() override;

  // Starts a router on 127.0.0.1:0 with one network and one inference thread, models in a fresh
  // directory, and `options` for the rest (db_dir and the listen address are set here).
  void StartRouter(RouterOptions options = {});

  // PUT /v1/models/{name} with `headers` (Content-Type application/x-safetensors unless given).
  net::Response Publish(const std::string& name, std::vector<uint8_t> body,
                        net::Headers headers = {});
  // The same, signed by `trainer` for the router's peer id (or `for_peer_id` when not empty).
  net::Response SignedPublish(const Identity& trainer, const std::string& name,
                              std::vector<uint8_t> body, const std::string& for_peer_id = "");
  // POST /v1/models/{name}/infer with `content_type` (none when empty).
  net::Response Infer(const std::string& name, const std::string& content_type,
                      std::vector<uint8_t> body);
  // The version of `name` GET /v1/models lists; 0 when it lists none, -1 when the list fails.
  int64_t ListedVersion(const std::string& name);

  testing::TempDir dir_{"dmoe-router-test"};
  std::unique_ptr<Router> router_;
};

}  // namespace dmoe::router

#endif  // DMOE_TESTS_ROUTER_ROUTER_FIXTURE_H_
