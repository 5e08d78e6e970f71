// The accept loop when the process is out of file descriptors (issue 12 part 4: EMFILE made it spin
// and log). In the hostile suite rather than tests/net because it exhausts the test process's own
// descriptors, which the sanitizer runtimes need (UBSan checks memory through a pipe), so it cannot
// run under scripts/sanitize.
#include <fcntl.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <unistd.h>

#include <chrono>
#include <string>
#include <vector>

#include "net/http_server.h"
#include "tests/testing/process.h"

namespace dmoe::net {
namespace {

using std::chrono::milliseconds;
using std::chrono::seconds;

// Out of descriptors, the accept loop pauses (50 ms, doubling) instead of spinning, and accepts
// again once descriptors are free. The test process plays both sides: it lowers its own descriptor
// limit after opening its client socket, fills every free slot, and the server's accept then fails
// with EMFILE. (Leaving one slot free for the client raced with the process's other threads, which
// may take a descriptor in between: CI saw socket() fail.)
TEST(NetHostileAccept, BacksOffWhenOutOfDescriptors) {
  HttpServer server_object({});
  server_object.Handle("GET", "/v1/health", [](Request, Responder respond) {
    respond(Response::Json(200, R"({"status":"ok"})"));
  });
  ASSERT_TRUE(server_object.Start().ok());
  HttpServer* server = &server_object;
  int client = ::socket(AF_INET, SOCK_STREAM, 0);
  ASSERT_GE(client, 0);
  rlimit old{};
  ASSERT_EQ(::getrlimit(RLIMIT_NOFILE, &old), 0);
  std::vector<int> fillers;
  auto restore = [&] {
    for (int fd : fillers) ::close(fd);
    fillers.clear();
    ::setrlimit(RLIMIT_NOFILE, &old);
  };
  int highest = ::open("/dev/null", O_RDONLY);
  ASSERT_GE(highest, 0);
  ::close(highest);
  rlimit low = old;
  low.rlim_cur = static_cast<rlim_t>(highest) + 64;
  ASSERT_EQ(::setrlimit(RLIMIT_NOFILE, &low), 0);
  for (;;) {
    int fd = ::open("/dev/null", O_RDONLY);
    if (fd < 0) break;
    fillers.push_back(fd);
  }
  if (fillers.empty()) restore();
  ASSERT_FALSE(fillers.empty());
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_port = htons(server->port());
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  // Completes in the kernel's backlog; the server cannot take it.
  bool connected = ::connect(client, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) == 0;
  bool backed_off = connected && testing::PollUntil([&] { return server->accept_backoffs() >= 1; },
                                                    seconds(5), milliseconds(2));
  const auto first = std::chrono::steady_clock::now();
  // The second and third failures come 50 and 100 ms later: a spin would pile them up at once.
  bool retried = backed_off && testing::PollUntil([&] { return server->accept_backoffs() >= 3; },
                                                  seconds(5), milliseconds(2));
  const auto spacing = std::chrono::steady_clock::now() - first;
  restore();  // Descriptors free again: the next retry (within 1 s) accepts.
  EXPECT_TRUE(connected);
  EXPECT_TRUE(backed_off);
  EXPECT_TRUE(retried);
  EXPECT_GE(spacing, milliseconds(120));
  const std::string request = "GET /v1/health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n";
  ASSERT_EQ(::send(client, request.data(), request.size(), MSG_NOSIGNAL),
            static_cast<ssize_t>(request.size()));
  std::string answer;
  char buf[4096];
  timeval tv{5, 0};
  ::setsockopt(client, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
  for (ssize_t n; (n = ::recv(client, buf, sizeof(buf), 0)) > 0;) answer.append(buf, n);
  ::close(client);
  EXPECT_NE(answer.find("HTTP/1.1 200"), std::string::npos) << answer;
  EXPECT_EQ(server->accepted_connections(), 1u);
}

}  // namespace
}  // namespace dmoe::net
