// dht::Node, part 1: datagrams, RPC bookkeeping and serving requests. Lookups, get, put, bootstrap
// and maintenance are in node_ops.cc.
#include "dht/node.h"

#include <spdlog/spdlog.h>

#include <algorithm>
#include <cmath>
#include <limits>

namespace dmoe::dht {

Node::Node(const Identity& identity, Transport& transport, const Clock& clock, NodeOptions options)
    : identity_(identity),
      id_(NodeIdOf(identity.public_key())),
      transport_(transport),
      clock_(clock),
      options_(std::move(options)),
      rng_(options_.seed != 0 ? options_.seed : std::random_device{}()),
      table_(id_, options_.k, options_.sybil),
      store_(options_.store),
      proven_(options_.proven_cache_size) {
  for (auto& b : token_secret_) b = static_cast<uint8_t>(rng_());
  int64_t now = clock_.NowMonotonicUs();
  next_maintenance_us_ = now + 1'000'000;
  next_sweep_us_ = now + options_.sweep_interval_ms * 1000;
  next_republish_us_ = now + options_.republish_interval_ms * 1000;
  next_refresh_us_ = now + options_.refresh_interval_ms * 1000;
}

Node::~Node() = default;

Message Node::NewMessage(MessageType type, uint64_t txid) const {
  Message m;
  m.type = type;
  m.txid = txid;
  m.network = options_.network;
  m.sender = identity_.public_key();
  m.client = options_.client;
  if (IsRequest(type)) m.announced = options_.public_address;
  return m;
}

void Node::OnDatagram(const Address& from, std::span<const uint8_t> bytes) {
  ++stats_.datagrams_in;
  if (bytes.size() > kMaxDatagramBytes) {
    ++stats_.dropped_oversized;
    return;
  }
  Result<Message> decoded = DecodeMessage(bytes);
  if (!decoded.ok()) {
    ++stats_.dropped_malformed;
    SPDLOG_DEBUG("dht: dropped datagram from {}: {}", from.ToString(), decoded.status().message());
    return;
  }
  const Message& m = *decoded;
  if (m.version != kProtocolVersion) {
    ++stats_.dropped_version;
    return;
  }
  if (m.network != options_.network) {
    ++stats_.dropped_foreign_network;
    return;
  }
  if (IsRequest(m.type)) {
    if (RateLimited(from)) {
      ++stats_.dropped_rate_limited;
      Message err = NewMessage(MessageType::kError, m.txid);
      err.code = Code::kResourceExhausted;
      err.error = "too many requests from " + from.HostString();
      // No proof for a flooder: signing is the expensive part.
      Message request = m;
      request.prove = false;
      Answer(from, request, bytes.size(), m.token && TokenValid(*m.token, from), std::move(err));
    } else {
      HandleRequest(from, m, bytes.size());
    }
  } else {
    HandleReply(from, m);
  }
  RunDeferred();
}

bool Node::RateLimited(const Address& from) {
  double rate = options_.requests_per_second_per_address;
  if (rate <= 0) return false;
  int64_t now = clock_.NowMonotonicUs();
  auto [it, inserted] = rate_.try_emplace(from.HostString());
  TokenBucket& b = it->second;
  if (inserted) {
    b.tokens = options_.request_burst_per_address;
  } else {
    b.tokens = std::min(options_.request_burst_per_address,
                        b.tokens + rate * static_cast<double>(now - b.last_us) / 1e6);
  }
  b.last_us = now;
  if (b.tokens < 1) return true;
  b.tokens -= 1;
  return false;
}

size_t Node::Reply(const Address& to, Message m) {
  Result<std::string> bytes = EncodeMessage(m);
  if (!bytes.ok()) {
    SPDLOG_WARN("dht: could not encode answer: {}", bytes.status().ToString());
    return 0;
  }
  ++stats_.datagrams_out;
  transport_.Send(
      to, std::span<const uint8_t>(reinterpret_cast<const uint8_t*>(bytes->data()), bytes->size()));
  return bytes->size();
}

void Node::NoteAlive(const NodeId& id, const Address& from, bool client) {
  if (client || id == id_) return;
  RoutingTable::Update u =
      table_.Seen(id, from, clock_.NowMonotonicUs(), options_.ping_stale_ms * 1000);
  if (u.ping) Ping(*u.ping);
}

void Node::Ping(const Contact& contact) {
  NodeId id = contact.id;
  SendRequest(
      contact.address, id, NewMessage(MessageType::kPing, 0),
      [](const Message*) {
        // Success refreshes the contact through NoteAlive in HandleReply; failure removes it
        // through the RPC timeout, promoting a replacement.
      },
      nullptr);
}

void Node::Challenge(const NodeId& id, const Address& address, size_t trigger_bytes, bool bounded) {
  if (verifying_.count(address) != 0 || verifying_.size() >= options_.max_pending_verifications) {
    ++stats_.verifications_skipped;
    return;
  }
  // The PING is sized with the largest txid, since the real one is drawn in SendRequest.
  Message ping = NewMessage(MessageType::kPing, std::numeric_limits<uint64_t>::max());
  PrepareRequest(address, id, ping);
  if (bounded) {
    // A reflection bound: never larger than the request that caused it. Leave out the own "a"
    // first, then padding (the answer may then lose its token, or its proof: the sender's next
    // request, with the token, tries again).
    if (EncodedSize(ping) > trigger_bytes) ping.announced.reset();
    size_t size = EncodedSize(ping);
    if (size > trigger_bytes && ping.padding > 0) {
      ping.padding -= std::min(ping.padding, size - trigger_bytes);
      if (EncodedSize(ping) > trigger_bytes && ping.padding > 0) ping.padding = 0;
    }
    if (EncodedSize(ping) > trigger_bytes) ping.token.reset();
    if (EncodedSize(ping) > trigger_bytes) {
      ++stats_.verifications_skipped;
      return;
    }
  }
  verifying_.emplace(address, id);
  ++stats_.verifications_sent;
  SendRequest(
      address, id, std::move(ping),
      [this, address, id](const Message*) {
        verifying_.erase(address);
        // HandleReply checked the proof and put the sender in the table at `address`.
        if (proven_.Contains(id, address)) ++stats_.verifications_passed;
      },
      nullptr, /*verification=*/true, /*prepared=*/true);
}

void Node::HandleRequest(const Address& from, const Message& m, size_t datagram_bytes) {
  NodeId sender_id = NodeIdOf(m.sender);
  if (sender_id == id_) return;  // our own datagram looped back
  bool validated = m.token && TokenValid(*m.token, from);
  // The source may be unreachable for others (behind a forward or a relay): then only the
  // announced address may enter the table. Either enters only once proven: a signed answer to our
  // challenge from there, so a sender key copied into a datagram moves nothing.
  bool announced = m.announced && *m.announced != from;
  const Address at = announced ? *m.announced : from;
  bool challenge = false;
  if (!m.client) {
    const Contact* known = table_.Find(sender_id);
    if (proven_.Contains(sender_id, at) || (known != nullptr && known->address == at)) {
      NoteAlive(sender_id, at, false);
    } else {
      challenge = table_.WouldAdd(sender_id, at);
    }
  }
  size_t sent = 0;  // bytes of the answer
  switch (m.type) {
    case MessageType::kPing:
      sent = Answer(from, m, datagram_bytes, validated, NewMessage(MessageType::kPong, m.txid));
      break;
    case MessageType::kFindNode: {
      Message answer = NewMessage(MessageType::kNodes, m.txid);
      for (const Contact& c : table_.Closest(m.target, options_.k + 1)) {
        if (c.id == sender_id || answer.nodes.size() >= options_.k) continue;
        answer.nodes.push_back(WireContact{c.id, c.address});
      }
      sent = Answer(from, m, datagram_bytes, validated, std::move(answer));
      break;
    }
    case MessageType::kFindValue: {
      Message answer = NewMessage(MessageType::kValue, m.txid);
      answer.key = m.key;
      FillValueAnswer(answer, m.key, m.cursor, m.cursor_publisher);
      if (answer.records.empty() && !m.cursor) {
        for (const Contact& c : table_.Closest(KeyIdOf(m.key), options_.k + 1)) {
          if (c.id == sender_id || answer.nodes.size() >= options_.k) continue;
          answer.nodes.push_back(WireContact{c.id, c.address});
        }
      }
      sent = Answer(from, m, datagram_bytes, validated, std::move(answer));
      break;
    }
    case MessageType::kStore: {
      const Record& record = m.records.front();
      RejectReason reason = store_.Put(record, clock_.NowUnixMs(), verified_, from.HostString());
      Message ack = NewMessage(MessageType::kStoreAck, m.txid);
      if (reason != RejectReason::kNone) {
        ++stats_.store_rejected[static_cast<size_t>(reason)];
        Status s = RejectStatus(reason, record);
        ack.code = s.code();
        ack.error = s.message().substr(0, 512);
      }
      sent = Answer(from, m, datagram_bytes, validated, std::move(ack));
      break;
    }
    default:
      break;
  }
  if (challenge) {
    // To an unvalidated source the answer and the challenge together stay within the request's
    // size (a spoofed request draws no more bytes than it carries); a challenge to an announced
    // address, a different host, is bounded by the request's size on its own.
    size_t budget = announced               ? datagram_bytes
                    : validated             ? kMaxDatagramBytes
                    : datagram_bytes > sent ? datagram_bytes - sent
                                            : 0;
    Challenge(sender_id, at, budget, announced || !validated);
  }
}

Token Node::MakeToken(const Address& address, int64_t epoch) const {
  std::string in(reinterpret_cast<const char*>(token_secret_.data()), token_secret_.size());
  in.append(address.ToWire());
  for (int i = 7; i >= 0; --i) in.push_back(static_cast<char>((epoch >> (8 * i)) & 0xff));
  Hash256 h = Blake2b256(std::string_view(in));
  Token t{};
  std::copy_n(h.begin(), t.size(), t.begin());
  return t;
}

bool Node::TokenValid(const Token& token, const Address& address) const {
  int64_t epoch = clock_.NowMonotonicUs() / 1000 / std::max<int64_t>(options_.token_epoch_ms, 1);
  return token == MakeToken(address, epoch) || token == MakeToken(address, epoch - 1);
}

void Node::RememberToken(const Address& address, const Token& token) {
  if (options_.token_cache_size == 0) return;
  auto [it, inserted] =
      tokens_.insert_or_assign(address, HeldToken{token, clock_.NowMonotonicUs()});
  if (!inserted) return;
  token_order_.push_back(address);
  while (token_order_.size() > options_.token_cache_size) {
    tokens_.erase(token_order_.front());
    token_order_.pop_front();
  }
}

void Node::PrepareRequest(const Address& to, const std::optional<NodeId>& expected,
                          Message& m) const {
  // A proof costs the answerer a signature and this node a verification: ask for one only when
  // the answer could put the contact in the table (bootstrap pings, whose id is unknown, always).
  m.prove = !expected || (!proven_.Contains(*expected, to) && table_.WouldAdd(*expected, to));
  m.padding = 0;
  m.token.reset();
  // A token older than one epoch may no longer be valid there; a request that carries an invalid
  // one is unpadded yet answered as unvalidated, cut to its own size, which can drop the fresh
  // token the answer carries too, so the token would never be renewed. Go without it instead.
  auto token = tokens_.find(to);
  if (token != tokens_.end() &&
      clock_.NowMonotonicUs() - token->second.received_us < options_.token_epoch_ms * 1000) {
    m.token = token->second.token;
  }
  // A request announcing another address draws a challenge there that must fit in the request's
  // size: it pays for that room.
  size_t want = m.announced ? kAnnouncingRequestBytes : 0;
  // No token from `to` yet: it answers no more bytes than it receives, so pad the request to the
  // size of the answer wanted (a full datagram for lookups; the proof and a token otherwise).
  bool small_answer = m.type == MessageType::kPing || m.type == MessageType::kStore;
  if (!m.token && !small_answer) want = kMaxDatagramBytes;
  if (!m.token && small_answer) {
    Message answer = NewMessage(
        m.type == MessageType::kPing ? MessageType::kPong : MessageType::kStoreAck, m.txid);
    answer.txid = std::numeric_limits<uint64_t>::max();
    if (m.prove) answer.proof = Signature{};
    answer.token = Token{};
    // + a short refusal message, and a margin; at least the room an announcing request pays for.
    want = std::max(want, EncodedSize(answer) + 8);
  }
  // Sized with the largest txid, since the real one is drawn later.
  Message sized = m;
  sized.txid = std::numeric_limits<uint64_t>::max();
  size_t size = EncodedSize(sized);
  if (size + 6 < want) {  // "z" and a bin header cost up to 6 bytes
    sized.padding = want - size - 6;
    while (sized.padding > 0 && EncodedSize(sized) > want) --sized.padding;
    m.padding = sized.padding;
  }
}

size_t Node::Answer(const Address& from, const Message& request, size_t request_bytes,
                    bool validated, Message answer) {
  if (request.prove) {
    answer.proof = identity_.Sign(std::string_view(ProofBytes(request.txid, request.sender)));
  }
  if (!validated)
    answer.token = MakeToken(
        from, clock_.NowMonotonicUs() / 1000 / std::max<int64_t>(options_.token_epoch_ms, 1));
  if (!validated) {
    // An unproven source may be spoofed: answer it with no more bytes than it sent. Drop records or
    // nodes from the end, then shorten the message, then the token, then the proof.
    size_t size = EncodedSize(answer);
    bool cut = false;
    while (size > request_bytes) {
      cut = true;
      if (!answer.records.empty()) {
        answer.records.pop_back();
        answer.more = true;
      } else if (!answer.nodes.empty()) {
        answer.nodes.pop_back();
      } else if (!answer.error.empty()) {
        answer.error.resize(answer.error.size() -
                            std::min(answer.error.size(), size - request_bytes));
      } else if (answer.token) {
        answer.token.reset();
      } else if (answer.proof) {
        answer.proof.reset();
      } else {
        ++stats_.answers_withheld;
        return 0;
      }
      size = EncodedSize(answer);
    }
    if (cut) ++stats_.answers_truncated;
  }
  return Reply(from, std::move(answer));
}

void Node::FillValueAnswer(Message& answer, const std::string& key,
                           const std::optional<std::string>& cursor,
                           const std::optional<PublicKey>& cursor_publisher) {
  std::vector<const Record*> records =
      store_.Get(key, clock_.NowUnixMs(), cursor, cursor_publisher);
  if (records.empty()) return;
  // Pack whole records while the datagram has room; the client asks again from the last subkey.
  answer.more = true;
  size_t used = EncodedSize(answer) + 3;  // + growth of the array header past 15 entries
  for (const Record* r : records) {
    size_t cost = EncodedRecordSize(*r);
    if (used + cost > kMaxDatagramBytes && !answer.records.empty()) break;
    answer.records.push_back(*r);
    used += cost;
  }
  answer.more = answer.records.size() < records.size();
  while (answer.records.size() > 1 && EncodedSize(answer) > kMaxDatagramBytes) {
    answer.records.pop_back();
    answer.more = true;
  }
}

void Node::SendRequest(const Address& to, const std::optional<NodeId>& expected, Message m,
                       ReplyFn on_reply, std::function<void()> on_stall, bool verification,
                       bool prepared) {
  if (!prepared) PrepareRequest(to, expected, m);
  uint64_t txid;
  do {
    txid = rng_();
  } while (txid == 0 || rpcs_.count(txid) != 0);
  m.txid = txid;
  Result<std::string> bytes = EncodeMessage(m);
  if (!bytes.ok()) {
    SPDLOG_WARN("dht: could not encode request: {}", bytes.status().ToString());
    Defer([cb = std::move(on_reply)] { cb(nullptr); });
    return;
  }
  int64_t now = clock_.NowMonotonicUs();
  Rpc rpc;
  rpc.to = to;
  rpc.expected = expected;
  rpc.bytes = std::move(*bytes);
  rpc.sent_us = now;
  rpc.hard_us = now + options_.rpc_timeout_ms * 1000;
  rpc.timer_us = std::min(now + SoftTimeoutUs(), rpc.hard_us);
  // A verification PING goes out once, so that one request in causes at most one datagram out.
  rpc.retransmits_left = verification ? 0 : options_.retransmits;
  rpc.verification = verification;
  rpc.prove = m.prove;
  if (m.prove) ++stats_.proofs_requested;
  rpc.on_reply = std::move(on_reply);
  rpc.on_stall = std::move(on_stall);
  ++stats_.rpcs_sent;
  ++stats_.datagrams_out;
  transport_.Send(to, std::span<const uint8_t>(reinterpret_cast<const uint8_t*>(rpc.bytes.data()),
                                               rpc.bytes.size()));
  rpc_timers_.emplace(rpc.timer_us, txid);
  rpcs_.emplace(txid, std::move(rpc));
}

int64_t Node::SoftTimeoutUs() const {
  int64_t hard = options_.rpc_timeout_ms * 1000;
  int64_t floor_us = options_.min_soft_timeout_ms * 1000;
  if (srtt_us_ < 0) return std::max(floor_us, hard / 4);  // no sample yet
  double rto = srtt_us_ + std::max(4 * rttvar_us_, static_cast<double>(floor_us));
  return std::clamp(static_cast<int64_t>(rto), floor_us, std::max(floor_us, hard / 2));
}

void Node::HandleReply(const Address& from, const Message& m) {
  auto it = rpcs_.find(m.txid);
  if (it == rpcs_.end() || it->second.to != from) {
    ++stats_.dropped_unsolicited;
    return;
  }
  NodeId sender_id = NodeIdOf(m.sender);
  Rpc rpc = std::move(it->second);
  rpcs_.erase(it);
  rpc_timers_.erase({rpc.timer_us, m.txid});
  if (rpc.expected && *rpc.expected != sender_id) {
    // Whoever answers at that address is not the node we were told about: a stale or bogus contact.
    ++stats_.dropped_wrong_sender;
    // A verification says nothing about where the expected node really is: an announced address
    // is the sender's claim, so it must not evict a contact the table holds elsewhere.
    if (!rpc.verification) table_.Remove(*rpc.expected);
    rpc.on_reply(nullptr);
    return;
  }
  int64_t rtt = clock_.NowMonotonicUs() - rpc.sent_us;
  if (!rpc.stalled && rtt >= 0) {  // Karn: ignore samples of resent requests
    double sample = static_cast<double>(rtt);
    if (srtt_us_ < 0) {
      srtt_us_ = sample;
      rttvar_us_ = sample / 2;
    } else {
      rttvar_us_ = 0.75 * rttvar_us_ + 0.25 * std::abs(srtt_us_ - sample);
      srtt_us_ = 0.875 * srtt_us_ + 0.125 * sample;
    }
  }
  if (m.token) RememberToken(from, *m.token);
  if (rpc.prove) {
    if (m.proof &&
        VerifySignature(m.sender, std::string_view(ProofBytes(m.txid, identity_.public_key())),
                        *m.proof)) {
      ++stats_.proofs_passed;
      proven_.Insert(sender_id, from);
    } else {
      ++stats_.proofs_failed;
    }
  }
  // Only a proven (id, address) pair enters the table: an answer proves the address receives, a
  // signed challenge the key.
  if (m.type != MessageType::kError && proven_.Contains(sender_id, from)) {
    NoteAlive(sender_id, from, m.client);
  }
  rpc.on_reply(&m);
}

void Node::FireRpcTimer(uint64_t txid, int64_t now_us) {
  auto it = rpcs_.find(txid);
  if (it == rpcs_.end()) return;
  Rpc& rpc = it->second;
  if (now_us < rpc.hard_us) {
    // Soft timeout: resend once and let a waiting lookup move on.
    if (rpc.retransmits_left > 0) {
      --rpc.retransmits_left;
      ++stats_.retransmits;
      ++stats_.datagrams_out;
      transport_.Send(rpc.to,
                      std::span<const uint8_t>(reinterpret_cast<const uint8_t*>(rpc.bytes.data()),
                                               rpc.bytes.size()));
    }
    bool first_stall = !rpc.stalled;
    rpc.stalled = true;
    int64_t next =
        rpc.retransmits_left > 0 ? std::min(now_us + SoftTimeoutUs(), rpc.hard_us) : rpc.hard_us;
    rpc.timer_us = next;
    rpc_timers_.emplace(next, txid);
    if (first_stall && rpc.on_stall) rpc.on_stall();
    return;
  }
  Rpc dead = std::move(rpc);
  rpcs_.erase(it);
  ++stats_.rpcs_timed_out;
  if (dead.expected && !dead.verification) table_.Failed(*dead.expected, options_.max_failures);
  dead.on_reply(nullptr);
}

bool Node::AcceptAnswerRecord(const Record& r, const std::string& key) {
  if (r.key != key ||
      CheckRecordShape(r, clock_.NowUnixMs(), options_.store.record) != RejectReason::kNone ||
      !verified_.Verify(r)) {
    ++stats_.records_rejected_in_answers;
    return false;
  }
  return true;
}

void Node::Tick() {
  int64_t now = clock_.NowMonotonicUs();
  while (!rpc_timers_.empty() && rpc_timers_.begin()->first <= now) {
    auto [when, txid] = *rpc_timers_.begin();
    rpc_timers_.erase(rpc_timers_.begin());
    auto it = rpcs_.find(txid);
    if (it == rpcs_.end() || it->second.timer_us != when) continue;
    FireRpcTimer(txid, now);
  }
  while (!lookup_deadlines_.empty() && lookup_deadlines_.begin()->first <= now) {
    uint64_t id = lookup_deadlines_.begin()->second;
    lookup_deadlines_.erase(lookup_deadlines_.begin());
    auto it = lookups_.find(id);
    if (it == lookups_.end()) continue;
    it->second->deadline_hit = true;
    FinishLookup(id);
  }
  if (now >= next_maintenance_us_) {
    next_maintenance_us_ = now + 1'000'000;
    Maintain(now);
  }
  RunDeferred();
}

int64_t Node::NextWakeupUs() const {
  int64_t next = next_maintenance_us_;
  if (!rpc_timers_.empty()) next = std::min(next, rpc_timers_.begin()->first);
  if (!lookup_deadlines_.empty()) next = std::min(next, lookup_deadlines_.begin()->first);
  if (!deferred_.empty()) next = std::min(next, clock_.NowMonotonicUs());
  return next;
}

void Node::Defer(std::function<void()> fn) { deferred_.push_back(std::move(fn)); }

void Node::RunDeferred() {
  if (running_deferred_) return;
  running_deferred_ = true;
  while (!deferred_.empty()) {
    std::vector<std::function<void()>> batch;
    batch.swap(deferred_);
    for (auto& fn : batch) fn();
  }
  running_deferred_ = false;
}

}  // namespace dmoe::dht
