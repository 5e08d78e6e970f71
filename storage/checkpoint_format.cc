#include "storage/checkpoint_format.h"

#include <cstring>
#include <utility>

namespace dmoe::storage::format {
namespace {

constexpr std::string_view kMagic = "DMOECKP1";
// Bounds that only a corrupt manifest exceeds; they keep a bad count from allocating gigabytes.
constexpr uint32_t kMaxCount = 1u << 24;

void PutU32(std::string* out, uint32_t v) {
  for (int i = 0; i < 4; ++i) out->push_back(static_cast<char>((v >> (8 * i)) & 0xff));
}
void PutU64(std::string* out, uint64_t v) {
  for (int i = 0; i < 8; ++i) out->push_back(static_cast<char>((v >> (8 * i)) & 0xff));
}
void PutString(std::string* out, std::string_view s) {
  PutU32(out, static_cast<uint32_t>(s.size()));
  out->append(s);
}

void PutBigEndian(std::string* out, uint64_t v, int bytes) {
  for (int i = bytes - 1; i >= 0; --i) out->push_back(static_cast<char>((v >> (8 * i)) & 0xff));
}

uint64_t GetBigEndian(std::string_view in, int bytes) {
  uint64_t v = 0;
  for (int i = 0; i < bytes; ++i) v = (v << 8) | static_cast<uint8_t>(in[i]);
  return v;
}

// Bounds-checked little-endian reader; the first failure sticks and names what was being read.
class Reader {
 public:
  explicit Reader(std::string_view in) : in_(in) {}

  bool U32(uint32_t* v, const char* what) {
    if (!Need(4, what)) return false;
    *v = 0;
    for (int i = 3; i >= 0; --i) *v = (*v << 8) | static_cast<uint8_t>(in_[pos_ + i]);
    pos_ += 4;
    return true;
  }
  bool U64(uint64_t* v, const char* what) {
    if (!Need(8, what)) return false;
    *v = 0;
    for (int i = 7; i >= 0; --i) *v = (*v << 8) | static_cast<uint8_t>(in_[pos_ + i]);
    pos_ += 8;
    return true;
  }
  bool I64(int64_t* v, const char* what) {
    uint64_t u = 0;
    if (!U64(&u, what)) return false;
    *v = static_cast<int64_t>(u);
    return true;
  }
  bool String(std::string* s, const char* what) {
    uint32_t size = 0;
    if (!U32(&size, what) || !Need(size, what)) return false;
    s->assign(in_.substr(pos_, size));
    pos_ += size;
    return true;
  }
  bool Bytes(uint8_t* out, size_t n, const char* what) {
    if (!Need(n, what)) return false;
    std::memcpy(out, in_.data() + pos_, n);
    pos_ += n;
    return true;
  }
  bool done() const { return pos_ == in_.size(); }
  const std::string& error() const { return error_; }

 private:
  bool Need(size_t n, const char* what) {
    if (in_.size() - pos_ >= n) return true;
    if (error_.empty()) error_ = std::string("manifest ends inside ") + what;
    return false;
  }
  std::string_view in_;
  size_t pos_ = 0;
  std::string error_;
};

Status Corrupt(std::string_view why) {
  return InternalError("checkpoint manifest is corrupt: " + std::string(why));
}

}  // namespace

std::string EncodeStep(int64_t step) {
  std::string out;
  PutBigEndian(&out, static_cast<uint64_t>(step), 8);
  return out;
}

std::string VersionPrefix(std::string_view uid, int64_t step) {
  std::string key(uid);
  key.push_back('/');
  key += EncodeStep(step);
  return key;
}

std::string ManifestKey(std::string_view uid, int64_t step) {
  return VersionPrefix(uid, step) + 'm';
}

std::string TensorKey(std::string_view uid, int64_t step, uint32_t index) {
  std::string key = VersionPrefix(uid, step) + 't';
  PutBigEndian(&key, index, 4);
  return key;
}

std::pair<std::string, std::string> VersionRange(std::string_view uid, int64_t step) {
  // Steps are non-negative, so step + 1 fits in the 8-byte unsigned encoding.
  std::string end(uid);
  end.push_back('/');
  PutBigEndian(&end, static_cast<uint64_t>(step) + 1, 8);
  return {VersionPrefix(uid, step), end};
}

std::pair<std::string, std::string> ExpertRange(std::string_view uid) {
  // '0' is the byte after '/', so [uid/, uid0) is every key of `uid` and of no other expert.
  return {std::string(uid) + '/', std::string(uid) + '0'};
}

std::string EncodeSteps(const std::vector<int64_t>& steps) {
  std::string out;
  for (int64_t step : steps) out += EncodeStep(step);
  return out;
}

Result<std::vector<int64_t>> DecodeSteps(std::string_view value) {
  if (value.empty() || value.size() % 8 != 0) {
    return InternalError("checkpoint step list is corrupt: " + std::to_string(value.size()) +
                         " bytes is not a positive multiple of 8");
  }
  std::vector<int64_t> steps;
  for (size_t i = 0; i < value.size(); i += 8) {
    uint64_t step = GetBigEndian(value.substr(i, 8), 8);
    if (step > static_cast<uint64_t>(INT64_MAX) ||
        (!steps.empty() && static_cast<int64_t>(step) <= steps.back())) {
      return InternalError("checkpoint step list is corrupt: steps are not ascending");
    }
    steps.push_back(static_cast<int64_t>(step));
  }
  return steps;
}

std::string EncodeManifest(const Manifest& manifest, Hash256* checksum) {
  std::string out(kMagic);
  PutString(&out, manifest.uid);
  PutU64(&out, static_cast<uint64_t>(manifest.step));
  PutU64(&out, static_cast<uint64_t>(manifest.created_unix_ms));
  PutU32(&out, static_cast<uint32_t>(manifest.metadata.size()));
  for (const auto& [key, value] : manifest.metadata) {
    PutString(&out, key);
    PutString(&out, value);
  }
  PutU32(&out, static_cast<uint32_t>(manifest.tensors.size()));
  for (const TensorEntry& t : manifest.tensors) {
    PutString(&out, t.name);
    PutString(&out, safetensors::DTypeName(t.dtype));
    PutU32(&out, static_cast<uint32_t>(t.shape.size()));
    for (int64_t dim : t.shape) PutU64(&out, static_cast<uint64_t>(dim));
    PutU64(&out, t.byte_size);
    out.append(reinterpret_cast<const char*>(t.digest.data()), t.digest.size());
  }
  Hash256 sum = Blake2b256(std::string_view(out));
  out.append(reinterpret_cast<const char*>(sum.data()), sum.size());
  if (checksum != nullptr) *checksum = sum;
  return out;
}

Result<Manifest> DecodeManifest(std::string_view bytes, Hash256* checksum) {
  Hash256 stored{};
  if (bytes.size() < kMagic.size() + stored.size() || !bytes.starts_with(kMagic)) {
    return Corrupt("it does not start with " + std::string(kMagic));
  }
  std::string_view body = bytes.substr(0, bytes.size() - stored.size());
  std::memcpy(stored.data(), bytes.data() + body.size(), stored.size());
  if (Blake2b256(body) != stored) return Corrupt("its checksum does not match its contents");
  if (checksum != nullptr) *checksum = stored;

  Reader r(body.substr(kMagic.size()));
  Manifest m;
  uint32_t count = 0;
  bool ok = r.String(&m.uid, "the uid") && r.I64(&m.step, "the step") &&
            r.I64(&m.created_unix_ms, "the creation time") && r.U32(&count, "the metadata count");
  if (ok && count > kMaxCount) return Corrupt("metadata count " + std::to_string(count));
  for (uint32_t i = 0; ok && i < count; ++i) {
    std::string key, value;
    ok = r.String(&key, "a metadata key") && r.String(&value, "a metadata value");
    if (ok && !m.metadata.emplace(std::move(key), std::move(value)).second) {
      return Corrupt("a metadata key appears twice");
    }
  }
  ok = ok && r.U32(&count, "the tensor count");
  if (ok && count > kMaxCount) return Corrupt("tensor count " + std::to_string(count));
  for (uint32_t i = 0; ok && i < count; ++i) {
    TensorEntry t;
    std::string dtype;
    uint32_t rank = 0;
    ok =
        r.String(&t.name, "a tensor name") && r.String(&dtype, "a dtype") && r.U32(&rank, "a rank");
    if (!ok) break;
    Result<safetensors::DType> parsed = safetensors::ParseDType(dtype);
    if (!parsed.ok()) return Corrupt("unknown dtype '" + dtype + "'");
    t.dtype = *parsed;
    if (rank > safetensors::kMaxRank) return Corrupt("rank " + std::to_string(rank));
    t.shape.resize(rank);
    for (uint32_t d = 0; ok && d < rank; ++d) ok = r.I64(&t.shape[d], "a dimension");
    ok = ok && r.U64(&t.byte_size, "a tensor size") &&
         r.Bytes(t.digest.data(), t.digest.size(), "a tensor digest");
    m.tensors.push_back(std::move(t));
  }
  if (!ok) return Corrupt(r.error());
  if (!r.done()) return Corrupt("trailing bytes after the last tensor");
  return m;
}

bool IsValidUtf8(std::string_view text) {
  size_t i = 0;
  while (i < text.size()) {
    const auto c = static_cast<uint8_t>(text[i]);
    if (c < 0x80) {
      ++i;
      continue;
    }
    size_t len = 0;
    uint32_t cp = 0;
    if ((c & 0xe0) == 0xc0) {
      len = 2;
      cp = c & 0x1f;
    } else if ((c & 0xf0) == 0xe0) {
      len = 3;
      cp = c & 0x0f;
    } else if ((c & 0xf8) == 0xf0) {
      len = 4;
      cp = c & 0x07;
    } else {
      return false;
    }
    if (text.size() - i < len) return false;
    for (size_t k = 1; k < len; ++k) {
      const auto cc = static_cast<uint8_t>(text[i + k]);
      if ((cc & 0xc0) != 0x80) return false;
      cp = (cp << 6) | (cc & 0x3f);
    }
    static constexpr uint32_t kMinForLength[5] = {0, 0, 0x80, 0x800, 0x10000};
    if (cp < kMinForLength[len] || cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff)) return false;
    i += len;
  }
  return true;
}

}  // namespace dmoe::storage::format
