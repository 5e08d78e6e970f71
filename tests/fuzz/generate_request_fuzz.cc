// Generate requests reach the router from any client (POST /v1/models/{name}/generate, and the
// OpenAI and WebSocket routes after translation): the parser must refuse garbage with
// kInvalidArgument (kPayloadTooLarge past its size limit), never crash, and accept only params
// that pass the same checks again. What it accepts then drives the text a generation shows: fed
// the input's bytes as generated text, GeneratedText must never show a stop string or anything
// past one.
#include <cstdint>
#include <cstdlib>
#include <string>
#include <string_view>

#include "router/generated_text.h"
#include "router/generation.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace dmoe;
  const std::string_view text(reinterpret_cast<const char*>(data), size);
  const router::GenerateLimits limits;
  Result<router::GenerateParams> params = router::ParseGenerateRequest(text, limits);
  if (!params.ok()) {
    const Code code = params.status().code();
    if (code != Code::kInvalidArgument &&
        !(code == Code::kPayloadTooLarge && size > router::kMaxGenerateRequestBytes)) {
      std::abort();
    }
    return 0;
  }
  if (!router::CheckGenerateParams(*params, limits).ok()) std::abort();
  if (params->prompt.empty() || params->stop.size() > limits.max_stops) std::abort();
  // The prompt's bytes as generated text, cut by the request's own stop strings.
  router::GeneratedText generated(params->stop);
  std::string shown;
  for (unsigned char c : params->prompt) shown += generated.Push(c);
  shown += generated.Finish();
  for (const std::string& stop : params->stop) {
    if (shown.find(stop) != std::string::npos) std::abort();
  }
  if (!generated.stopped() && shown != params->prompt) std::abort();
  if (params->prompt.substr(0, shown.size()) != shown) std::abort();
  return 0;
}
