#include "data/text_corpus.h"

#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <spawn.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstring>
#include <filesystem>

namespace dmoe::data {
namespace {

// A file descriptor, closed when it goes.
class Fd {
 public:
  explicit Fd(int fd = -1) : fd_(fd) {}
  ~Fd() { Close(); }
  Fd(const Fd&) = delete;
  Fd& operator=(const Fd&) = delete;
  int get() const { return fd_; }
  void Close() {
    if (fd_ >= 0) ::close(fd_);
    fd_ = -1;
  }

 private:
  int fd_;
};

std::string Errno(int err) { return std::strerror(err); }

// Appends what one read(2) of `fd` gives to *out and returns its count: 0 at end of file, -1 on an
// error (errno says which).
ssize_t ReadSome(int fd, std::string* out) {
  char buf[1 << 16];
  ssize_t n = 0;
  do {
    n = ::read(fd, buf, sizeof(buf));
  } while (n < 0 && errno == EINTR);
  if (n > 0) out->append(buf, static_cast<size_t>(n));
  return n;
}

// A child process started by RunProgram: killed and reaped if it is still there when this goes.
class Child {
 public:
  // pidfd_open through syscall(2): Debian 12's <sys/pidfd.h> declares it without extern "C".
  explicit Child(pid_t pid)
      : pid_(pid), pidfd_(static_cast<int>(::syscall(SYS_pidfd_open, pid, 0))) {}
  ~Child() {
    if (pid_ > 0) {
      ::kill(pid_, SIGKILL);
      Wait();
    }
  }
  Child(const Child&) = delete;
  Child& operator=(const Child&) = delete;
  // Readable once the child has exited; -1 when the kernel has no pidfd (then Wait blocks).
  int pidfd() const { return pidfd_.get(); }
  // Reaps the child and returns its waitpid status.
  int Wait() {
    int status = 0;
    while (::waitpid(pid_, &status, 0) < 0 && errno == EINTR) {
    }
    pid_ = -1;
    return status;
  }

 private:
  pid_t pid_;
  Fd pidfd_;
};

// Runs `argv` with an empty environment and stdin from /dev/null, and returns what it prints on
// stdout once it exits with status 0.
Result<std::string> RunProgram(const std::vector<std::string>& argv, size_t max_bytes,
                               const Clock& clock, std::chrono::milliseconds timeout) {
  const Deadline deadline = clock.Now() + timeout;
  int out_pipe[2];
  int err_pipe[2];
  if (::pipe2(out_pipe, O_CLOEXEC) != 0) return InternalError("pipe: " + Errno(errno));
  Fd out_read(out_pipe[0]), out_write(out_pipe[1]);
  if (::pipe2(err_pipe, O_CLOEXEC) != 0) return InternalError("pipe: " + Errno(errno));
  Fd err_read(err_pipe[0]), err_write(err_pipe[1]);

  posix_spawn_file_actions_t actions;
  posix_spawn_file_actions_init(&actions);
  posix_spawn_file_actions_addopen(&actions, 0, "/dev/null", O_RDONLY, 0);
  posix_spawn_file_actions_adddup2(&actions, out_write.get(), 1);
  posix_spawn_file_actions_adddup2(&actions, err_write.get(), 2);
  std::vector<char*> args;
  for (const std::string& a : argv) args.push_back(const_cast<char*>(a.c_str()));
  args.push_back(nullptr);
  char* no_env[] = {nullptr};
  pid_t pid = 0;
  const int spawned = posix_spawn(&pid, argv[0].c_str(), &actions, nullptr, args.data(), no_env);
  posix_spawn_file_actions_destroy(&actions);
  if (spawned != 0) return InternalError("cannot start " + argv[0] + ": " + Errno(spawned));
  Child child(pid);
  out_write.Close();
  err_write.Close();

  std::string out;
  std::string err;
  bool out_open = true;
  bool err_open = true;
  bool exited = child.pidfd() < 0;  // without a pidfd, wait for the pipes only
  while (out_open || err_open || !exited) {
    const auto left = std::chrono::ceil<std::chrono::milliseconds>(deadline - clock.Now());
    if (left.count() <= 0) {
      return DeadlineExceededError(argv[0] + " did not finish within " +
                                   std::to_string(timeout.count()) + " ms; killed");
    }
    pollfd fds[3] = {{out_open ? out_read.get() : -1, POLLIN, 0},
                     {err_open ? err_read.get() : -1, POLLIN, 0},
                     {exited ? -1 : child.pidfd(), POLLIN, 0}};
    const int ready = ::poll(fds, 3, static_cast<int>(std::min<int64_t>(left.count(), INT32_MAX)));
    if (ready < 0 && errno != EINTR) return InternalError("poll: " + Errno(errno));
    if (ready <= 0) continue;
    // A read error ends a pipe as its end of file does: the child's exit status tells the rest.
    if (fds[0].revents != 0) out_open = ReadSome(out_read.get(), &out) > 0;
    if (fds[1].revents != 0) err_open = ReadSome(err_read.get(), &err) > 0 && err.size() < 4096;
    if (fds[2].revents != 0) exited = true;
    if (out.size() > max_bytes) {
      return InvalidArgumentError(argv[0] + " printed more than " + std::to_string(max_bytes) +
                                  " bytes; killed");
    }
  }
  const int status = child.Wait();
  if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) {
    const std::string how = WIFEXITED(status)
                                ? "exited with status " + std::to_string(WEXITSTATUS(status))
                                : "was killed by signal " + std::to_string(WTERMSIG(status));
    return InternalError(argv[0] + " " + how + ": " + err.substr(0, 512));
  }
  return out;
}

// SplitMix64's output function (Steele, Lea, Flood 2014): a bijection that mixes every input bit
// into every output bit.
uint64_t Mix(uint64_t z) {
  z += 0x9e3779b97f4a7c15;
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9;
  z = (z ^ (z >> 27)) * 0x94d049bb133111eb;
  return z ^ (z >> 31);
}

}  // namespace

Result<std::string> ReadTextFile(const std::string& path, size_t max_bytes) {
  Fd fd(::open(path.c_str(), O_RDONLY | O_CLOEXEC));
  if (fd.get() < 0) {
    const int err = errno;
    if (err == ENOENT) return NotFoundError("text file " + path + " does not exist");
    return InvalidArgumentError("cannot open text file " + path + ": " + Errno(err));
  }
  struct stat st {};
  if (::fstat(fd.get(), &st) == 0 && S_ISDIR(st.st_mode)) {
    return InvalidArgumentError("text file " + path + " is a directory, not a file");
  }
  std::string text;
  for (;;) {
    const ssize_t n = ReadSome(fd.get(), &text);
    if (n < 0) return InvalidArgumentError("cannot read text file " + path + ": " + Errno(errno));
    if (n == 0) break;
    if (text.size() > max_bytes) {
      return InvalidArgumentError("text file " + path + " holds more than " +
                                  std::to_string(max_bytes) + " bytes, the limit");
    }
  }
  if (text.empty()) return InvalidArgumentError("text file " + path + " is empty");
  return text;
}

Result<std::string> ReadKjv(const Clock& clock, const KjvOptions& o) {
  if (!std::filesystem::exists(o.program)) {
    return NotFoundError("the KJV needs " + o.program +
                         ": install Debian's bible-kjv (scripts/setup does)");
  }
  if (!std::filesystem::exists(o.data_dir + "/bible.data")) {
    return NotFoundError("the KJV needs " + o.data_dir +
                         "/bible.data: install Debian's bible-kjv-text (scripts/setup does)");
  }
  DMOE_ASSIGN_OR_RETURN(std::string text,
                        RunProgram({o.program, "-p", o.data_dir, "-l", "79", "gen1:1-rev22:21"},
                                   o.max_bytes, clock, o.timeout));
  if (text.empty()) return InternalError(o.program + " printed nothing");
  return text;
}

Result<std::string> ReadTextSource(const DataSpec& spec, const Clock& clock) {
  switch (spec.source) {
    case DataSource::kKjv:
      return ReadKjv(clock);
    case DataSource::kTextFile:
      return ReadTextFile(spec.path);
    case DataSource::kFashionMnist:
      break;
  }
  return InvalidArgumentError("fashion-mnist is images, not text");
}

Result<TextCorpus> TextCorpus::Create(std::string text, int64_t seq_len) {
  if (seq_len < 1 || seq_len > kMaxSeqLen) {
    return InvalidArgumentError("sequence length " + std::to_string(seq_len) + " is not in 1.." +
                                std::to_string(kMaxSeqLen));
  }
  if (text.empty()) return InvalidArgumentError("the text is empty");
  const auto size = static_cast<int64_t>(text.size());
  const int64_t held_out = (size + 19) / 20;
  const int64_t train = size - held_out;
  if (train < seq_len + 1) {
    return InvalidArgumentError(
        "the text has " + std::to_string(size) + " bytes; its training split (all but the last " +
        std::to_string(held_out) + ") has " + std::to_string(train) +
        ", fewer than one window of sequence length + 1 = " + std::to_string(seq_len + 1));
  }
  return TextCorpus(std::move(text), seq_len, train);
}

std::vector<int64_t> TextCorpus::TrainWindowBegins(uint64_t seed, int64_t step,
                                                   int64_t count) const {
  const auto range = static_cast<uint64_t>(train_bytes_ - window_len() + 1);
  const uint64_t step_key = Mix(Mix(seed) ^ static_cast<uint64_t>(step));
  std::vector<int64_t> begins(static_cast<size_t>(count));
  for (int64_t i = 0; i < count; ++i) {
    const uint64_t x = Mix(step_key ^ static_cast<uint64_t>(i));
    begins[i] = static_cast<int64_t>((static_cast<unsigned __int128>(x) * range) >> 64);
  }
  return begins;
}

std::vector<EvalWindow> TextCorpus::EvalWindows() const {
  std::vector<EvalWindow> windows;
  int64_t target = train_bytes_;  // the first byte the next window scores
  for (; target + seq_len_ <= size(); target += seq_len_) windows.push_back({target - 1, 0});
  const int64_t rest = size() - target;
  if (rest > 0) windows.push_back({size() - window_len(), seq_len_ - rest});
  return windows;
}

Result<std::vector<Token>> TextCorpus::Gather(std::span<const int64_t> begins) const {
  std::vector<Token> tokens;
  tokens.reserve(begins.size() * static_cast<size_t>(window_len()));
  for (int64_t begin : begins) {
    if (begin < 0 || begin > size() - window_len()) {
      return InvalidArgumentError("window begin " + std::to_string(begin) + " is not in 0.." +
                                  std::to_string(size() - window_len()));
    }
    for (int64_t i = begin; i < begin + window_len(); ++i) {
      tokens.push_back(static_cast<unsigned char>(text_[i]));
    }
  }
  return tokens;
}

Result<double> BitsPerByte(double nll_nats, int64_t bytes) {
  if (bytes < 1)
    return InvalidArgumentError("bits per byte of " + std::to_string(bytes) + " bytes");
  if (!std::isfinite(nll_nats) || nll_nats < 0) {
    return InvalidArgumentError("negative log-likelihood " + std::to_string(nll_nats) +
                                " is not a finite number >= 0");
  }
  return nll_nats / (static_cast<double>(bytes) * std::log(2.0));
}

}  // namespace dmoe::data
