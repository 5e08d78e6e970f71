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
      table_(id_, options_.k),
      store_(options_.store) {
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
      Reply(from, std::move(err));
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

void Node::Reply(const Address& to, Message m) {
  Result<std::string> bytes = EncodeMessage(m);
  if (!bytes.ok()) {
    SPDLOG_WARN("dht: could not encode answer: {}", bytes.status().ToString());
    return;
  }
  ++stats_.datagrams_out;
  transport_.Send(
      to, std::span<const uint8_t>(reinterpret_cast<const uint8_t*>(bytes->data()), bytes->size()));
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

void Node::NoteAnnounced(const NodeId& id, const Address& announced, size_t trigger_bytes) {
  const Contact* known = table_.Find(id);
  if (known != nullptr && known->address == announced) {
    // Verified earlier at that address: the request refreshes the contact without moving it.
    NoteAlive(id, announced, false);
    return;
  }
  if (verifying_.count(announced) != 0 || verifying_.size() >= options_.max_pending_verifications) {
    ++stats_.verifications_skipped;
    return;
  }
  // A reflection bound: the PING is never larger than the request that caused it (its txid is
  // sized as the largest one here, since the real one is drawn in SendRequest).
  Message ping = NewMessage(MessageType::kPing, std::numeric_limits<uint64_t>::max());
  if (EncodedSize(ping) > trigger_bytes) ping.announced.reset();
  if (EncodedSize(ping) > trigger_bytes) {
    ++stats_.verifications_skipped;
    return;
  }
  verifying_.emplace(announced, id);
  ++stats_.verifications_sent;
  SendRequest(
      announced, id, std::move(ping),
      [this, announced](const Message* reply) {
        verifying_.erase(announced);
        // HandleReply checked the key and put the sender in the table at `announced`.
        if (reply != nullptr && reply->type == MessageType::kPong) ++stats_.verifications_passed;
      },
      nullptr, /*verification=*/true);
}

void Node::HandleRequest(const Address& from, const Message& m, size_t datagram_bytes) {
  NodeId sender_id = NodeIdOf(m.sender);
  if (sender_id == id_) return;  // our own datagram looped back
  if (m.announced && *m.announced != from) {
    // The source may be unreachable for others (behind a forward or a relay): answer it, but let
    // only the announced address enter the table, once a PONG from there proves the key.
    if (!m.client) NoteAnnounced(sender_id, *m.announced, datagram_bytes);
  } else {
    NoteAlive(sender_id, from, m.client);
  }
  switch (m.type) {
    case MessageType::kPing:
      Reply(from, NewMessage(MessageType::kPong, m.txid));
      break;
    case MessageType::kFindNode: {
      Message answer = NewMessage(MessageType::kNodes, m.txid);
      for (const Contact& c : table_.Closest(m.target, options_.k + 1)) {
        if (c.id == sender_id || answer.nodes.size() >= options_.k) continue;
        answer.nodes.push_back(WireContact{c.id, c.address});
      }
      Reply(from, std::move(answer));
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
      Reply(from, std::move(answer));
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
      Reply(from, std::move(ack));
      break;
    }
    default:
      break;
  }
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
                       ReplyFn on_reply, std::function<void()> on_stall, bool verification) {
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
  if (m.type != MessageType::kError) NoteAlive(sender_id, from, m.client);
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
