#include "tests/integration/server_test_util.h"

#include <gtest/gtest.h>

#include <condition_variable>
#include <deque>
#include <future>
#include <mutex>
#include <nlohmann/json.hpp>
#include <sstream>

namespace dmoe::integration {

using namespace std::chrono_literals;

Result<ServerProcess> StartServer(const std::vector<std::string>& args) {
  std::vector<std::string> flags = {"--log-level", "info"};
  flags.insert(flags.end(), args.begin(), args.end());
  return testing::StartServer(flags);
}

std::vector<std::string> BaseServerArgs(const std::string& experts, int hidden_dim) {
  return {"--listen",      "127.0.0.1:0",
          "--experts",     experts,
          "--hidden-dim",  std::to_string(hidden_dim),
          "--threads",     "1",
          "--net-threads", "1",
          "--seed",        "7"};
}

Result<net::Response> ServerClient::Get(const std::string& path) {
  return client_.Fetch("GET", endpoint_ + path, {}, {}, 30s, {.raw_error_responses = true});
}

Result<net::Response> ServerClient::Post(const std::string& path, std::vector<uint8_t> body,
                                         net::Headers headers) {
  if (!headers.Has("Content-Type")) headers.Set("Content-Type", "application/x-safetensors");
  return client_.Fetch("POST", endpoint_ + path, std::move(headers), std::move(body), 30s,
                       {.raw_error_responses = true});
}

Result<net::Response> ServerClient::Forward(const std::string& uid, std::vector<uint8_t> body) {
  return Post("/v1/experts/" + uid + "/forward", std::move(body));
}

Result<net::Response> ServerClient::Backward(const std::string& uid, std::vector<uint8_t> body,
                                             net::Headers headers) {
  return Post("/v1/experts/" + uid + "/backward", std::move(body), std::move(headers));
}

int64_t ServerClient::ExpertStep(const std::string& uid) {
  Result<net::Response> r = Get("/v1/experts/" + uid);
  if (!r.ok() || r->status != 200) return -1;
  nlohmann::json info = nlohmann::json::parse(r->body_view(), nullptr, /*allow_exceptions=*/false);
  if (!info.is_object() || !info.contains("step") || !info["step"].is_number_integer()) return -1;
  return info["step"].get<int64_t>();
}

std::optional<double> ServerClient::Metric(const std::string& name) {
  Result<net::Response> r = Get("/metrics");
  if (!r.ok() || r->status != 200) return std::nullopt;
  std::istringstream lines{std::string(r->body_view())};
  std::string line;
  while (std::getline(lines, line)) {
    if (line.size() > name.size() && line.compare(0, name.size(), name) == 0 &&
        line[name.size()] == ' ') {
      return std::stod(line.substr(name.size() + 1));
    }
  }
  return 0.0;
}

struct WsSession::Inbox {
  std::mutex mu;
  std::condition_variable cv;
  std::deque<std::vector<uint8_t>> messages;
};

Result<std::unique_ptr<WsSession>> WsSession::Open(const std::string& endpoint,
                                                   net::Headers headers) {
  const std::string http = "http://";
  if (endpoint.compare(0, http.size(), http) != 0) {
    return InvalidArgumentError("not an http endpoint: " + endpoint);
  }
  std::unique_ptr<WsSession> session(new WsSession());
  session->inbox_ = std::make_shared<Inbox>();
  session->client_ = std::make_unique<net::WsClient>();
  std::shared_ptr<Inbox> inbox = session->inbox_;
  net::WsHandlers handlers{
      .on_open = {},
      .on_message =
          [inbox](const std::shared_ptr<net::WsConnection>&, net::Bytes message) {
            std::lock_guard<std::mutex> lock(inbox->mu);
            inbox->messages.push_back(std::move(message));
            inbox->cv.notify_all();
          },
      .on_close = {}};
  std::promise<Result<std::shared_ptr<net::WsConnection>>> connected;
  session->client_->Connect("ws://" + endpoint.substr(http.size()) + "/v1/ws", std::move(headers),
                            std::move(handlers), std::chrono::steady_clock::now() + 30s,
                            [&connected](Result<std::shared_ptr<net::WsConnection>> r) {
                              connected.set_value(std::move(r));
                            });
  DMOE_ASSIGN_OR_RETURN(session->connection_, connected.get_future().get());
  return session;
}

WsSession::~WsSession() {
  // The connection must go before the client: its destructor uses the client's io_context.
  if (connection_) connection_->Close();
  connection_.reset();
  client_.reset();
}

Result<std::vector<uint8_t>> WsSession::Call(std::vector<uint8_t> request) {
  DMOE_RETURN_IF_ERROR(connection_->Send(std::move(request)));
  std::unique_lock<std::mutex> lock(inbox_->mu);
  if (!inbox_->cv.wait_for(lock, 30s, [&] { return !inbox_->messages.empty(); })) {
    return DeadlineExceededError("no WebSocket answer within 30 s");
  }
  std::vector<uint8_t> answer = std::move(inbox_->messages.front());
  inbox_->messages.pop_front();
  return answer;
}

std::string ErrorCode(const net::Response& response) {
  nlohmann::json body =
      nlohmann::json::parse(response.body_view(), nullptr, /*allow_exceptions=*/false);
  if (!body.is_object() || !body.contains("error") || !body["error"].is_object() ||
      !body["error"].contains("code") || !body["error"]["code"].is_string()) {
    return "";
  }
  return body["error"]["code"].get<std::string>();
}

}  // namespace dmoe::integration
