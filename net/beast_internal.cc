#include "net/beast_internal.h"

#include <boost/asio/error.hpp>

namespace dmoe::net::internal {

uint64_t Registry::Add(std::weak_ptr<Closeable> item) {
  std::lock_guard<std::mutex> lock(mu_);
  uint64_t id = next_id_++;
  items_.emplace(id, std::move(item));
  return id;
}

void Registry::Remove(uint64_t id) {
  std::lock_guard<std::mutex> lock(mu_);
  items_.erase(id);
  if (items_.empty()) cv_.notify_all();
}

std::vector<std::shared_ptr<Closeable>> Registry::Snapshot() {
  std::lock_guard<std::mutex> lock(mu_);
  std::vector<std::shared_ptr<Closeable>> out;
  for (auto& [id, weak] : items_) {
    if (auto item = weak.lock()) out.push_back(std::move(item));
  }
  return out;
}

size_t Registry::size() {
  std::lock_guard<std::mutex> lock(mu_);
  return items_.size();
}

bool Registry::WaitEmpty(std::chrono::steady_clock::time_point deadline) {
  std::unique_lock<std::mutex> lock(mu_);
  return cv_.wait_until(lock, deadline, [&] { return items_.empty(); });
}

bool IsConnectionClosed(const beast_error& ec) {
  return ec == http::error::end_of_stream || ec == asio::error::eof ||
         ec == asio::error::connection_reset || ec == asio::error::broken_pipe ||
         ec == asio::error::connection_aborted || ec == http::error::partial_message;
}

Status StatusFromError(const beast_error& ec, std::string_view what) {
  std::string message = std::string(what) + " failed: " + ec.message();
  if (ec == beast::error::timeout || ec == asio::error::timed_out) {
    return DeadlineExceededError(std::string(what) + " timed out");
  }
  if (ec == http::error::body_limit || ec == websocket::error::message_too_big) {
    return PayloadTooLargeError(message);
  }
  // Refused, reset, closed, unreachable, unresolvable: all mean "try another peer".
  return UnavailableError(message);
}

}  // namespace dmoe::net::internal
