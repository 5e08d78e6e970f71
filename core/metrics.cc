#include "core/metrics.h"

#include <algorithm>
#include <cmath>
#include <sstream>

namespace dmoe {
namespace {

// Label values escape backslash, double quote and newline (exposition format 0.0.4).
std::string EscapeLabel(const std::string& v) {
  std::string out;
  for (char c : v) {
    if (c == '\\')
      out += "\\\\";
    else if (c == '"')
      out += "\\\"";
    else if (c == '\n')
      out += "\\n";
    else
      out += c;
  }
  return out;
}

std::string LabelText(const Metrics::Labels& labels, const std::string& extra = "") {
  std::string out;
  for (const auto& [k, v] : labels) {
    out += (out.empty() ? "" : ",") + k + "=\"" + EscapeLabel(v) + "\"";
  }
  if (!extra.empty()) out += (out.empty() ? "" : ",") + extra;
  return out.empty() ? "" : "{" + out + "}";
}

std::string Number(double v) {
  if (std::isinf(v)) return v > 0 ? "+Inf" : "-Inf";
  if (std::isnan(v)) return "NaN";
  std::ostringstream s;
  s.precision(17);
  s << v;
  return s.str();
}

// The map key of a label set, which is also its rendered text.
std::string Key(const Metrics::Labels& labels) { return LabelText(labels); }

}  // namespace

void Counter::Increment(double by) {
  double cur = value_.load();
  while (!value_.compare_exchange_weak(cur, cur + by)) {
  }
}

void Gauge::Add(double by) {
  double cur = value_.load();
  while (!value_.compare_exchange_weak(cur, cur + by)) {
  }
}

Histogram::Histogram(std::vector<double> upper_bounds)
    : bounds_(std::move(upper_bounds)), counts_(bounds_.size() + 1, 0) {}

void Histogram::Observe(double v) {
  size_t i = std::lower_bound(bounds_.begin(), bounds_.end(), v) - bounds_.begin();
  std::lock_guard<std::mutex> lock(mu_);
  ++counts_[i];
  sum_ += v;
  ++count_;
}

Histogram::Snapshot Histogram::Read() const {
  std::lock_guard<std::mutex> lock(mu_);
  Snapshot s;
  s.upper_bounds = bounds_;
  uint64_t total = 0;
  for (uint64_t c : counts_) s.cumulative.push_back(total += c);
  s.sum = sum_;
  s.count = count_;
  return s;
}

std::vector<double> LatencyBuckets() {
  return {0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10};
}

std::vector<double> SizeBuckets() {
  std::vector<double> b;
  for (double v = 1; v <= 4096; v *= 2) b.push_back(v);
  return b;
}

Metrics::Family& Metrics::FamilyLocked(const std::string& name, const std::string& help,
                                       const std::string& type) {
  Family& f = families_[name];
  if (f.type.empty()) {
    f.type = type;
    f.help = help;
  }
  return f;
}

Counter& Metrics::GetCounter(const std::string& name, const std::string& help,
                             const Labels& labels) {
  std::lock_guard<std::mutex> lock(mu_);
  auto& slot = FamilyLocked(name, help, "counter").counters[Key(labels)];
  if (!slot) slot = std::make_unique<Counter>();
  return *slot;
}

Gauge& Metrics::GetGauge(const std::string& name, const std::string& help, const Labels& labels) {
  std::lock_guard<std::mutex> lock(mu_);
  auto& slot = FamilyLocked(name, help, "gauge").gauges[Key(labels)];
  if (!slot) slot = std::make_unique<Gauge>();
  return *slot;
}

Histogram& Metrics::GetHistogram(const std::string& name, const std::string& help,
                                 const std::vector<double>& buckets, const Labels& labels) {
  std::lock_guard<std::mutex> lock(mu_);
  auto& slot = FamilyLocked(name, help, "histogram").histograms[Key(labels)];
  if (!slot) slot = std::make_unique<Histogram>(buckets);
  return *slot;
}

void Metrics::AddCallbackGauge(const std::string& name, const std::string& help,
                               const Labels& labels, std::function<double()> fn) {
  std::lock_guard<std::mutex> lock(mu_);
  FamilyLocked(name, help, "gauge").callbacks[Key(labels)] = std::move(fn);
}

void Metrics::AddCallbackCounter(const std::string& name, const std::string& help,
                                 const Labels& labels, std::function<double()> fn) {
  std::lock_guard<std::mutex> lock(mu_);
  FamilyLocked(name, help, "counter").callbacks[Key(labels)] = std::move(fn);
}

std::string Metrics::Render() const {
  std::lock_guard<std::mutex> lock(mu_);
  std::string out;
  for (const auto& [name, f] : families_) {
    out += "# HELP " + name + " " + f.help + "\n# TYPE " + name + " " + f.type + "\n";
    for (const auto& [labels, c] : f.counters)
      out += name + labels + " " + Number(c->value()) + "\n";
    for (const auto& [labels, g] : f.gauges) out += name + labels + " " + Number(g->value()) + "\n";
    for (const auto& [labels, fn] : f.callbacks) out += name + labels + " " + Number(fn()) + "\n";
    for (const auto& [labels, h] : f.histograms) {
      Histogram::Snapshot s = h->Read();
      // Re-open the label set to add "le".
      std::string inner = labels.empty() ? "" : labels.substr(1, labels.size() - 2);
      auto with_le = [&](const std::string& le) {
        return "{" + inner + (inner.empty() ? "" : ",") + "le=\"" + le + "\"}";
      };
      for (size_t i = 0; i < s.upper_bounds.size(); ++i) {
        out += name + "_bucket" + with_le(Number(s.upper_bounds[i])) + " " +
               std::to_string(s.cumulative[i]) + "\n";
      }
      out += name + "_bucket" + with_le("+Inf") + " " + std::to_string(s.cumulative.back()) + "\n";
      out += name + "_sum" + labels + " " + Number(s.sum) + "\n";
      out += name + "_count" + labels + " " + std::to_string(s.count) + "\n";
    }
  }
  return out;
}

}  // namespace dmoe
