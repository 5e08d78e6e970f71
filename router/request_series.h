// RequestSeries: the router's own inference requests in 10-second buckets (count, errors, p50
// latency) over the last minutes, for the dashboard's charts. Thread-safe.
#ifndef DMOE_ROUTER_REQUEST_SERIES_H_
#define DMOE_ROUTER_REQUEST_SERIES_H_

#include <algorithm>
#include <cstdint>
#include <deque>
#include <mutex>
#include <vector>

namespace dmoe::router {

struct RequestPoint {
  int64_t t_ms = 0;  // start of the bucket
  int64_t requests = 0;
  int64_t errors = 0;
  double p50_ms = 0;
};

class RequestSeries {
 public:
  explicit RequestSeries(int64_t bucket_ms = 10'000, int64_t keep_ms = 10 * 60'000)
      : bucket_ms_(bucket_ms), keep_ms_(keep_ms) {}

  void Record(int64_t now_ms, double latency_ms, bool ok) {
    std::lock_guard<std::mutex> lock(mu_);
    const int64_t start = now_ms - now_ms % bucket_ms_;
    if (buckets_.empty() || buckets_.back().t_ms != start)
      buckets_.push_back(Bucket{start, 0, 0, {}});
    Bucket& b = buckets_.back();
    ++b.requests;
    if (!ok) ++b.errors;
    if (ok) b.latencies.push_back(latency_ms);
    while (!buckets_.empty() && now_ms - buckets_.front().t_ms > keep_ms_) buckets_.pop_front();
  }

  std::vector<RequestPoint> Points() const {
    std::lock_guard<std::mutex> lock(mu_);
    std::vector<RequestPoint> out;
    for (const Bucket& b : buckets_) {
      RequestPoint p{b.t_ms, b.requests, b.errors, 0};
      if (!b.latencies.empty()) {
        std::vector<double> l = b.latencies;
        std::nth_element(l.begin(), l.begin() + l.size() / 2, l.end());
        p.p50_ms = l[l.size() / 2];
      }
      out.push_back(p);
    }
    return out;
  }

 private:
  struct Bucket {
    int64_t t_ms;
    int64_t requests;
    int64_t errors;
    std::vector<double> latencies;
  };
  const int64_t bucket_ms_;
  const int64_t keep_ms_;
  mutable std::mutex mu_;
  std::deque<Bucket> buckets_;
};

}  // namespace dmoe::router

#endif  // DMOE_ROUTER_REQUEST_SERIES_H_
