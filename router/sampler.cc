#include "router/sampler.h"

#include <algorithm>
#include <cmath>
#include <limits>

namespace dmoe::router {
namespace {

// NaN ranks below every number, -infinity included.
double Score(float logit) {
  return std::isnan(logit) ? -std::numeric_limits<double>::infinity() : static_cast<double>(logit);
}

}  // namespace

TokenSampler::TokenSampler(double temperature, int64_t top_k, double top_p, uint64_t seed)
    : temperature_(std::isfinite(temperature) && temperature > 0 ? temperature : 0),
      top_k_(top_k > 0 ? top_k : 0),
      top_p_(top_p > 0 && top_p <= 1 ? top_p : 1),
      rng_(seed) {}

int64_t TokenSampler::Next(std::span<const float> logits) {
  const int64_t vocab = static_cast<int64_t>(logits.size());
  // The most likely token first; among equal scores the lower id first.
  auto before = [&](int64_t a, int64_t b) {
    const double sa = Score(logits[a]), sb = Score(logits[b]);
    return sa > sb || (sa == sb && a < b);
  };
  if (temperature_ == 0) {
    int64_t best = 0;
    for (int64_t t = 1; t < vocab; ++t) {
      if (before(t, best)) best = t;
    }
    return best;
  }
  const int64_t candidates = top_k_ > 0 ? std::min(top_k_, vocab) : vocab;
  order_.resize(vocab);
  for (int64_t t = 0; t < vocab; ++t) order_[t] = t;
  std::partial_sort(order_.begin(), order_.begin() + candidates, order_.end(), before);
  const double top = Score(logits[order_[0]]);
  if (!std::isfinite(top)) return order_[0];
  // Unnormalized probabilities, most likely first; the first is exp(0) = 1, so the sum is >= 1.
  mass_.resize(candidates);
  double total = 0;
  for (int64_t i = 0; i < candidates; ++i) {
    mass_[i] = std::exp((Score(logits[order_[i]]) - top) / temperature_);
    total += mass_[i];
  }
  int64_t kept = candidates;
  if (top_p_ < 1) {
    double sum = 0;
    for (int64_t i = 0; i < candidates; ++i) {
      sum += mass_[i];
      if (sum >= top_p_ * total) {
        kept = i + 1;
        total = sum;
        break;
      }
    }
  }
  // A uniform double in [0, 1) from the top 53 bits of one draw.
  const double u = static_cast<double>(rng_() >> 11) * 0x1.0p-53 * total;
  double sum = 0;
  for (int64_t i = 0; i < kept; ++i) {
    sum += mass_[i];
    if (u < sum) return order_[i];
  }
  return order_[kept - 1];  // u within rounding of the total
}

}  // namespace dmoe::router
