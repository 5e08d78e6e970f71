// Private to net: the pieces of one streamed HTTP answer (ResponseStream) on their way from the
// producer, on any thread, to the connection's strand, which writes them. No Boost here: the
// session in http_server.cc is told through the return values when it must look.
#ifndef DMOE_NET_STREAM_QUEUE_H_
#define DMOE_NET_STREAM_QUEUE_H_

#include <atomic>
#include <cstdint>
#include <memory>
#include <mutex>
#include <string>
#include <string_view>

namespace dmoe::net::internal {

// Thread-safe. Bytes count as queued from Write until the strand reports them Written, and are
// also added to `total` (the server's stream_queued_bytes) for as long.
class StreamQueue {
 public:
  StreamQueue(uint64_t limit, std::shared_ptr<std::atomic<uint64_t>> total)
      : limit_(limit), total_(std::move(total)) {}
  ~StreamQueue();
  StreamQueue(const StreamQueue&) = delete;
  StreamQueue& operator=(const StreamQueue&) = delete;

  enum class Push {
    kRefused,    // Closed already; nothing queued.
    kQueued,     // Queued; the strand has been told already and will take it.
    kWake,       // Queued; the strand must be told to Take.
    kOverLimit,  // Refused, and the queue is cut now: the strand must close the connection.
  };
  // Producer side. A piece that would take the queued bytes past the limit is kOverLimit; an empty
  // one is kQueued (or kRefused once closed) and changes nothing.
  Push Write(std::string_view data);
  // Producer side (or the strand, for a server that stops): no more pieces. True when the strand
  // must be told; false when it was told already or the queue was closed.
  bool End();
  bool closed() const;

  // Strand side: appends what is pending to `out` and returns true when the body is over after it
  // (End was called). Until the strand Takes again, Writes return kQueued, not kWake.
  bool Take(std::string* out);
  // Strand side: `bytes` taken earlier are on the wire.
  void Written(uint64_t bytes);
  // Strand side: the connection is gone; pending pieces are dropped and later Writes refused.
  void Cut();

 private:
  void DropLocked();

  const uint64_t limit_;
  const std::shared_ptr<std::atomic<uint64_t>> total_;
  mutable std::mutex mu_;
  std::string pending_;       // Written and not yet taken.
  uint64_t queued_ = 0;       // Written and not yet on the wire (pending_ and what was taken).
  bool closed_ = false;       // Ended or cut.
  bool ended_ = false;        // End was called (before any cut).
  bool strand_told_ = false;  // A Wake or End asked the strand to Take, and it has not yet.
};

}  // namespace dmoe::net::internal

#endif  // DMOE_NET_STREAM_QUEUE_H_
