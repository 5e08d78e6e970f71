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

uint64_t ByteBudget::NextOrder() {
  std::lock_guard<std::mutex> lock(mu_);
  return next_order_++;
}

bool ByteBudget::Acquire(uint64_t bytes, uint64_t holding, uint64_t order,
                         std::function<void()> ready, uint64_t* ticket) {
  std::vector<std::function<void()>> admitted;
  {
    std::lock_guard<std::mutex> lock(mu_);
    // A growing request waits only behind other growing ones; a new one behind everybody.
    bool first = holding > 0 ? growers_ == 0 : waiters_.empty();
    if (first && FitsLocked(bytes)) {
      held_ += bytes;
      return true;
    }
    *ticket = next_ticket_++;
    waiters_.emplace(*ticket, Waiter{bytes, holding, order, std::move(ready)});
    if (holding > 0) {
      ++growers_;
      parked_ += holding;
    }
    PumpLocked(&admitted);  // This wait may be the one that completes a deadlock.
  }
  for (auto& r : admitted) r();
  return false;
}

bool ByteBudget::Cancel(uint64_t ticket) {
  std::vector<std::function<void()>> admitted;
  {
    std::lock_guard<std::mutex> lock(mu_);
    auto it = waiters_.find(ticket);
    if (it == waiters_.end()) return false;
    if (it->second.holding > 0) {
      --growers_;
      parked_ -= it->second.holding;
    }
    waiters_.erase(it);
    // A new request may have waited only behind this one.
    PumpLocked(&admitted);
  }
  for (auto& r : admitted) r();
  return true;
}

void ByteBudget::AdmitLocked(std::map<uint64_t, Waiter>::iterator it,
                             std::vector<std::function<void()>>* admitted) {
  held_ += it->second.bytes;
  if (it->second.holding > 0) {
    --growers_;
    parked_ -= it->second.holding;
  }
  admitted->push_back(std::move(it->second.ready));
  waiters_.erase(it);
}

void ByteBudget::PumpLocked(std::vector<std::function<void()>>* admitted) {
  while (growers_ > 0) {
    // The oldest growing request that fits; failing that, when every held byte is parked, the
    // oldest growing request at all.
    auto oldest = waiters_.end(), oldest_fitting = waiters_.end();
    for (auto it = waiters_.begin(); it != waiters_.end(); ++it) {
      if (it->second.holding == 0) continue;
      if (oldest == waiters_.end() || it->second.order < oldest->second.order) oldest = it;
      if (FitsLocked(it->second.bytes) &&
          (oldest_fitting == waiters_.end() || it->second.order < oldest_fitting->second.order)) {
        oldest_fitting = it;
      }
    }
    if (oldest_fitting != waiters_.end()) {
      AdmitLocked(oldest_fitting, admitted);
    } else if (held_ == parked_) {
      AdmitLocked(oldest, admitted);
    } else {
      return;  // New requests wait while growing ones do.
    }
  }
  // In order: a waiter that does not fit yet keeps those behind it waiting, so a large body is
  // not starved by a stream of small ones.
  while (!waiters_.empty() && FitsLocked(waiters_.begin()->second.bytes)) {
    AdmitLocked(waiters_.begin(), admitted);
  }
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
    PumpLocked(&admitted);
  }
  for (auto& ready : admitted) ready();
}

std::string UploadClock::Check(std::chrono::steady_clock::time_point now,
                               uint64_t min_bytes_per_second, std::chrono::milliseconds grace,
                               std::chrono::milliseconds deadline) const {
  auto spent = active(now);
  if (deadline.count() > 0 && spent > deadline) {
    return "took longer than " + std::to_string(deadline.count()) + " ms to arrive";
  }
  if (min_bytes_per_second == 0 || spent <= grace) return {};
  // The rate is owed from the end of the grace on: a client may take a second to start.
  double seconds = std::chrono::duration<double>(spent).count();
  double owed = std::chrono::duration<double>(spent - grace).count();
  if (static_cast<double>(bytes_) >= static_cast<double>(min_bytes_per_second) * owed) {
    return {};
  }
  return "arrived at " + std::to_string(static_cast<uint64_t>(bytes_ / seconds)) +
         " bytes/s, below the minimum of " + std::to_string(min_bytes_per_second) + " bytes/s";
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
