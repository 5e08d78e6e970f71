#include "net/stream_queue.h"

#include <algorithm>

namespace dmoe::net::internal {

StreamQueue::~StreamQueue() { total_->fetch_sub(queued_); }

StreamQueue::Push StreamQueue::Write(std::string_view data) {
  std::lock_guard<std::mutex> lock(mu_);
  if (closed_) return Push::kRefused;
  if (data.empty()) return Push::kQueued;
  if (queued_ + data.size() > limit_) {
    closed_ = true;
    DropLocked();
    return Push::kOverLimit;
  }
  pending_.append(data);
  queued_ += data.size();
  total_->fetch_add(data.size());
  if (strand_told_) return Push::kQueued;
  strand_told_ = true;
  return Push::kWake;
}

bool StreamQueue::End() {
  std::lock_guard<std::mutex> lock(mu_);
  if (closed_) return false;
  closed_ = true;
  ended_ = true;
  if (strand_told_) return false;
  strand_told_ = true;
  return true;
}

bool StreamQueue::closed() const {
  std::lock_guard<std::mutex> lock(mu_);
  return closed_;
}

bool StreamQueue::Take(std::string* out) {
  std::lock_guard<std::mutex> lock(mu_);
  strand_told_ = false;
  out->append(pending_);
  pending_.clear();
  return ended_;
}

void StreamQueue::Written(uint64_t bytes) {
  std::lock_guard<std::mutex> lock(mu_);
  bytes = std::min(bytes, queued_);  // Zero after a Cut.
  queued_ -= bytes;
  total_->fetch_sub(bytes);
}

void StreamQueue::Cut() {
  std::lock_guard<std::mutex> lock(mu_);
  closed_ = true;
  ended_ = false;
  DropLocked();
}

void StreamQueue::DropLocked() {
  total_->fetch_sub(queued_);
  queued_ = 0;
  pending_ = std::string();
}

}  // namespace dmoe::net::internal
