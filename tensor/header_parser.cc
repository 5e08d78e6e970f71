#include "tensor/header_parser.h"

#include <cstring>
#include <limits>
#include <optional>
#include <string>
#include <unordered_set>
#include <utility>

#include <nlohmann/json.hpp>

#include "tensor/utf8.h"

namespace dmoe::safetensors::internal {
namespace {

using Json = nlohmann::json;

constexpr std::string_view kIntegerRule =
    "JSON integers in [0, 2^63-1] (no sign, fraction or exponent)";

// Receives nlohmann's SAX events for a header and builds the entries while checking the rules.
// nlohmann's own DOM parser keeps the last of two duplicate keys and folds "-0" into 0, so the
// events are used directly: number_unsigned is a plain non-negative integer, number_integer only
// ever comes from a literal with a minus sign (including "-0"), and number_float from a fraction,
// an exponent, or an integer too large for 64 bits. The first broken rule stops the parse.
class HeaderHandler {
 public:
  // Events, in nlohmann's json_sax interface.
  bool null() { return WrongType("null"); }
  bool boolean(bool) { return WrongType("a boolean"); }
  bool number_integer(Json::number_integer_t value) {
    return BadNumber(value == 0 ? "-0" : std::to_string(value));
  }
  bool number_unsigned(Json::number_unsigned_t value) { return Unsigned(value); }
  bool number_float(Json::number_float_t, const Json::string_t& raw) { return BadNumber(raw); }
  bool string(Json::string_t& value);
  bool binary(Json::binary_t&) { return WrongType("binary data"); }
  bool start_object(std::size_t);
  bool key(Json::string_t& value);
  bool end_object();
  bool start_array(std::size_t);
  bool end_array();
  bool parse_error(std::size_t, const std::string&, const nlohmann::detail::exception& e);

  Status status() const { return status_; }
  ParsedHeader TakeResult() { return std::move(result_); }

 private:
  // Where the parser is; each state says what may come next.
  enum class State {
    kStart,          // the top-level '{'
    kTop,            // a key of the top-level object, or its end
    kTopValue,       // the value of a top-level key: a tensor entry or the metadata
    kMetadata,       // a key of __metadata__, or its end
    kMetadataValue,  // a metadata value (a string)
    kEntry,          // a key of a tensor entry, or its end
    kEntryValue,     // the value of dtype, shape or data_offsets
    kShape,          // an element of shape, or its end
    kOffsets,        // an element of data_offsets, or its end
    kDone,
  };
  enum class Field { kDType, kShape, kOffsets };

  bool Fail(std::string message) {
    status_ = Refuse(std::move(message));
    return false;
  }
  bool CheckNoNul(const std::string& s);
  bool WrongType(std::string_view what);
  bool BadNumber(const std::string& literal);
  bool Unsigned(uint64_t value);
  bool FinishEntry();
  std::string Tensor() const { return "tensor " + QuoteForMessage(entry_.name); }

  State state_ = State::kStart;
  Status status_;
  ParsedHeader result_;
  std::unordered_set<std::string> top_keys_;
  std::string pending_key_;
  HeaderEntry entry_;
  Field field_ = Field::kDType;
  bool has_dtype_ = false;
  bool has_shape_ = false;
  bool has_offsets_ = false;
  size_t num_offsets_ = 0;
};

bool HeaderHandler::CheckNoNul(const std::string& s) {
  if (std::memchr(s.data(), 0, s.size()) == nullptr) return true;
  return Fail("header string " + QuoteForMessage(s) + " holds a NUL character; NUL is refused");
}

bool HeaderHandler::WrongType(std::string_view what) {
  const std::string got = ", got " + std::string(what);
  switch (state_) {
    case State::kTopValue:
      if (pending_key_ == kMetadataKey) {
        return Fail("__metadata__ must be an object mapping strings to strings" + got);
      }
      return Fail("tensor " + QuoteForMessage(pending_key_) +
                  " must be an object with keys dtype, shape, data_offsets" + got);
    case State::kMetadataValue:
      return Fail("__metadata__ value of key " + QuoteForMessage(pending_key_) +
                  " must be a string" + got);
    case State::kEntryValue:
      switch (field_) {
        case Field::kDType:
          return Fail(Tensor() + ": dtype must be a string" + got);
        case Field::kShape:
          return Fail(Tensor() + ": shape must be a list of at most 8 integers" + got);
        case Field::kOffsets:
          return Fail(Tensor() + ": data_offsets must be a list of two integers" + got);
      }
      break;
    case State::kShape:
      return Fail(Tensor() + ": shape must be a list of " + std::string(kIntegerRule) + got +
                  " inside it");
    case State::kOffsets:
      return Fail(Tensor() + ": data_offsets must be two " + std::string(kIntegerRule) + got +
                  " inside it");
    default:
      break;
  }
  return Fail("header must be one JSON object" + got);
}

bool HeaderHandler::BadNumber(const std::string& literal) {
  if (state_ == State::kShape) {
    return Fail(Tensor() + ": shape entries must be " + std::string(kIntegerRule) + ", got " +
                QuoteForMessage(literal));
  }
  if (state_ == State::kOffsets) {
    return Fail(Tensor() + ": data_offsets must be " + std::string(kIntegerRule) + ", got " +
                QuoteForMessage(literal));
  }
  return WrongType("a number");
}

bool HeaderHandler::Unsigned(uint64_t value) {
  if (state_ == State::kShape) {
    if (value > static_cast<uint64_t>(std::numeric_limits<int64_t>::max())) {
      return BadNumber(std::to_string(value));
    }
    if (entry_.shape.size() == kMaxRank) {
      return Fail(Tensor() + ": shape has more than 8 dimensions");
    }
    entry_.shape.push_back(static_cast<int64_t>(value));
    return true;
  }
  if (state_ == State::kOffsets) {
    if (num_offsets_ == 2) {
      return Fail(Tensor() +
                  ": data_offsets must be a list of two integers [begin, end], got more");
    }
    (num_offsets_ == 0 ? entry_.begin : entry_.end) = value;
    ++num_offsets_;
    return true;
  }
  return WrongType("a number");
}

bool HeaderHandler::string(Json::string_t& value) {
  if (!CheckNoNul(value)) return false;
  if (state_ == State::kMetadataValue) {
    result_.metadata[pending_key_] = std::move(value);
    state_ = State::kMetadata;
    return true;
  }
  if (state_ == State::kEntryValue && field_ == Field::kDType) {
    auto dtype = ParseDType(value);
    if (!dtype.ok()) {
      return Fail(Tensor() + ": dtype " + QuoteForMessage(value) +
                  " is not one of F32, F16, BF16, F64, I64, I32, U8, BOOL");
    }
    entry_.dtype = *dtype;
    state_ = State::kEntry;
    return true;
  }
  return WrongType("a string");
}

bool HeaderHandler::start_object(std::size_t) {
  if (state_ == State::kStart) {
    state_ = State::kTop;
    return true;
  }
  if (state_ == State::kTopValue) {
    if (pending_key_ == kMetadataKey) {
      state_ = State::kMetadata;
    } else {
      entry_ = HeaderEntry{};
      entry_.name = std::move(pending_key_);
      has_dtype_ = has_shape_ = has_offsets_ = false;
      num_offsets_ = 0;
      state_ = State::kEntry;
    }
    return true;
  }
  return WrongType("an object");
}

bool HeaderHandler::key(Json::string_t& value) {
  if (!CheckNoNul(value)) return false;
  switch (state_) {
    case State::kTop: {
      if (!top_keys_.insert(value).second) {
        return Fail("duplicate key " + QuoteForMessage(value) + " in header");
      }
      if (value != kMetadataKey) {
        const Status name_status = CheckTensorName(value);
        if (!name_status.ok()) {
          status_ = name_status;
          return false;
        }
      }
      pending_key_ = std::move(value);
      state_ = State::kTopValue;
      return true;
    }
    case State::kMetadata:
      if (result_.metadata.count(value) != 0) {
        return Fail("duplicate key " + QuoteForMessage(value) + " in __metadata__");
      }
      pending_key_ = std::move(value);
      state_ = State::kMetadataValue;
      return true;
    case State::kEntry: {
      bool* seen = nullptr;
      if (value == "dtype") {
        field_ = Field::kDType;
        seen = &has_dtype_;
      } else if (value == "shape") {
        field_ = Field::kShape;
        seen = &has_shape_;
      } else if (value == "data_offsets") {
        field_ = Field::kOffsets;
        seen = &has_offsets_;
      } else {
        return Fail(Tensor() + " has key " + QuoteForMessage(value) +
                    "; an entry has exactly the keys dtype, shape, data_offsets");
      }
      if (*seen) {
        return Fail("duplicate key " + QuoteForMessage(value) + " in " + Tensor());
      }
      *seen = true;
      state_ = State::kEntryValue;
      return true;
    }
    default:
      return Fail("header must be one JSON object");
  }
}

bool HeaderHandler::end_object() {
  switch (state_) {
    case State::kTop:
      state_ = State::kDone;
      return true;
    case State::kMetadata:
      state_ = State::kTop;
      return true;
    case State::kEntry:
      if (!FinishEntry()) return false;
      result_.entries.push_back(std::move(entry_));
      state_ = State::kTop;
      return true;
    default:
      return Fail("header must be one JSON object");
  }
}

bool HeaderHandler::start_array(std::size_t) {
  if (state_ == State::kEntryValue && field_ == Field::kShape) {
    state_ = State::kShape;
    return true;
  }
  if (state_ == State::kEntryValue && field_ == Field::kOffsets) {
    state_ = State::kOffsets;
    return true;
  }
  return WrongType("a list");
}

bool HeaderHandler::end_array() {
  if (state_ == State::kShape) {
    state_ = State::kEntry;
    return true;
  }
  if (state_ == State::kOffsets) {
    if (num_offsets_ != 2) {
      return Fail(Tensor() + ": data_offsets must be a list of two integers [begin, end], got " +
                  std::to_string(num_offsets_));
    }
    state_ = State::kEntry;
    return true;
  }
  return Fail("header must be one JSON object");
}

bool HeaderHandler::parse_error(std::size_t, const std::string&,
                                const nlohmann::detail::exception& e) {
  // nlohmann's message quotes the bytes it last read, which may be anything; quoting makes the
  // message valid UTF-8 so it can travel in a JSON error body.
  std::string_view what = e.what();
  if (what.starts_with("[json.exception.") && what.find("] ") != std::string_view::npos) {
    what.remove_prefix(what.find("] ") + 2);
  }
  const std::string detail = EscapeForMessage(what, 300);
  if (what.find("surrogate") != std::string_view::npos ||
      what.find("UTF-8") != std::string_view::npos) {
    return Fail("header strings must be valid UTF-8 (lone surrogate escapes are refused): " +
                detail);
  }
  return Fail("header must be one JSON object followed only by spaces: " + detail);
}

bool HeaderHandler::FinishEntry() {
  for (auto [has, key] : {std::pair{has_dtype_, "dtype"}, std::pair{has_shape_, "shape"},
                          std::pair{has_offsets_, "data_offsets"}}) {
    if (!has) {
      return Fail(Tensor() + " is missing key '" + key +
                  "'; an entry has exactly the keys dtype, shape, data_offsets");
    }
  }
  if (entry_.begin > entry_.end) {
    return Fail(Tensor() + ": data_offsets begin " + std::to_string(entry_.begin) + " > end " +
                std::to_string(entry_.end));
  }
  uint64_t bytes = 0;
  if (!TensorBytes(entry_.dtype, entry_.shape, &bytes)) {
    return Fail(Tensor() + ": shape " + ShapeToString(entry_.shape) + " of " +
                std::string(DTypeName(entry_.dtype)) + " overflows 64 bits");
  }
  if (entry_.end - entry_.begin != bytes) {
    return Fail(Tensor() + ": data_offsets span " + std::to_string(entry_.end - entry_.begin) +
                " bytes but shape " + ShapeToString(entry_.shape) + " of " +
                std::string(DTypeName(entry_.dtype)) + " needs " + std::to_string(bytes));
  }
  return true;
}

}  // namespace

Status Refuse(std::string message) { return InvalidArgumentError("safetensors: " + message); }

Status CheckTensorName(std::string_view name) {
  if (name.empty() || name.size() > kMaxNameBytes) {
    return Refuse("tensor name must be 1 to 256 bytes, got " + std::to_string(name.size()) +
                  (name.empty() ? "" : ": " + QuoteForMessage(name)));
  }
  if (name == kMetadataKey) return Refuse("tensor name '__metadata__' is reserved");
  size_t pos = 0;
  while (pos < name.size()) {
    char32_t code_point = 0;
    if (!NextCodePoint(name, &pos, &code_point)) {
      return Refuse("tensor name " + QuoteForMessage(name) + " is not valid UTF-8");
    }
    if (IsControl(code_point)) {
      return Refuse("tensor name " + QuoteForMessage(name) +
                    " is not printable UTF-8 (it holds a control character)");
    }
  }
  return Status::Ok();
}

bool TensorBytes(DType dtype, const std::vector<int64_t>& shape, uint64_t* bytes) {
  for (int64_t dim : shape) {
    if (dim == 0) {
      *bytes = 0;
      return true;
    }
  }
  uint64_t total = ItemSize(dtype);
  for (int64_t dim : shape) {
    if (__builtin_mul_overflow(total, static_cast<uint64_t>(dim), &total)) return false;
  }
  *bytes = total;
  return true;
}

std::string ShapeToString(const std::vector<int64_t>& shape) {
  std::string out = "[";
  for (size_t i = 0; i < shape.size(); ++i) {
    if (i != 0) out += ", ";
    out += std::to_string(shape[i]);
  }
  return out + "]";
}

Result<ParsedHeader> ParseHeader(std::string_view text) {
  HeaderHandler handler;
  bool parsed = false;
  try {
    parsed =
        Json::sax_parse(text.begin(), text.end(), &handler, nlohmann::detail::input_format_t::json,
                        /*strict=*/true, /*ignore_comments=*/false);
  } catch (const Json::exception& e) {
    return Refuse("header must be one JSON object: " + QuoteForMessage(e.what(), 300));
  }
  if (!parsed) {
    if (!handler.status().ok()) return handler.status();
    return Refuse("header must be one JSON object");
  }
  return handler.TakeResult();
}

}  // namespace dmoe::safetensors::internal
