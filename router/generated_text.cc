#include "router/generated_text.h"

#include <algorithm>
#include <string_view>
#include <utility>

namespace dmoe::router {

GeneratedText::GeneratedText(std::vector<std::string> stops) : stops_(std::move(stops)) {
  std::erase_if(stops_, [](const std::string& s) { return s.empty(); });
}

std::string GeneratedText::Push(uint8_t byte) {
  if (stopped_ || finished_) return "";
  const char c = static_cast<char>(byte);
  held_ += utf8_.Push(std::string_view(&c, 1));
  return Release(/*final=*/false);
}

std::string GeneratedText::Finish() {
  if (stopped_ || finished_) return "";
  finished_ = true;
  held_ += utf8_.Finish();
  return Release(/*final=*/true);
}

std::string GeneratedText::Release(bool final) {
  // Text before held_ was released only once no stop could begin in it, so the first stop begins
  // in held_.
  size_t cut = std::string::npos;
  for (const std::string& stop : stops_) cut = std::min(cut, held_.find(stop));
  if (cut != std::string::npos) {
    stopped_ = true;
    std::string out = held_.substr(0, cut);
    held_.clear();
    return out;
  }
  // Stop strings are valid UTF-8, so an end of held_ that begins one starts on a character boundary
  // and what is released is whole characters.
  size_t keep = 0;
  if (!final) {
    const std::string_view held(held_);
    for (const std::string& stop : stops_) {
      for (size_t n = std::min(stop.size() - 1, held.size()); n > keep; --n) {
        if (held.ends_with(std::string_view(stop).substr(0, n))) {
          keep = n;
          break;
        }
      }
    }
  }
  std::string out = held_.substr(0, held_.size() - keep);
  held_.erase(0, held_.size() - keep);
  return out;
}

}  // namespace dmoe::router
