#include <utility>  // Before Asio: Boost 1.74 with C++20 needs it.

#include "net/io_context.h"

#include <spdlog/spdlog.h>
#include <boost/asio/executor_work_guard.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/post.hpp>

#include <algorithm>

namespace dmoe::net {

namespace asio = boost::asio;

struct IoContext::Guard {
  explicit Guard(asio::io_context& ioc) : guard(asio::make_work_guard(ioc)) {}
  asio::executor_work_guard<asio::io_context::executor_type> guard;
};

IoContext::IoContext(int threads)
    : context_(std::make_unique<asio::io_context>(std::max(threads, 1))),
      guard_(std::make_unique<Guard>(*context_)) {
  for (int i = 0; i < std::max(threads, 1); ++i) {
    threads_.emplace_back([this] {
      // A handler that throws is a bug in net; log it and keep the thread serving.
      for (;;) {
        try {
          context_->run();
          return;
        } catch (const std::exception& e) {
          spdlog::error("net: exception escaped an io handler: {}", e.what());
        }
      }
    });
  }
}

IoContext::~IoContext() { Stop(); }

void IoContext::Post(std::function<void()> fn) { asio::post(*context_, std::move(fn)); }

void IoContext::Stop() {
  guard_.reset();
  context_->stop();
  for (auto& t : threads_) {
    if (t.joinable()) t.join();
  }
  threads_.clear();
}

bool IoContext::RunningInThisThread() const {
  for (const auto& t : threads_) {
    if (t.get_id() == std::this_thread::get_id()) return true;
  }
  return false;
}

}  // namespace dmoe::net
