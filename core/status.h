// Status and Result<T>: the one error type of dmoe, with the codes of PROTOCOL section 3.
//
// A code is chosen by whether a retry helps: kUnavailable and kDeadlineExceeded make a caller try
// another peer; kInvalidArgument is never retried. Foreign errors (rocksdb::Status, beast error
// codes, c10::Error, json exceptions) are converted to a Status once, at the edge of the module
// that calls the foreign library, and never travel further.
//
// Core types live directly in namespace dmoe (not dmoe::core) because every module uses them.
#ifndef DMOE_CORE_STATUS_H_
#define DMOE_CORE_STATUS_H_

#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <variant>

namespace dmoe {

enum class Code {
  kOk = 0,
  kInvalidArgument,
  kUnauthenticated,
  kPermissionDenied,
  kNotFound,
  kPayloadTooLarge,
  kUnsupportedMediaType,
  kResourceExhausted,
  kInternal,
  kUnavailable,
  kDeadlineExceeded,
};

// The wire name of a code ("invalid_argument"); "ok" for kOk.
std::string_view CodeName(Code code);
// The inverse of CodeName; nullopt for an unknown name.
std::optional<Code> CodeFromName(std::string_view name);
// The HTTP status PROTOCOL section 3 assigns to a code (200 for kOk).
int HttpStatus(Code code);
// True for the codes where trying again (later or elsewhere) can succeed.
bool IsRetryable(Code code);

class [[nodiscard]] Status {
 public:
  // An OK status.
  Status() = default;
  Status(Code code, std::string message) : code_(code), message_(std::move(message)) {}

  static Status Ok() { return Status(); }

  bool ok() const { return code_ == Code::kOk; }
  Code code() const { return code_; }
  const std::string& message() const { return message_; }
  // "invalid_argument: <message>", or "ok".
  std::string ToString() const;
  // JSON error body of PROTOCOL section 3: {"error":{"code":..,"message":..}}.
  std::string ToJson() const;

  // Marks a status as deliberately ignored.
  void IgnoreError() const {}

  friend bool operator==(const Status& a, const Status& b) {
    return a.code_ == b.code_ && a.message_ == b.message_;
  }

 private:
  Code code_ = Code::kOk;
  std::string message_;
};

Status InvalidArgumentError(std::string message);
Status UnauthenticatedError(std::string message);
Status PermissionDeniedError(std::string message);
Status NotFoundError(std::string message);
Status PayloadTooLargeError(std::string message);
Status UnsupportedMediaTypeError(std::string message);
Status ResourceExhaustedError(std::string message);
Status InternalError(std::string message);
Status UnavailableError(std::string message);
Status DeadlineExceededError(std::string message);

// Either a value or a non-OK Status. Constructing a Result from an OK Status is a programming error
// and yields kInternal.
template <typename T>
class [[nodiscard]] Result {
 public:
  Result(T value) : v_(std::move(value)) {}  // NOLINT: implicit by design, like absl::StatusOr.
  Result(Status status) : v_(std::move(status)) {  // NOLINT
    if (std::get<Status>(v_).ok()) v_ = Status(Code::kInternal, "Result built from an OK status");
  }

  bool ok() const { return std::holds_alternative<T>(v_); }
  // The error; an OK Status when a value is held.
  Status status() const { return ok() ? Status() : std::get<Status>(v_); }

  T& value() & { return std::get<T>(v_); }
  const T& value() const& { return std::get<T>(v_); }
  T&& value() && { return std::get<T>(std::move(v_)); }
  T& operator*() & { return value(); }
  const T& operator*() const& { return value(); }
  T&& operator*() && { return std::move(*this).value(); }
  T* operator->() { return &value(); }
  const T* operator->() const { return &value(); }

 private:
  std::variant<T, Status> v_;
};

namespace internal {
inline Status ToStatus(const Status& s) { return s; }
template <typename T>
Status ToStatus(const Result<T>& r) {
  return r.status();
}
}  // namespace internal

}  // namespace dmoe

#define DMOE_CONCAT_INNER_(a, b) a##b
#define DMOE_CONCAT_(a, b) DMOE_CONCAT_INNER_(a, b)

// Returns from the enclosing function when `expr` (a Status or Result) is not OK.
#define DMOE_RETURN_IF_ERROR(expr)                                  \
  do {                                                              \
    ::dmoe::Status dmoe_status_ = ::dmoe::internal::ToStatus(expr); \
    if (!dmoe_status_.ok()) return dmoe_status_;                    \
  } while (0)

// `DMOE_ASSIGN_OR_RETURN(auto x, F());` declares x from a Result, or returns its error.
#define DMOE_ASSIGN_OR_RETURN(lhs, expr) \
  DMOE_ASSIGN_OR_RETURN_IMPL_(DMOE_CONCAT_(dmoe_result_, __LINE__), lhs, expr)
#define DMOE_ASSIGN_OR_RETURN_IMPL_(tmp, lhs, expr) \
  auto tmp = (expr);                                \
  if (!tmp.ok()) return tmp.status();               \
  lhs = std::move(tmp).value()

#endif  // DMOE_CORE_STATUS_H_
