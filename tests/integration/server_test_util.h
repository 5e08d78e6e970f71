// Helpers for the multi-process tests of dmoe-server: start a real server (testing::StartServer),
// talk to it over HTTP, and build safetensors bodies without torch.
#ifndef DMOE_TESTS_INTEGRATION_SERVER_TEST_UTIL_H_
#define DMOE_TESTS_INTEGRATION_SERVER_TEST_UTIL_H_

#include <chrono>
#include <cstdint>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "core/status.h"
#include "net/http_client.h"
#include "tests/testing/f32_tensors.h"
#include "tests/testing/processes.h"

namespace dmoe::integration {

// Started through tests/testing/processes.h; these names stay for the integration tests.
using testing::kStartTimeout;
using testing::ServerProcess;

// Starts dmoe-server with "--log-level info" and `args` and waits for its "listening on" line
// (testing::StartServer).
Result<ServerProcess> StartServer(const std::vector<std::string>& args);

// The server's usual flags for these tests: loopback, port 0, one small ffn, one compute thread so
// that results are reproducible bit for bit.
std::vector<std::string> BaseServerArgs(const std::string& experts, int hidden_dim = 32);

// Torch-free request bodies (tests/testing/f32_tensors.h).
using testing::EncodeF32;
using testing::F32Tensor;
using testing::Pattern;

// A small blocking HTTP client for one server: every call has a 30 s deadline, and error answers
// come back as responses (raw_error_responses), so tests can check status and body.
class ServerClient {
 public:
  explicit ServerClient(std::string endpoint) : endpoint_(std::move(endpoint)) {}

  Result<net::Response> Get(const std::string& path);
  Result<net::Response> Post(const std::string& path, std::vector<uint8_t> body,
                             net::Headers headers = {});
  // POST /v1/experts/{uid}/forward and /backward with a safetensors body.
  Result<net::Response> Forward(const std::string& uid, std::vector<uint8_t> body);
  Result<net::Response> Backward(const std::string& uid, std::vector<uint8_t> body,
                                 net::Headers headers = {});

  // "step" of GET /v1/experts/{uid}; -1 on any failure.
  int64_t ExpertStep(const std::string& uid);
  // The value of an unlabelled counter or gauge in GET /metrics; 0 when absent (a counter that has
  // not counted yet is not rendered), nullopt when the metrics cannot be read.
  std::optional<double> Metric(const std::string& name);

  const std::string& endpoint() const { return endpoint_; }

 private:
  std::string endpoint_;
  net::HttpClient client_;
};

// One WebSocket to a server's /v1/ws with one request in flight at a time; for tests.
class WsSession {
 public:
  // Opens ws://HOST:PORT/v1/ws of `endpoint` with `headers` on the upgrade. A refused upgrade is
  // the Status of the server's answer (e.g. kPermissionDenied).
  static Result<std::unique_ptr<WsSession>> Open(const std::string& endpoint,
                                                 net::Headers headers = {});
  ~WsSession();

  // Sends one request blob and returns the next message the server sends (the raw answer blob);
  // kDeadlineExceeded after 30 s.
  Result<std::vector<uint8_t>> Call(std::vector<uint8_t> request);

 private:
  struct Inbox;
  WsSession() = default;
  std::shared_ptr<Inbox> inbox_;
  std::unique_ptr<net::WsClient> client_;
  std::shared_ptr<net::WsConnection> connection_;
};

// The "code" of a PROTOCOL section 3 error body, or "" when the body is not one.
std::string ErrorCode(const net::Response& response);

}  // namespace dmoe::integration

#endif  // DMOE_TESTS_INTEGRATION_SERVER_TEST_UTIL_H_
