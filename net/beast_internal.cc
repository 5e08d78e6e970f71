#include "net/beast_internal.h"

#include <boost/asio/error.hpp>

#include <algorithm>
#include <vector>

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

bool ByteBudget::FitsLocked(uint64_t bytes) const { return held_ == 0 || held_ + bytes <= limit_; }

bool ByteBudget::Acquire(uint64_t bytes, std::function<void()> ready) {
  std::lock_guard<std::mutex> lock(mu_);
  if (waiters_.empty() && FitsLocked(bytes)) {
    held_ += bytes;
    return true;
  }
  waiters_.push_back({bytes, std::move(ready)});
  return false;
}

void ByteBudget::Charge(uint64_t bytes) {
  std::lock_guard<std::mutex> lock(mu_);
  held_ += bytes;
}

void ByteBudget::Release(uint64_t bytes) {
  std::vector<std::function<void()>> admitted;
  {
    std::lock_guard<std::mutex> lock(mu_);
    held_ -= std::min(bytes, held_);
    // In order: a waiter that does not fit yet keeps those behind it waiting, so a large body is
    // not starved by a stream of small ones.
    while (!waiters_.empty() && FitsLocked(waiters_.front().bytes)) {
      held_ += waiters_.front().bytes;
      admitted.push_back(std::move(waiters_.front().ready));
      waiters_.pop_front();
    }
  }
  for (auto& ready : admitted) ready();
}

uint64_t ByteBudget::held() const {
  std::lock_guard<std::mutex> lock(mu_);
  return held_;
}

size_t ByteBudget::waiting() const {
  std::lock_guard<std::mutex> lock(mu_);
  return waiters_.size();
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
