// TokenSampler: picks a generation's next token from the model's logits, with the knobs of a
// generate request (router/generation.h): temperature, top_k and top_p. Torch-free.
//
// Deterministic: the same logits, settings and seed give the same tokens on every machine. Each
// sampler draws from its own std::mt19937_64 (whose sequence the C++ standard fixes), one draw per
// token, and ranks and sums the candidates in double in a fixed order (most likely first, ties by
// the lower token id). A sampler belongs to one generation: not thread-safe, cheap to move.
#ifndef DMOE_ROUTER_SAMPLER_H_
#define DMOE_ROUTER_SAMPLER_H_

#include <cstdint>
#include <random>
#include <span>
#include <vector>

namespace dmoe::router {

class TokenSampler {
 public:
  // temperature 0 is greedy: the most likely token, no draw. Otherwise a token is drawn from
  // softmax(logits / temperature) restricted to the top_k most likely tokens (top_k 0: all) and,
  // among those, to the fewest most likely ones whose probability adds up to top_p (at least one).
  // Values outside the ranges CheckGenerateParams allows are clamped: a negative temperature is 0,
  // a top_k past the vocabulary takes all, a top_p outside (0, 1] is 1.
  TokenSampler(double temperature, int64_t top_k, double top_p, uint64_t seed);

  // The next token: an index into `logits` (one score per token of the vocabulary; NaN counts as
  // -infinity, and when no score is finite the lowest-indexed of the highest wins). `logits` must
  // not be empty.
  int64_t Next(std::span<const float> logits);

 private:
  double temperature_;
  int64_t top_k_;
  double top_p_;
  std::mt19937_64 rng_;
  std::vector<int64_t> order_;  // reused between calls
  std::vector<double> mass_;
};

}  // namespace dmoe::router

#endif  // DMOE_ROUTER_SAMPLER_H_
