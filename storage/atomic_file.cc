#include "storage/atomic_file.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <string_view>

namespace dmoe::storage {
namespace {

Status ErrnoStatus(int err, std::string_view what, const std::string& path) {
  std::string message = std::string(what) + " " + path + ": " + std::strerror(err);
  switch (err) {
    case ENOENT:
    case ENOTDIR:
      return NotFoundError(std::move(message));
    case EACCES:
    case EPERM:
    case EROFS:
      return PermissionDeniedError(std::move(message));
    case ENOSPC:
    case EDQUOT:
      return ResourceExhaustedError(std::move(message));
    default:
      return InternalError(std::move(message));
  }
}

std::string DirectoryOf(const std::string& path) {
  const size_t slash = path.find_last_of('/');
  if (slash == std::string::npos) return ".";
  if (slash == 0) return "/";
  return path.substr(0, slash);
}

// Closes the descriptor and removes the temporary file unless released.
class TempFile {
 public:
  TempFile(int fd, std::string path) : fd_(fd), path_(std::move(path)) {}
  ~TempFile() {
    if (fd_ >= 0) ::close(fd_);
    if (!released_) ::unlink(path_.c_str());
  }
  int fd() const { return fd_; }
  const std::string& path() const { return path_; }
  // Closes the descriptor, reporting the error close may carry for delayed writes.
  Status Close() {
    int fd = fd_;
    fd_ = -1;
    if (::close(fd) != 0) return ErrnoStatus(errno, "closing", path_);
    return Status::Ok();
  }
  void Release() { released_ = true; }

 private:
  int fd_;
  std::string path_;
  bool released_ = false;
};

}  // namespace

Status WriteFileAtomically(const std::string& path, std::span<const uint8_t> data) {
  if (path.empty() || path.back() == '/') {
    return InvalidArgumentError("'" + path + "' is not a file path");
  }
  std::string temp_path = path + ".tmp-XXXXXX";
  int fd = ::mkostemp(temp_path.data(), O_CLOEXEC);
  if (fd < 0) return ErrnoStatus(errno, "creating a temporary file for", path);
  TempFile temp(fd, temp_path);
  // mkostemp makes the file 0600; an exported checkpoint is meant to be shared like any other file.
  if (::fchmod(temp.fd(), 0644) != 0) return ErrnoStatus(errno, "setting the mode of", temp.path());

  size_t written = 0;
  while (written < data.size()) {
    ssize_t n = ::write(temp.fd(), data.data() + written, data.size() - written);
    if (n < 0) {
      if (errno == EINTR) continue;
      return ErrnoStatus(errno, "writing", temp.path());
    }
    written += static_cast<size_t>(n);
  }
  if (::fsync(temp.fd()) != 0) return ErrnoStatus(errno, "syncing", temp.path());
  DMOE_RETURN_IF_ERROR(temp.Close());
  if (::rename(temp.path().c_str(), path.c_str()) != 0) {
    return ErrnoStatus(errno, "renaming a temporary file to", path);
  }
  temp.Release();

  // The rename is durable only once the directory entry is on disk.
  const std::string dir = DirectoryOf(path);
  int dir_fd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (dir_fd < 0) return ErrnoStatus(errno, "opening directory", dir);
  int rc = ::fsync(dir_fd);
  int err = errno;
  ::close(dir_fd);
  if (rc != 0) return ErrnoStatus(err, "syncing directory", dir);
  return Status::Ok();
}

}  // namespace dmoe::storage
