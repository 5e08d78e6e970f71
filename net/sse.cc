#include "net/sse.h"

#include <utility>

namespace dmoe::net {
namespace {

constexpr std::string_view kBom = "\xEF\xBB\xBF";

}  // namespace

std::string SseEvent(std::string_view data, std::string_view event) {
  std::string out;
  out.reserve(data.size() + event.size() + 16);
  if (!event.empty()) {
    out += "event: ";
    for (char c : event) {
      if (c != '\r' && c != '\n') out += c;
    }
    out += '\n';
  }
  size_t at = 0;
  for (;;) {
    const size_t end = data.find_first_of("\r\n", at);
    out += "data: ";
    out.append(data.substr(at, end == std::string_view::npos ? std::string_view::npos : end - at));
    out += '\n';
    if (end == std::string_view::npos) break;
    at = end + (data[end] == '\r' && end + 1 < data.size() && data[end + 1] == '\n' ? 2 : 1);
  }
  out += '\n';
  return out;
}

SseParser::SseParser(size_t max_message_bytes)
    : max_message_bytes_(max_message_bytes),
      max_line_bytes_(max_message_bytes + kMaxFieldNameBytes) {}

Status SseParser::Fail(std::string message) {
  failed_ = InvalidArgumentError(std::move(message));
  line_ = std::string();
  data_ = std::string();
  event_ = std::string();
  return failed_;
}

Status SseParser::Feed(std::string_view bytes, const std::function<void(SseMessage)>& on_message) {
  if (!failed_.ok()) return failed_;
  // The BOM may come split over pieces; a prefix of it that turns out to be something else is
  // the start of the first line.
  while (bom_seen_ < kBom.size() && !bytes.empty()) {
    if (bytes.front() == kBom[bom_seen_]) {
      ++bom_seen_;
      bytes.remove_prefix(1);
      continue;
    }
    line_.assign(kBom.substr(0, bom_seen_));
    bom_seen_ = kBom.size();
  }
  while (!bytes.empty()) {
    if (after_cr_) {
      after_cr_ = false;
      if (bytes.front() == '\n') {
        bytes.remove_prefix(1);
        continue;
      }
    }
    const size_t end = bytes.find_first_of("\r\n");
    const std::string_view part = bytes.substr(0, end);
    if (line_.size() + part.size() > max_line_bytes_) {
      return Fail("an event-stream line is longer than " + std::to_string(max_line_bytes_) +
                  " bytes");
    }
    line_.append(part);
    if (end == std::string_view::npos) break;
    after_cr_ = bytes[end] == '\r';
    bytes.remove_prefix(end + 1);
    Status s = Line(line_, on_message);
    if (!s.ok()) return s;
    line_.clear();
  }
  return Status::Ok();
}

Status SseParser::Line(std::string_view line, const std::function<void(SseMessage)>& on_message) {
  if (line.empty()) {  // The blank line ends the message.
    if (data_.empty()) {
      event_.clear();
      return Status::Ok();
    }
    data_.pop_back();  // The \n after the last data line.
    SseMessage message{std::move(event_), std::move(data_)};
    event_.clear();
    data_.clear();
    on_message(std::move(message));
    return Status::Ok();
  }
  if (line.front() == ':') return Status::Ok();  // A comment.
  const size_t colon = line.find(':');
  const std::string_view field = line.substr(0, colon);
  std::string_view value =
      colon == std::string_view::npos ? std::string_view() : line.substr(colon + 1);
  if (!value.empty() && value.front() == ' ') value.remove_prefix(1);
  if (field == "event") {
    event_.assign(value);
  } else if (field == "data") {
    // data_ holds the joined lines so far plus one \n each: with this line they come to
    // data_.size() + value.size() bytes.
    if (data_.size() + value.size() > max_message_bytes_) {
      return Fail("an event-stream message's data passes " + std::to_string(max_message_bytes_) +
                  " bytes");
    }
    data_.append(value);
    data_ += '\n';
  }
  return Status::Ok();
}

}  // namespace dmoe::net
