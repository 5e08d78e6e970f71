// The "shift" token model for the generation tests: a byte-level model whose next token is always
// the last one plus one (mod 256), so its output is known exactly: "a" continues "bcdef...". It is
// published as a trainer would (PUT /v1/models/{name}), torch-free.
//
// The embedding is kShiftScale times the identity (dim 256) and the untied lm_head maps byte b to
// logit kShiftScale for b + 1 and 0 for every other byte, so even at temperature 2 another byte
// has a probability below 1e-8 per token. The swarm variant puts a residual_moe over the ffn grid
// ffn.[0:4].[0:4] (experts of hidden dim 256) between them: the experts add at most a few units to
// each logit (their output is layer-normed), which does not change the winner, so the same text
// comes out through a real swarm, and a swarm that cannot answer ends the generation with an error.
#ifndef DMOE_TESTS_OPENAI_SHIFT_MODEL_H_
#define DMOE_TESTS_OPENAI_SHIFT_MODEL_H_

#include <cstdint>
#include <string>
#include <vector>

namespace dmoe::testing {

inline constexpr float kShiftScale = 50.0f;
// The expert width the swarm variant needs (dmoe-server --hidden-dim).
inline constexpr int kShiftDim = 256;

// The spec of the shift model named `name`, with max_len `max_len`; `with_moe` adds the
// residual_moe over ffn.[0:4].[0:4].
std::string ShiftSpec(const std::string& name, bool with_moe, int max_len = 1024);

// A publication body (safetensors with __metadata__ spec and version) of that model.
std::vector<uint8_t> ShiftModel(const std::string& name, bool with_moe, int64_t version,
                                int max_len = 1024);

// What the shift model generates after `prompt` in `tokens` tokens, for ASCII that stays below
// 0x80: each byte the previous plus one.
std::string ShiftContinuation(const std::string& prompt, int tokens);

}  // namespace dmoe::testing

#endif  // DMOE_TESTS_OPENAI_SHIFT_MODEL_H_
