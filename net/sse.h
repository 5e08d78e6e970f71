// Server-Sent Events (the HTML standard's text/event-stream): framing one message, and parsing a
// stream of them as it arrives in arbitrary pieces.
//
//   respond.Stream(200, kSseType)->Write(SseEvent(R"({"text":"a"})"));       // server side
//   SseParser parser;                                                        // client side
//   DMOE_RETURN_IF_ERROR(parser.Feed(piece, [&](SseMessage m) { ... }));
//
// Pure functions and values: no I/O, no Boost, no threads. An SseParser is not thread-safe; feed
// one from one thread at a time.
#ifndef DMOE_NET_SSE_H_
#define DMOE_NET_SSE_H_

#include <cstddef>
#include <functional>
#include <string>
#include <string_view>

#include "core/status.h"

namespace dmoe::net {

inline constexpr char kSseType[] = "text/event-stream";

// One Server-Sent Events message as the HTML standard frames it: optional "event: NAME\n", one
// "data: LINE\n" per line of `data` (split on \n; \r\n and \r too), then a blank line. An empty
// `data` is one empty data line, which a parser reports as a message with empty data. Line breaks
// in `event` cannot be framed and are removed from it.
std::string SseEvent(std::string_view data, std::string_view event = {});

struct SseMessage {
  std::string event;  // The last "event" field's value; empty when the message had none.
  std::string data;   // The "data" fields' values joined by \n.
};

// Parses an event stream fed in arbitrary pieces (the HTML standard's interpretation, without the
// "id" and "retry" fields, which are ignored): messages end with a blank line; comments (":...")
// and unknown fields are ignored; lines end with \n, \r\n or \r, also when a piece ends between
// \r and \n; a leading UTF-8 BOM is dropped; "data:x" and "data: x" both carry "x". A message
// without data is not reported, and an unfinished one at the end of the stream is dropped, as the
// standard says. Bytes are passed through as they are (no UTF-8 check).
class SseParser {
 public:
  // Lines may be up to max_message_bytes plus kMaxFieldNameBytes long (room for "data: ").
  static constexpr size_t kMaxFieldNameBytes = 64;

  explicit SseParser(size_t max_message_bytes = 1 << 20);

  // Parses `bytes`, calling `on_message` for each message completed by them, in order, before
  // returning. kInvalidArgument when one message's data passes max_message_bytes or a line passes
  // its limit; the parser then stays failed and every later Feed returns the same error.
  Status Feed(std::string_view bytes, const std::function<void(SseMessage)>& on_message);

 private:
  // Handles one complete line (without its end).
  Status Line(std::string_view line, const std::function<void(SseMessage)>& on_message);
  Status Fail(std::string message);

  size_t max_message_bytes_;
  size_t max_line_bytes_;
  std::string line_;       // The line being read, without its end.
  std::string data_;       // The message's data lines, each followed by \n.
  std::string event_;      // The message's event field.
  size_t bom_seen_ = 0;    // Bytes of a leading BOM matched so far; 3 once past the start.
  bool after_cr_ = false;  // The previous piece ended a line with \r: a leading \n belongs to it.
  Status failed_;          // Non-OK once a limit was passed.
};

}  // namespace dmoe::net

#endif  // DMOE_NET_SSE_H_
