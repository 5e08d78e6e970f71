// The auth headers of a signed request (X-DMoE-Key, -Timestamp, -Nonce, -Signature) and an
// endpoint's answer to a challenge (public_key, proof) come from strangers: whatever they hold,
// the checks answer a refusal code, never crash, and never accept what no listed key signed.
#include <cstdint>
#include <cstdlib>
#include <string>
#include <string_view>
#include <vector>

#include "core/clock.h"
#include "core/identity.h"
#include "core/request_auth.h"

namespace {

// Splits the input at '\n' into up to 6 fields.
std::vector<std::string> Fields(const uint8_t* data, size_t size) {
  std::vector<std::string> out(1);
  for (size_t i = 0; i < size; ++i) {
    if (data[i] == '\n' && out.size() < 6) {
      out.emplace_back();
    } else {
      out.back().push_back(static_cast<char>(data[i]));
    }
  }
  out.resize(6);
  return out;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static const dmoe::Identity listed = dmoe::Identity::Generate();
  static dmoe::FakeClock clock(1'800'000'000'000);
  static dmoe::RequestVerifier verifier({listed.public_key()}, std::string(64, 'a'), clock);
  std::vector<std::string> f = Fields(data, size);
  dmoe::RequestSignature sig{f[0], f[1], f[2], f[3]};
  dmoe::Status head = verifier.CheckHead(sig);
  dmoe::Status full = verifier.Verify(sig, "POST", f[4], f[5]);
  for (const dmoe::Status& s : {head, full}) {
    if (!s.ok() && s.code() != dmoe::Code::kUnauthenticated &&
        s.code() != dmoe::Code::kPermissionDenied) {
      std::abort();
    }
  }
  // Nobody but `listed` holds its key: a fuzzed signature never verifies.
  if (full.ok()) std::abort();
  if (dmoe::IsChallengeHex(f[4])) {
    if (dmoe::VerifyProof(listed.public_key(), f[4], f[5])) std::abort();
  }
  return 0;
}
