#include "tests/testing/process.h"

#include <fcntl.h>
#include <linux/close_range.h>
#include <poll.h>
#include <signal.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <iostream>
#include <thread>

namespace dmoe::testing {
namespace {

using Clock = std::chrono::steady_clock;

int PollTimeoutMs(Clock::time_point deadline) {
  auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - Clock::now());
  // Round up so that a deadline 0.4 ms away is not polled with 0 in a busy loop.
  return static_cast<int>(std::clamp<int64_t>(left.count() + 1, 0, 1 << 30));
}

// Everything the child does between fork and exec: only async-signal-safe calls, because the
// parent may have other threads (holding malloc locks, for example).
[[noreturn]] void ChildAfterFork(char* const* argv, const char* working_dir, int stdin_fd,
                                 int stdout_fd, int stderr_fd, int exec_error_fd,
                                 const int* keep_fds, size_t keep_count, pid_t parent) {
  // Die with the spawning thread, and do not outlive a parent that died before this line.
  ::prctl(PR_SET_PDEATHSIG, SIGKILL);
  if (::getppid() != parent) ::_exit(126);
  // A signal mask and ignored dispositions survive exec; give the child the defaults.
  sigset_t none;
  sigemptyset(&none);
  ::sigprocmask(SIG_SETMASK, &none, nullptr);
  struct sigaction dfl {};
  dfl.sa_handler = SIG_DFL;
  for (int sig : {SIGPIPE, SIGINT, SIGTERM, SIGHUP, SIGCHLD}) ::sigaction(sig, &dfl, nullptr);

  auto fail = [&](int err) {
    ssize_t ignored = ::write(exec_error_fd, &err, sizeof(err));
    (void)ignored;
    ::_exit(127);
  };
  if (::dup2(stdin_fd, 0) < 0 || ::dup2(stdout_fd, 1) < 0 || ::dup2(stderr_fd, 2) < 0) fail(errno);
  // Nothing else of the parent (sockets, database locks) may leak into the child.
  if (::close_range(3, ~0u, CLOSE_RANGE_CLOEXEC) != 0) {
    struct rlimit lim {};
    ::getrlimit(RLIMIT_NOFILE, &lim);
    const int max_fd = static_cast<int>(std::min<rlim_t>(lim.rlim_cur, 1 << 16));
    for (int fd = 3; fd < max_fd; ++fd) ::fcntl(fd, F_SETFD, FD_CLOEXEC);
  }
  for (size_t i = 0; i < keep_count; ++i) {
    if (keep_fds[i] != exec_error_fd) ::fcntl(keep_fds[i], F_SETFD, 0);
  }
  if (working_dir != nullptr && ::chdir(working_dir) != 0) fail(errno);
  ::execv(argv[0], argv);
  fail(errno);
  ::_exit(127);  // not reached; fail does not return
}

}  // namespace

Result<std::unique_ptr<Process>> Process::Spawn(const std::vector<std::string>& argv,
                                                SpawnOptions options) {
  if (argv.empty()) return InvalidArgumentError("Spawn needs a binary");
  std::unique_ptr<Process> p(new Process());
  for (const std::string& a : argv) p->command_line_ += (p->command_line_.empty() ? "" : " ") + a;

  // Everything the child needs is prepared before fork: it must not allocate.
  std::vector<std::string> args = argv;
  std::vector<char*> c_argv;
  for (std::string& a : args) c_argv.push_back(a.data());
  c_argv.push_back(nullptr);
  const char* working_dir = options.working_dir.empty() ? nullptr : options.working_dir.c_str();

  int out_pipe[2], err_pipe[2];
  if (::pipe2(out_pipe, O_CLOEXEC) != 0) return UnavailableError(std::strerror(errno));
  if (::pipe2(err_pipe, O_CLOEXEC) != 0) {
    ::close(out_pipe[0]);
    ::close(out_pipe[1]);
    return UnavailableError(std::strerror(errno));
  }
  int stdin_fd = ::open("/dev/null", O_RDONLY | O_CLOEXEC);
  int stderr_fd = ::memfd_create("child-stderr", MFD_CLOEXEC);
  auto close_all = [&] {
    for (int fd : {out_pipe[0], out_pipe[1], err_pipe[0], err_pipe[1], stdin_fd, stderr_fd}) {
      if (fd >= 0) ::close(fd);
    }
  };
  if (stdin_fd < 0 || stderr_fd < 0) {
    Status s =
        UnavailableError(std::string("cannot set up the child's stdio: ") + std::strerror(errno));
    close_all();
    return s;
  }

  const pid_t parent = ::getpid();
  const pid_t pid = ::fork();
  if (pid < 0) {
    Status s = UnavailableError(std::string("fork: ") + std::strerror(errno));
    close_all();
    return s;
  }
  if (pid == 0) {
    ChildAfterFork(c_argv.data(), working_dir, stdin_fd, out_pipe[1], stderr_fd, err_pipe[1],
                   options.keep_fds.data(), options.keep_fds.size(), parent);
  }
  p->pid_ = pid;
  ::close(out_pipe[1]);
  ::close(err_pipe[1]);
  ::close(stdin_fd);
  p->stdout_fd_ = out_pipe[0];
  p->stderr_fd_ = stderr_fd;
  p->pidfd_ = static_cast<int>(::syscall(SYS_pidfd_open, pid, 0));

  // The error pipe closes on a successful exec (CLOEXEC) or carries the exec errno.
  int child_errno = 0;
  ssize_t n;
  do {
    n = ::read(err_pipe[0], &child_errno, sizeof(child_errno));
  } while (n < 0 && errno == EINTR);
  ::close(err_pipe[0]);
  if (n == static_cast<ssize_t>(sizeof(child_errno))) {
    p->Wait(std::chrono::seconds(10));
    return UnavailableError("cannot execute " + argv[0] + ": " + std::strerror(child_errno));
  }
  return p;
}

Process::~Process() {
  if (running()) Stop(SIGKILL, std::chrono::seconds(30));
  for (int fd : {pidfd_, stdout_fd_, stderr_fd_}) {
    if (fd >= 0) ::close(fd);
  }
}

bool Process::FillBuffer(Clock::time_point deadline) {
  if (stdout_eof_) return false;
  while (true) {
    pollfd pfd{stdout_fd_, POLLIN, 0};
    int ready = ::poll(&pfd, 1, PollTimeoutMs(deadline));
    if (ready < 0 && errno == EINTR) continue;
    if (ready <= 0) return false;  // deadline
    char chunk[4096];
    ssize_t n = ::read(stdout_fd_, chunk, sizeof(chunk));
    if (n < 0 && (errno == EINTR || errno == EAGAIN)) continue;
    if (n <= 0) {
      stdout_eof_ = true;
      return false;
    }
    buffer_.append(chunk, static_cast<size_t>(n));
    return true;
  }
}

std::optional<std::string> Process::ReadLine(std::chrono::milliseconds timeout) {
  const auto deadline = Clock::now() + timeout;
  while (true) {
    size_t newline = buffer_.find('\n');
    if (newline != std::string::npos) {
      std::string line = buffer_.substr(0, newline);
      buffer_.erase(0, newline + 1);
      lines_.push_back(line);
      return line;
    }
    if (!FillBuffer(deadline)) return std::nullopt;
  }
}

std::optional<std::string> Process::WaitForLine(std::string_view prefix,
                                                std::chrono::milliseconds timeout) {
  const auto deadline = Clock::now() + timeout;
  while (true) {
    auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - Clock::now());
    std::optional<std::string> line = ReadLine(std::max(left, std::chrono::milliseconds(0)));
    if (!line.has_value()) return std::nullopt;
    if (line->compare(0, prefix.size(), prefix) == 0) return line;
  }
}

bool Process::ReadBytes(std::chrono::milliseconds timeout, std::string* out) {
  if (buffer_.empty() && !FillBuffer(Clock::now() + timeout)) return !stdout_eof_;
  out->append(buffer_);
  buffer_.clear();
  return true;
}

std::string Process::stderr_text() const {
  std::string text;
  char chunk[8192];
  off_t offset = 0;
  while (true) {
    ssize_t n = ::pread(stderr_fd_, chunk, sizeof(chunk), offset);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) break;
    text.append(chunk, static_cast<size_t>(n));
    offset += n;
  }
  return text;
}

bool Process::Signal(int sig) {
  if (!running()) return false;
  return ::kill(pid_, sig) == 0;
}

std::optional<int> Process::Wait(std::chrono::milliseconds timeout) {
  if (status_.has_value()) return status_;
  const auto deadline = Clock::now() + timeout;
  while (true) {
    int status = 0;
    pid_t r = ::waitpid(pid_, &status, WNOHANG);
    if (r == pid_) {
      status_ = status;
      return status_;
    }
    if (r < 0 && errno != EINTR) return std::nullopt;  // not our child any more; cannot happen
    if (Clock::now() >= deadline) return std::nullopt;
    if (pidfd_ >= 0) {
      // Readable once the child has exited.
      pollfd pfd{pidfd_, POLLIN, 0};
      ::poll(&pfd, 1, PollTimeoutMs(deadline));
    } else {
      std::this_thread::sleep_for(
          std::min<Clock::duration>(std::chrono::milliseconds(5), deadline - Clock::now()));
    }
  }
}

int Process::Stop(int sig, std::chrono::milliseconds timeout) {
  if (status_.has_value()) return *status_;
  Signal(sig);
  if (std::optional<int> status = Wait(timeout)) return *status;
  Signal(SIGKILL);
  // SIGKILL cannot be refused; the wait is bounded only to never hang a test on a kernel oddity.
  return Wait(std::chrono::seconds(60)).value_or(-1);
}

namespace {

std::chrono::milliseconds Left(Clock::time_point deadline) {
  return std::max(std::chrono::duration_cast<std::chrono::milliseconds>(deadline - Clock::now()),
                  std::chrono::milliseconds(0));
}

// Waits for `p` until `deadline` (then kills it) and fills the rest of `result`.
void Finish(Process& p, Clock::time_point deadline, RunResult* result) {
  std::optional<int> status = p.Wait(Left(deadline));
  if (!status.has_value()) {
    result->timed_out = true;
    status = p.Stop(SIGKILL, std::chrono::seconds(10));
  }
  if (WIFEXITED(*status)) result->exit_code = WEXITSTATUS(*status);
  if (WIFSIGNALED(*status)) result->signal = WTERMSIG(*status);
  result->err = p.stderr_text();
}

}  // namespace

RunResult Run(const std::vector<std::string>& argv, std::chrono::milliseconds timeout) {
  RunResult result;
  Result<std::unique_ptr<Process>> p = Process::Spawn(argv);
  if (!p.ok()) {
    result.err = p.status().ToString();
    return result;
  }
  const auto deadline = Clock::now() + timeout;
  // Drain stdout while the child runs so that it never blocks on a full pipe.
  while (Clock::now() < deadline) {
    if (!(*p)->ReadBytes(Left(deadline), &result.out)) break;
  }
  Finish(**p, deadline, &result);
  return result;
}

RunResult RunPassingOutput(const std::vector<std::string>& argv, const SpawnOptions& options,
                           std::chrono::milliseconds timeout) {
  RunResult result;
  Result<std::unique_ptr<Process>> p = Process::Spawn(argv, options);
  if (!p.ok()) {
    result.err = p.status().ToString();
    std::cerr << result.err << "\n";
    return result;
  }
  const auto deadline = Clock::now() + timeout;
  while (std::optional<std::string> line = (*p)->ReadLine(Left(deadline))) {
    std::cout << *line << "\n";
  }
  std::cout << std::flush;
  Finish(**p, deadline, &result);
  std::cerr << result.err;
  return result;
}

bool PollUntil(const std::function<bool()>& condition, std::chrono::milliseconds timeout,
               std::chrono::milliseconds interval) {
  const auto deadline = Clock::now() + timeout;
  while (true) {
    if (condition()) return true;
    if (Clock::now() >= deadline) return condition();
    std::this_thread::sleep_for(std::min<Clock::duration>(interval, deadline - Clock::now()));
  }
}

}  // namespace dmoe::testing
