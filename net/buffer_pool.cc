#include "net/buffer_pool.h"

#include <utility>

namespace dmoe::net {

BufferPool::BufferPool(BufferPoolOptions options) : options_(options) {}

Bytes BufferPool::Take(size_t bytes) {
  Bytes out;
  if (bytes >= options_.min_bytes) {
    std::lock_guard<std::mutex> lock(mu_);
    size_t best = idle_.size();
    for (size_t i = 0; i < idle_.size(); ++i) {
      if (idle_[i].capacity() >= bytes &&
          (best == idle_.size() || idle_[i].capacity() < idle_[best].capacity())) {
        best = i;
      }
    }
    if (best < idle_.size()) {
      out = std::move(idle_[best]);
      idle_.erase(idle_.begin() + static_cast<std::ptrdiff_t>(best));
      stats_.idle_bytes -= static_cast<int64_t>(out.capacity());
      stats_.idle_buffers = static_cast<int64_t>(idle_.size());
      ++stats_.reused;
      return out;
    }
    ++stats_.missed;
  }
  out.reserve(bytes);
  return out;
}

void BufferPool::Give(Bytes&& buffer) {
  Bytes taken = std::move(buffer);
  buffer = Bytes();
  const size_t capacity = taken.capacity();
  if (capacity < options_.min_bytes || capacity > options_.max_idle_bytes) return;
  taken.clear();
  std::vector<Bytes> freed;  // Freed outside the lock.
  std::lock_guard<std::mutex> lock(mu_);
  while (!idle_.empty() &&
         static_cast<size_t>(stats_.idle_bytes) + capacity > options_.max_idle_bytes) {
    stats_.idle_bytes -= static_cast<int64_t>(idle_.front().capacity());
    freed.push_back(std::move(idle_.front()));
    idle_.erase(idle_.begin());
  }
  stats_.idle_bytes += static_cast<int64_t>(capacity);
  idle_.push_back(std::move(taken));
  stats_.idle_buffers = static_cast<int64_t>(idle_.size());
}

BufferPoolStats BufferPool::stats() const {
  std::lock_guard<std::mutex> lock(mu_);
  return stats_;
}

}  // namespace dmoe::net
