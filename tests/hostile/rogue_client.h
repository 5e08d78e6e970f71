// A hostile client for the hostile-peers suite (issue 12, part 4): connections that declare bodies
// and never send them, half WebSocket messages, WebSocket requests whose answers are never read,
// chunked bodies that never end, and floods of idle connections. Test helper only, never in a
// shipped binary.
//
//   RogueClient rogue("http://127.0.0.1:PORT", "127.0.0.2");
//   rogue.SilentUploads(20, "/v1/experts/ffn.0.0/forward", 60 << 20, 4096);
//   ... a genuine request is answered beside it ...
//   rogue.Poll();  // reads what the server sent, notes closed connections
//   EXPECT_EQ(rogue.open(), 0);
//
// It connects from `source_ip`, any address of 127.0.0.0/8, so that the server sees it as another
// host than the test's genuine client (127.0.0.1) and per-IP caps can be told apart. Raw POSIX
// sockets: the point is to send what our own clients never would. Not thread-safe.
#ifndef DMOE_TESTS_HOSTILE_ROGUE_CLIENT_H_
#define DMOE_TESTS_HOSTILE_ROGUE_CLIENT_H_

#include <chrono>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

namespace dmoe::hostile {

class RogueClient {
 public:
  RogueClient(std::string endpoint, std::string source_ip = "127.0.0.2");
  ~RogueClient();
  RogueClient(const RogueClient&) = delete;
  RogueClient& operator=(const RogueClient&) = delete;

  // Each opens `n` connections and returns how many connected (the server may refuse some later,
  // see answered()). Requests are sent at once and the connections left as they are.
  //
  // POST `path` declaring a Content-Length of `declared` bytes, then `sent` bytes of it.
  int SilentUploads(int n, const std::string& path, uint64_t declared, uint64_t sent);
  // POST `path` with a chunked body: one chunk of `sent` bytes, and no end.
  int EndlessChunked(int n, const std::string& path, uint64_t sent);
  // Opens /v1/ws and sends `sent` bytes of a binary message that declares `declared` bytes.
  int HalfWebSocketMessages(int n, uint64_t declared, uint64_t sent);
  // Opens /v1/ws and sends `message` `copies` times; never reads an answer.
  int UnreadWebSocket(int n, const std::vector<uint8_t>& message, int copies);
  // Connects and sends nothing.
  int IdleConnections(int n);

  // Reads whatever the server sent to every connection (without blocking, and without ever
  // reading the answers of UnreadWebSocket connections) and notes the closed ones.
  void Poll();
  // Polls until at most `n` connections are open or `timeout` passes; true when they are.
  bool WaitOpenAtMost(size_t n, std::chrono::milliseconds timeout);
  // Connections not closed by the server (as of the last Poll).
  size_t open() const;
  size_t total() const { return conns_.size(); }
  // Connections whose received bytes start with `prefix` (e.g. "HTTP/1.1 503"), and of those,
  // how many also contain `also` anywhere in what they received.
  size_t answered(std::string_view prefix, std::string_view also = {}) const;
  // Closes every connection.
  void CloseAll();

 private:
  struct Conn {
    int fd = -1;
    bool closed = false;
    bool never_read = false;  // UnreadWebSocket: the point is not to read.
    std::string received;
  };
  // A connected, non-blocking socket from source_ip_, or -1.
  int Connect();
  // Sends all of `data` (blocking until the socket takes it, at most 5 s); false on failure.
  static bool SendAll(int fd, std::string_view data);
  // Opens /v1/ws on `fd` and reads the 101; false when refused.
  bool Upgrade(Conn& conn);

  std::string host_;
  uint16_t port_ = 0;
  std::string source_ip_;
  std::vector<Conn> conns_;
};

// A client WebSocket frame header for a binary message of `length` payload bytes, masked with a
// zero key (so the payload goes unchanged).
std::string WsFrameHead(uint64_t length);

// The resident set size of process `pid` in bytes (VmRSS of /proc/PID/status); 0 when unreadable.
uint64_t ResidentBytes(int pid);

}  // namespace dmoe::hostile

#endif  // DMOE_TESTS_HOSTILE_ROGUE_CLIENT_H_
