#include "core/metrics.h"

#include <gtest/gtest.h>

#include <thread>

namespace dmoe {
namespace {

TEST(MetricsTest, RendersCountersAndGaugesInPrometheusText) {
  Metrics m;
  m.GetCounter("dmoe_requests_total", "Requests served.", {{"code", "ok"}}).Increment();
  m.GetCounter("dmoe_requests_total", "Requests served.", {{"code", "ok"}}).Increment(2);
  m.GetCounter("dmoe_requests_total", "Requests served.", {{"code", "not_found"}}).Increment();
  m.GetGauge("dmoe_queue_depth", "Samples queued.").Set(7);
  m.AddCallbackGauge("dmoe_uptime_seconds", "Uptime.", {}, [] { return 12.5; });
  m.AddCallbackCounter("dmoe_batches_total", "Batches.", {}, [] { return 4.0; });
  EXPECT_EQ(m.Render(),
            "# HELP dmoe_batches_total Batches.\n"
            "# TYPE dmoe_batches_total counter\n"
            "dmoe_batches_total 4\n"
            "# HELP dmoe_queue_depth Samples queued.\n"
            "# TYPE dmoe_queue_depth gauge\n"
            "dmoe_queue_depth 7\n"
            "# HELP dmoe_requests_total Requests served.\n"
            "# TYPE dmoe_requests_total counter\n"
            "dmoe_requests_total{code=\"not_found\"} 1\n"
            "dmoe_requests_total{code=\"ok\"} 3\n"
            "# HELP dmoe_uptime_seconds Uptime.\n"
            "# TYPE dmoe_uptime_seconds gauge\n"
            "dmoe_uptime_seconds 12.5\n");
}

TEST(MetricsTest, HistogramBucketsAreCumulativeWithInf) {
  Metrics m;
  Histogram& h = m.GetHistogram("dmoe_batch_size", "Batch sizes.", {1, 4, 16}, {{"uid", "ffn.0"}});
  for (double v : {1.0, 2.0, 3.0, 16.0, 100.0}) h.Observe(v);
  std::string text = m.Render();
  EXPECT_NE(text.find("dmoe_batch_size_bucket{uid=\"ffn.0\",le=\"1\"} 1\n"), std::string::npos)
      << text;
  EXPECT_NE(text.find("dmoe_batch_size_bucket{uid=\"ffn.0\",le=\"4\"} 3\n"), std::string::npos);
  EXPECT_NE(text.find("dmoe_batch_size_bucket{uid=\"ffn.0\",le=\"16\"} 4\n"), std::string::npos);
  EXPECT_NE(text.find("dmoe_batch_size_bucket{uid=\"ffn.0\",le=\"+Inf\"} 5\n"), std::string::npos);
  EXPECT_NE(text.find("dmoe_batch_size_sum{uid=\"ffn.0\"} 122\n"), std::string::npos);
  EXPECT_NE(text.find("dmoe_batch_size_count{uid=\"ffn.0\"} 5\n"), std::string::npos);
}

TEST(MetricsTest, EscapesLabelValues) {
  Metrics m;
  m.GetCounter("x_total", "X.", {{"msg", "a\"b\\c\nd"}}).Increment();
  EXPECT_NE(m.Render().find("x_total{msg=\"a\\\"b\\\\c\\nd\"} 1\n"), std::string::npos);
}

TEST(MetricsTest, CountsFromManyThreadsAddUp) {
  Metrics m;
  Counter& c = m.GetCounter("n_total", "N.");
  std::vector<std::thread> threads;
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([&] {
      for (int i = 0; i < 10000; ++i) c.Increment();
    });
  }
  for (auto& t : threads) t.join();
  EXPECT_EQ(c.value(), 40000);
}

}  // namespace
}  // namespace dmoe
