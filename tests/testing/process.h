// Child processes for multi-process tests and benchmarks: spawn a binary, read its stdout line by
// line with deadlines (poll, never sleep), signal it, reap it.
//
//   auto server = testing::Process::Spawn({DMOE_SERVER_BINARY, "--listen", "127.0.0.1:0", ...});
//   ASSERT_TRUE(server.ok()) << server.status().ToString();
//   std::optional<std::string> line = (*server)->WaitForLine("listening on ", 20s);
//   ...
//   int status = (*server)->Stop(SIGTERM, 10s);  // WIFEXITED(status) && WEXITSTATUS(status) == 0
//
// A Process kills (SIGKILL) and reaps its child when destroyed, so a failed assertion never leaves
// one behind; the child also gets SIGKILL if the thread that spawned it dies (PR_SET_PDEATHSIG),
// e.g. when ctest kills a test on timeout. Spawn from a thread that outlives the child (the test's
// main thread).
//
// The child's stdout is a pipe read by WaitForLine/ReadLine; its stderr goes to an anonymous
// in-memory file that stderr_text() reads at any time, so a chatty child never blocks on a full
// pipe and its log is at hand when a test fails. A Process is not thread-safe.
#ifndef DMOE_TESTS_TESTING_PROCESS_H_
#define DMOE_TESTS_TESTING_PROCESS_H_

#include <sys/types.h>

#include <chrono>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "core/status.h"

namespace dmoe::testing {

struct SpawnOptions {
  // Descriptors of the parent that the child keeps, at the same numbers (e.g. the write end of an
  // acknowledgement pipe); every other descriptor beyond 0, 1, 2 is closed in the child.
  std::vector<int> keep_fds;
  // Working directory of the child; empty = the parent's.
  std::string working_dir;
};

class Process {
 public:
  // Starts argv[0] (a path; no PATH lookup) with argv. kInvalidArgument for an empty argv,
  // kUnavailable when the binary cannot be executed (the child reports the exec error).
  static Result<std::unique_ptr<Process>> Spawn(const std::vector<std::string>& argv,
                                                SpawnOptions options = {});
  // SIGKILL and reap when still running.
  ~Process();
  Process(const Process&) = delete;
  Process& operator=(const Process&) = delete;

  pid_t pid() const { return pid_; }
  // "binary arg1 arg2 ...", for failure messages.
  const std::string& command_line() const { return command_line_; }

  // The next complete stdout line (without its newline), waiting at most `timeout`. nullopt when
  // the deadline passes or stdout reaches EOF (the child exited or closed it) first.
  std::optional<std::string> ReadLine(std::chrono::milliseconds timeout);
  // Reads lines until one starts with `prefix` and returns it; nullopt on deadline or EOF. Lines
  // skipped on the way stay in stdout_lines().
  std::optional<std::string> WaitForLine(std::string_view prefix,
                                         std::chrono::milliseconds timeout);
  // Every stdout line read so far, in order.
  const std::vector<std::string>& stdout_lines() const { return lines_; }
  // Everything the child wrote to stderr so far.
  std::string stderr_text() const;

  // Sends `sig`; false when the child was already reaped.
  bool Signal(int sig);
  // Waits for the child to exit, at most `timeout`, and returns its wait status (see waitpid), or
  // nullopt when it is still running. Once reaped, returns the same status again.
  std::optional<int> Wait(std::chrono::milliseconds timeout);
  // Sends `sig`, waits at most `timeout`, then SIGKILLs if needed; returns the wait status.
  int Stop(int sig, std::chrono::milliseconds timeout);
  bool running() const { return !status_.has_value(); }

  // Reads raw stdout bytes: whatever is available within `timeout` (at least one byte unless the
  // deadline passes or EOF comes first), appended to *out. False on EOF. For children that write a
  // binary protocol to stdout instead of lines; do not mix with ReadLine.
  bool ReadBytes(std::chrono::milliseconds timeout, std::string* out);

 private:
  Process() = default;
  // Polls stdout until data or EOF or the deadline; appends what came to buffer_.
  bool FillBuffer(std::chrono::steady_clock::time_point deadline);

  pid_t pid_ = -1;
  int pidfd_ = -1;  // -1 when pidfd_open is unavailable: Wait then polls waitpid.
  int stdout_fd_ = -1;
  int stderr_fd_ = -1;
  bool stdout_eof_ = false;
  std::string buffer_;  // stdout bytes not yet returned as a line
  std::vector<std::string> lines_;
  std::optional<int> status_;
  std::string command_line_;
};

// The outcome of a process run to completion.
struct RunResult {
  int exit_code = -1;  // -1 when killed by a signal or timed out
  int signal = 0;      // the terminating signal, if any
  bool timed_out = false;
  std::string out;
  std::string err;
};

// Runs argv to completion (SIGKILL after `timeout`), capturing stdout and stderr.
RunResult Run(const std::vector<std::string>& argv,
              std::chrono::milliseconds timeout = std::chrono::seconds(60));

// Runs argv to completion (SIGKILL after `timeout`) as a test driver runs the test it started:
// each stdout line is copied to this process's stdout as it comes (`out` stays empty), and the
// child's stderr, captured in `err`, is copied to this process's stderr once it ends. A spawn
// failure is in `err`, with exit_code -1.
RunResult RunPassingOutput(const std::vector<std::string>& argv, const SpawnOptions& options,
                           std::chrono::milliseconds timeout);

// Polls `condition` every `interval` until it is true or `timeout` passes; returns its last value.
// For waiting on state another process changes (an HTTP endpoint, a DHT record), where there is no
// descriptor to poll.
bool PollUntil(const std::function<bool()>& condition, std::chrono::milliseconds timeout,
               std::chrono::milliseconds interval = std::chrono::milliseconds(50));

}  // namespace dmoe::testing

#endif  // DMOE_TESTS_TESTING_PROCESS_H_
