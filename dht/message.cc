#include "dht/message.h"

#include <cstring>
#include <nlohmann/json.hpp>

namespace dmoe::dht {
namespace {

using json = nlohmann::json;
using Bytes = json::binary_t;

json Bin(const uint8_t* data, size_t n) {
  return json::binary(std::vector<uint8_t>(data, data + n));
}
json Bin(std::string_view s) { return Bin(reinterpret_cast<const uint8_t*>(s.data()), s.size()); }

json RecordJson(const Record& r) {
  return json::array({r.subkey, Bin(r.value), r.expiration_ms,
                      Bin(r.publisher.data(), r.publisher.size()), r.seq,
                      Bin(r.signature.data(), r.signature.size())});
}

json ToJson(const Message& m) {
  json j = json::object();
  j["v"] = m.version;
  j["n"] = m.network;
  j["t"] = static_cast<int>(m.type);
  j["x"] = m.txid;
  j["s"] = Bin(m.sender.data(), m.sender.size());
  if (m.client) j["c"] = true;
  if (m.announced) j["a"] = Bin(m.announced->ToWire());
  if (m.prove) j["q"] = true;
  if (m.proof) j["p"] = Bin(m.proof->data(), m.proof->size());
  if (m.token) j["o"] = Bin(m.token->data(), m.token->size());
  if (m.padding > 0) j["z"] = json::binary(std::vector<uint8_t>(m.padding, 0));
  auto nodes = [&] {
    json arr = json::array();
    for (const WireContact& c : m.nodes) {
      arr.push_back(json::array({Bin(c.id.data(), c.id.size()), Bin(c.address.ToWire())}));
    }
    return arr;
  };
  auto records = [&] {
    json arr = json::array();
    for (const Record& r : m.records) arr.push_back(RecordJson(r));
    return arr;
  };
  switch (m.type) {
    case MessageType::kPing:
    case MessageType::kPong:
      break;
    case MessageType::kFindNode:
      j["g"] = Bin(m.target.data(), m.target.size());
      break;
    case MessageType::kNodes:
      j["N"] = nodes();
      break;
    case MessageType::kFindValue:
      j["k"] = m.key;
      if (m.cursor) j["u"] = *m.cursor;
      if (m.cursor && m.cursor_publisher) {
        j["U"] = Bin(m.cursor_publisher->data(), m.cursor_publisher->size());
      }
      break;
    case MessageType::kValue:
      j["k"] = m.key;
      if (!m.records.empty() || m.nodes.empty()) {
        j["r"] = records();
        if (m.more) j["m"] = true;
      } else {
        j["N"] = nodes();
      }
      break;
    case MessageType::kStore:
      j["k"] = m.key;
      j["r"] = records();
      break;
    case MessageType::kStoreAck:
    case MessageType::kError:
      j["e"] = static_cast<int>(m.code);
      j["E"] = m.error;
      break;
  }
  return j;
}

// Decoding helpers: each returns false on a type or size mismatch and sets `why`.
struct Reader {
  const json& obj;
  std::string why;

  const json* Find(const char* name) {
    auto it = obj.find(name);
    return it == obj.end() ? nullptr : &*it;
  }
  bool Fail(std::string reason) {
    if (why.empty()) why = std::move(reason);
    return false;
  }
  bool String(const char* name, std::string& out, size_t max_len, bool required = true) {
    const json* v = Find(name);
    if (v == nullptr) return !required || Fail(std::string("missing field '") + name + "'");
    if (!v->is_string()) return Fail(std::string("field '") + name + "' is not a string");
    const auto& s = v->get_ref<const std::string&>();
    if (s.size() > max_len) return Fail(std::string("field '") + name + "' too long");
    out = s;
    return true;
  }
  bool Unsigned(const char* name, uint64_t& out) {
    const json* v = Find(name);
    if (v == nullptr) return Fail(std::string("missing field '") + name + "'");
    return UnsignedValue(*v, name, out);
  }
  bool UnsignedValue(const json& v, const char* name, uint64_t& out) {
    if (v.is_number_unsigned()) {
      out = v.get<uint64_t>();
      return true;
    }
    if (v.is_number_integer() && v.get<int64_t>() >= 0) {
      out = static_cast<uint64_t>(v.get<int64_t>());
      return true;
    }
    return Fail(std::string("field '") + name + "' is not an unsigned integer");
  }
  template <size_t N>
  bool Fixed(const json& v, const char* name, std::array<uint8_t, N>& out) {
    if (!v.is_binary() || v.get_binary().size() != N) {
      return Fail(std::string("field '") + name + "' is not " + std::to_string(N) + " bytes");
    }
    std::memcpy(out.data(), v.get_binary().data(), N);
    return true;
  }
  bool Nodes(std::vector<WireContact>& out) {
    const json* v = Find("N");
    if (v == nullptr || !v->is_array()) return Fail("field 'N' is not an array");
    for (const json& e : *v) {
      if (!e.is_array() || e.size() != 2) return Fail("node entry is not [id, address]");
      WireContact c;
      if (!Fixed(e[0], "N.id", c.id)) return false;
      if (!e[1].is_binary()) return Fail("node address is not binary");
      auto addr = Address::FromWire(e[1].get_binary());
      if (!addr.ok()) return Fail(addr.status().message());
      c.address = *addr;
      out.push_back(c);
    }
    return true;
  }
  bool Records(const std::string& key, std::vector<Record>& out) {
    const json* v = Find("r");
    if (v == nullptr || !v->is_array()) return Fail("field 'r' is not an array");
    for (const json& e : *v) {
      if (!e.is_array() || e.size() != 6) return Fail("record entry is not a 6-element array");
      Record r;
      r.key = key;
      if (!e[0].is_string()) return Fail("record subkey is not a string");
      r.subkey = e[0].get<std::string>();
      if (!e[1].is_binary()) return Fail("record value is not binary");
      const auto& value = e[1].get_binary();
      r.value.assign(reinterpret_cast<const char*>(value.data()), value.size());
      uint64_t exp = 0;
      if (!UnsignedValue(e[2], "record expiration", exp)) return false;
      if (exp > static_cast<uint64_t>(INT64_MAX)) return Fail("record expiration out of range");
      r.expiration_ms = static_cast<int64_t>(exp);
      if (!Fixed(e[3], "record publisher", r.publisher)) return false;
      if (!UnsignedValue(e[4], "record seq", r.seq)) return false;
      if (!Fixed(e[5], "record signature", r.signature)) return false;
      out.push_back(std::move(r));
    }
    return true;
  }
};

bool DecodeInto(const json& j, Message& m, std::string& why) {
  if (!j.is_object()) {
    why = "message is not a map";
    return false;
  }
  Reader rd{j, {}};
  auto done = [&](bool ok) {
    if (!ok) why = rd.why.empty() ? "malformed message" : rd.why;
    return ok;
  };
  uint64_t version = 0, type = 0;
  if (!rd.Unsigned("v", version)) return done(false);
  if (version > 1000) return done(rd.Fail("version out of range"));
  m.version = static_cast<int>(version);
  if (!rd.String("n", m.network, kMaxNetworkNameBytes)) return done(false);
  if (!rd.Unsigned("t", type)) return done(false);
  if (type < 1 || type > 9) return done(rd.Fail("unknown message type " + std::to_string(type)));
  m.type = static_cast<MessageType>(type);
  if (!rd.Unsigned("x", m.txid)) return done(false);
  const json* sender = rd.Find("s");
  if (sender == nullptr) return done(rd.Fail("missing field 's'"));
  if (!rd.Fixed(*sender, "s", m.sender)) return done(false);
  if (const json* c = rd.Find("c")) {
    if (!c->is_boolean()) return done(rd.Fail("field 'c' is not a boolean"));
    m.client = c->get<bool>();
  }
  if (const json* a = rd.Find("a")) {
    if (!a->is_binary()) return done(rd.Fail("field 'a' is not binary"));
    Result<Address> announced = Address::FromWire(a->get_binary());
    if (!announced.ok()) return done(rd.Fail("field 'a': " + announced.status().message()));
    if (announced->port == 0) return done(rd.Fail("field 'a' has port 0"));
    m.announced = *announced;
  }
  if (const json* q = rd.Find("q")) {
    if (!q->is_boolean()) return done(rd.Fail("field 'q' is not a boolean"));
    m.prove = q->get<bool>();
  }
  if (const json* p = rd.Find("p")) {
    Signature proof{};
    if (!rd.Fixed(*p, "p", proof)) return done(false);
    m.proof = proof;
  }
  if (const json* o = rd.Find("o")) {
    Token token{};
    if (!rd.Fixed(*o, "o", token)) return done(false);
    m.token = token;
  }
  if (const json* z = rd.Find("z")) {
    if (!z->is_binary()) return done(rd.Fail("field 'z' is not binary"));
    m.padding = z->get_binary().size();
  }
  switch (m.type) {
    case MessageType::kPing:
    case MessageType::kPong:
      return true;
    case MessageType::kFindNode: {
      const json* g = rd.Find("g");
      if (g == nullptr) return done(rd.Fail("missing field 'g'"));
      return done(rd.Fixed(*g, "g", m.target));
    }
    case MessageType::kNodes:
      return done(rd.Nodes(m.nodes));
    case MessageType::kFindValue: {
      if (!rd.String("k", m.key, kMaxDatagramBytes)) return done(false);
      if (rd.Find("u") != nullptr) {
        std::string cursor;
        if (!rd.String("u", cursor, kMaxDatagramBytes)) return done(false);
        m.cursor = std::move(cursor);
        if (const json* up = rd.Find("U")) {
          PublicKey publisher{};
          if (!rd.Fixed(*up, "U", publisher)) return done(false);
          m.cursor_publisher = publisher;
        }
      }
      return true;
    }
    case MessageType::kValue: {
      if (!rd.String("k", m.key, kMaxDatagramBytes)) return done(false);
      if (rd.Find("r") != nullptr) {
        if (!rd.Records(m.key, m.records)) return done(false);
        if (const json* more = rd.Find("m")) {
          if (!more->is_boolean()) return done(rd.Fail("field 'm' is not a boolean"));
          m.more = more->get<bool>();
        }
        return true;
      }
      return done(rd.Nodes(m.nodes));
    }
    case MessageType::kStore: {
      if (!rd.String("k", m.key, kMaxDatagramBytes)) return done(false);
      if (!rd.Records(m.key, m.records)) return done(false);
      if (m.records.size() != 1) return done(rd.Fail("STORE carries exactly one record"));
      return true;
    }
    case MessageType::kStoreAck:
    case MessageType::kError: {
      uint64_t code = 0;
      if (!rd.Unsigned("e", code)) return done(false);
      if (code > static_cast<uint64_t>(Code::kDeadlineExceeded)) {
        return done(rd.Fail("unknown status code"));
      }
      m.code = static_cast<Code>(code);
      return done(rd.String("E", m.error, kMaxDatagramBytes));
    }
  }
  return done(rd.Fail("unknown message type"));
}

}  // namespace

std::string ProofBytes(uint64_t txid, const PublicKey& requester) {
  std::string out(kProofDomain);
  for (int i = 7; i >= 0; --i) out.push_back(static_cast<char>((txid >> (8 * i)) & 0xff));
  out.append(reinterpret_cast<const char*>(requester.data()), requester.size());
  return out;
}

size_t EncodedRecordSize(const Record& record) {
  std::vector<uint8_t> out;
  json::to_msgpack(RecordJson(record), out);
  return out.size();
}

size_t EncodedSize(const Message& message) {
  std::vector<uint8_t> out;
  json::to_msgpack(ToJson(message), out);
  return out.size();
}

Result<std::string> EncodeMessage(const Message& message) {
  std::string out;
  json::to_msgpack(ToJson(message), out);
  if (out.size() > kMaxDatagramBytes) {
    return PayloadTooLargeError("DHT message of " + std::to_string(out.size()) +
                                " bytes exceeds the datagram limit of " +
                                std::to_string(kMaxDatagramBytes));
  }
  return out;
}

Result<Message> DecodeMessage(std::span<const uint8_t> bytes) {
  if (bytes.size() > kMaxDatagramBytes) {
    return PayloadTooLargeError("datagram of " + std::to_string(bytes.size()) + " bytes");
  }
  try {
    json j = json::from_msgpack(bytes.begin(), bytes.end(), /*strict=*/true,
                                /*allow_exceptions=*/false);
    if (j.is_discarded()) return InvalidArgumentError("not a MessagePack document");
    Message m;
    std::string why;
    if (!DecodeInto(j, m, why)) return InvalidArgumentError(why);
    return m;
  } catch (const std::exception& e) {
    // nlohmann may still throw on some inputs (e.g. invalid binary subtypes); never let it escape.
    return InvalidArgumentError(std::string("malformed message: ") + e.what());
  }
}

std::string EncodeRecordBlob(const Record& record) {
  json j = json::object();
  j["k"] = record.key;
  j["r"] = json::array({RecordJson(record)});
  std::string out;
  json::to_msgpack(j, out);
  return out;
}

Result<Record> DecodeRecordBlob(std::span<const uint8_t> bytes) {
  try {
    json j = json::from_msgpack(bytes.begin(), bytes.end(), true, false);
    if (j.is_discarded() || !j.is_object()) return InvalidArgumentError("record blob is not a map");
    Reader rd{j, {}};
    std::string key;
    std::vector<Record> records;
    if (!rd.String("k", key, kMaxDatagramBytes) || !rd.Records(key, records) ||
        records.size() != 1) {
      return InvalidArgumentError("bad record blob: " + rd.why);
    }
    return records.front();
  } catch (const std::exception& e) {
    return InvalidArgumentError(std::string("bad record blob: ") + e.what());
  }
}

}  // namespace dmoe::dht
