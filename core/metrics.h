// Metrics in the Prometheus text format 0.0.4, for GET /metrics of every server.
//
// A Metrics registry owns counters, gauges and histograms, each with fixed label names; Render()
// writes them all. Every method is thread-safe; the returned handles stay valid as long as the
// registry lives, so hot paths keep a handle instead of looking the metric up each time.
#ifndef DMOE_CORE_METRICS_H_
#define DMOE_CORE_METRICS_H_

#include <atomic>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

namespace dmoe {

class Counter {
 public:
  void Increment(double by = 1.0);
  double value() const { return value_.load(); }

 private:
  std::atomic<double> value_{0.0};
};

class Gauge {
 public:
  void Set(double v) { value_.store(v); }
  void Add(double by);
  double value() const { return value_.load(); }

 private:
  std::atomic<double> value_{0.0};
};

class Histogram {
 public:
  explicit Histogram(std::vector<double> upper_bounds);
  void Observe(double v);
  // Cumulative counts per bucket (the last is +Inf), sum and count.
  struct Snapshot {
    std::vector<double> upper_bounds;
    std::vector<uint64_t> cumulative;
    double sum = 0;
    uint64_t count = 0;
  };
  Snapshot Read() const;

 private:
  const std::vector<double> bounds_;
  mutable std::mutex mu_;
  std::vector<uint64_t> counts_;  // per bucket, non-cumulative, plus +Inf
  double sum_ = 0;
  uint64_t count_ = 0;
};

// Seconds buckets from 0.5 ms to 10 s, for request latency.
std::vector<double> LatencyBuckets();
// Powers of two from 1 to 4096, for batch sizes and queue depths.
std::vector<double> SizeBuckets();

class Metrics {
 public:
  using Labels = std::map<std::string, std::string>;

  // Returns the series with these labels, creating it (and the family, with its help text) on
  // first use. The same name must always be used with the same kind.
  Counter& GetCounter(const std::string& name, const std::string& help, const Labels& labels = {});
  Gauge& GetGauge(const std::string& name, const std::string& help, const Labels& labels = {});
  Histogram& GetHistogram(const std::string& name, const std::string& help,
                          const std::vector<double>& buckets, const Labels& labels = {});
  // A gauge computed when rendered (e.g. queue depth read from its owner). `fn` is called from the
  // thread that renders and must be thread-safe.
  void AddCallbackGauge(const std::string& name, const std::string& help, const Labels& labels,
                        std::function<double()> fn);

  // The same for a monotonically growing count kept by its owner (e.g. a runtime's statistics).
  void AddCallbackCounter(const std::string& name, const std::string& help, const Labels& labels,
                          std::function<double()> fn);

  // The Prometheus text exposition of every metric, families sorted by name.
  std::string Render() const;

 private:
  struct Family {
    std::string help;
    std::string type;  // counter, gauge, histogram
    std::map<std::string, std::unique_ptr<Counter>> counters;
    std::map<std::string, std::unique_ptr<Gauge>> gauges;
    std::map<std::string, std::unique_ptr<Histogram>> histograms;
    std::map<std::string, std::function<double()>> callbacks;
  };
  Family& FamilyLocked(const std::string& name, const std::string& help, const std::string& type);

  mutable std::mutex mu_;
  std::map<std::string, Family> families_;
};

}  // namespace dmoe

#endif  // DMOE_CORE_METRICS_H_
