// IoContext: the one asio::io_context of a process and the threads that run it (DESIGN.md,
// Threads).
//
// A server and a client may share one IoContext (pass it to both); each also builds its own when
// given none. Boost types stay behind a forward declaration so users of net need not include Asio.
#ifndef DMOE_NET_IO_CONTEXT_H_
#define DMOE_NET_IO_CONTEXT_H_

#include <cstdint>
#include <functional>
#include <memory>
#include <thread>
#include <vector>

namespace boost::asio {
class io_context;
}  // namespace boost::asio

namespace dmoe::net {

class IoContext {
 public:
  // Starts `threads` (>= 1) threads running the context until Stop().
  explicit IoContext(int threads);
  // Stops and joins. Must not run on one of this context's threads.
  ~IoContext();
  IoContext(const IoContext&) = delete;
  IoContext& operator=(const IoContext&) = delete;

  // Runs `fn` on one of the context's threads, soon. Any thread may call.
  void Post(std::function<void()> fn);
  // Stops the loop (pending handlers are dropped) and joins the threads. Idempotent. Must not be
  // called from one of this context's threads.
  void Stop();
  // True when the calling thread is one of this context's threads.
  bool RunningInThisThread() const;

  boost::asio::io_context& context() { return *context_; }

 private:
  struct Guard;
  std::unique_ptr<boost::asio::io_context> context_;
  std::unique_ptr<Guard> guard_;
  std::vector<std::thread> threads_;
};

}  // namespace dmoe::net

#endif  // DMOE_NET_IO_CONTEXT_H_
