// dht::Node: the single-threaded Kademlia protocol core.
//
// The Node owns the routing table, the record store, its own published records, the pending RPCs
// and the running lookups. It never blocks, sleeps or reads the system clock: time comes from the
// injected Clock, datagrams arrive through OnDatagram, go out through the Transport, and timers run
// when the driver calls Tick() at (or after) NextWakeupUs(). Every method must be called from one
// thread (or strand). Callbacks passed to GetMany/Put/Bootstrap run on that thread, after the call
// that completed them has finished its own work, so they may call back into the Node.
//
// Trust model (see also dht/dht.h and PROTOCOL section 6): records are signed, so a node can lie
// only about routing. A reply is accepted only from the address the request went to and with the
// request's random 64-bit transaction id, and its sender key must hash to the node id the request
// was meant for, so an off-path attacker cannot inject answers. An (id, address) pair enters the
// routing table only once proven: the request asked for a proof ("q") and the answer signed the
// txid and this node's key with the id's key ("p"). A request from an unproven sender enters
// nothing; it draws a challenge PING to the sender (or to its announced address, "a"), within the
// request's byte budget when the source has no valid token. Datagrams are otherwise not signed:
// proofs are asked only of pairs that could enter the table and cached, so each pair costs one
// signature and one verification.
#ifndef DMOE_DHT_NODE_H_
#define DMOE_DHT_NODE_H_

#include <array>
#include <cstdint>
#include <deque>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <random>
#include <set>
#include <string>
#include <unordered_map>
#include <vector>

#include "core/clock.h"
#include "core/identity.h"
#include "core/status.h"
#include "dht/lookup.h"
#include "dht/message.h"
#include "dht/record.h"
#include "dht/routing_table.h"
#include "dht/store.h"
#include "dht/transport.h"
#include "dht/types.h"

namespace dmoe::dht {

class Node {
 public:
  using GetCallback = std::function<void(std::vector<KeyResult>)>;
  // OK with the number of remote nodes that stored the record.
  using PutCallback = std::function<void(Result<int>)>;
  using DoneCallback = std::function<void(Status)>;

  Node(const Identity& identity, Transport& transport, const Clock& clock, NodeOptions options);
  ~Node();
  Node(const Node&) = delete;
  Node& operator=(const Node&) = delete;

  void OnDatagram(const Address& from, std::span<const uint8_t> bytes);
  void Tick();
  // Monotonic microseconds (Clock::NowMonotonicUs) at which Tick has work to do.
  int64_t NextWakeupUs() const;

  // Pings `seeds`, then looks up the own id (and refreshes every bucket when join_refresh). `done`
  // gets OK once joined, kUnavailable when no seed answered. While the routing table is empty the
  // node keeps pinging the seeds every few seconds.
  void Bootstrap(std::vector<Address> seeds, DoneCallback done);

  // Iterative FIND_NODE: the k closest live nodes to `target` (closest first), with the rounds and
  // RPCs the lookup took.
  using FindNodeCallback = std::function<void(std::vector<WireContact>, int rounds, int rpcs)>;
  void FindNode(const NodeId& target, FindNodeCallback done);

  // Looks up every key concurrently; `done` gets one result per key, in order, by `timeout_ms`.
  void GetMany(std::vector<std::string> keys, int64_t timeout_ms, GetCallback done);

  // Signs (key, subkey, value) with a seq above every earlier one of this node and an expiration
  // `ttl_ms` from now, stores it on the k nearest nodes, and re-stores it every
  // republish_interval_ms until it expires. kInvalidArgument / kPayloadTooLarge for a record that
  // breaks the rules, kUnavailable when no node could be reached (the record is still kept and
  // republished).
  void Put(std::string key, std::string subkey, std::string value, int64_t ttl_ms,
           PutCallback done);
  // Stores an already-signed record on the k nearest nodes once (no republish).
  void StoreRecord(Record record, PutCallback done);

  // State for persistence (dht/persistence.h) and inspection.
  std::vector<Contact> Contacts() const { return table_.AllContacts(); }
  std::vector<Record> OwnRecords() const;
  void RestoreOwnRecords(const std::vector<Record>& records);

  const NodeId& id() const { return id_; }
  const Identity& identity() const { return identity_; }
  const NodeStats& stats() const { return stats_; }
  const RoutingTable& routing_table() const { return table_; }
  bool Proven(const NodeId& id, const Address& address) const {
    return proven_.Contains(id, address);
  }
  const RecordStore& store() const { return store_; }
  const NodeOptions& options() const { return options_; }
  size_t pending_rpcs() const { return rpcs_.size(); }
  size_t running_lookups() const { return lookups_.size(); }

 private:
  using ReplyFn = std::function<void(const Message*)>;  // nullptr: the RPC failed
  struct Rpc {
    Address to;
    std::optional<NodeId> expected;  // nullopt only for bootstrap pings to unknown nodes
    std::string bytes;               // kept for retransmission
    int64_t sent_us = 0;
    int64_t timer_us = 0;  // the pending entry in rpc_timers_
    int64_t hard_us = 0;
    int retransmits_left = 0;
    bool stalled = false;
    // A PING to an announced address: sent once, and its failure or a wrong key says nothing about
    // the contact `expected` may already be in the table at another address.
    bool verification = false;
    bool prove = false;  // the request asked for a proof ("q")
    ReplyFn on_reply;
    std::function<void()> on_stall;
  };
  struct LookupRun {
    std::unique_ptr<Lookup> lookup;
    std::function<void(LookupRun&)> on_done;
    int rpcs = 0;
    int64_t start_us = 0;
    int64_t deadline_us = 0;
    bool deadline_hit = false;
  };
  struct Batch {
    std::vector<KeyResult> results;
    size_t remaining = 0;
    GetCallback done;
  };

  // node.cc: datagrams, RPCs, serving requests.
  void HandleRequest(const Address& from, const Message& m, size_t datagram_bytes);
  void HandleReply(const Address& from, const Message& m);
  bool RateLimited(const Address& from);
  size_t Reply(const Address& to, Message m);  // the bytes sent
  // Answers `request` (of `request_bytes`, from `from`) with `answer`: signs the proof when asked,
  // hands out a token, and keeps the answer within the request's size unless `validated` (the
  // request carried a valid token for `from`).
  // Returns the bytes sent (0: withheld).
  size_t Answer(const Address& from, const Message& request, size_t request_bytes, bool validated,
                Message answer);
  // Sets the challenge, token and padding of a request to `to`.
  void PrepareRequest(const Address& to, const std::optional<NodeId>& expected, Message& m) const;
  Token MakeToken(const Address& address, int64_t epoch) const;
  bool TokenValid(const Token& token, const Address& address) const;
  void RememberToken(const Address& address, const Token& token);
  Message NewMessage(MessageType type, uint64_t txid) const;
  void SendRequest(const Address& to, const std::optional<NodeId>& expected, Message m,
                   ReplyFn on_reply, std::function<void()> on_stall, bool verification = false,
                   bool prepared = false);
  void FireRpcTimer(uint64_t txid, int64_t now_us);
  int64_t SoftTimeoutUs() const;
  void NoteAlive(const NodeId& id, const Address& from, bool client);
  // A request from `id` that wants it in the table at `address`: enters at once when the pair is
  // proven, else a challenge PING goes there (bounded: see PROTOCOL section 6). `bounded`: the PING
  // must be no larger than the request (`trigger_bytes`).
  void Challenge(const NodeId& id, const Address& address, size_t trigger_bytes, bool bounded);
  void Ping(const Contact& contact);
  void FillValueAnswer(Message& answer, const std::string& key,
                       const std::optional<std::string>& cursor,
                       const std::optional<PublicKey>& cursor_publisher);
  bool AcceptAnswerRecord(const Record& r, const std::string& key);

  // node_ops.cc: lookups, get, put, bootstrap, maintenance.
  uint64_t StartLookup(Lookup::Kind kind, const NodeId& target, std::string key,
                       int64_t deadline_us, std::function<void(LookupRun&)> on_done);
  void AdvanceLookup(uint64_t lookup_id);
  void QueryCandidate(uint64_t lookup_id, const WireContact& contact,
                      std::optional<Lookup::Cursor> cursor);
  void FinishLookup(uint64_t lookup_id);
  void FinishKey(const std::shared_ptr<Batch>& batch, size_t index, LookupRun* run);
  void StoreOn(const std::vector<WireContact>& targets, const Record& record, PutCallback done);
  void Maintain(int64_t now_us);
  void Defer(std::function<void()> fn);
  void RunDeferred();

  Identity identity_;
  NodeId id_;
  Transport& transport_;
  const Clock& clock_;
  NodeOptions options_;
  std::mt19937_64 rng_;
  RoutingTable table_;
  RecordStore store_;
  VerifiedCache verified_;
  ProvenCache proven_;
  std::array<uint8_t, 32> token_secret_{};
  // Tokens others gave this node, by their address, with when each came (monotonic us). A token
  // is used for one token epoch after it came, the least its giver honours it (TokenValid: the
  // epoch it was made in and the next); after that requests go without it, padded, and draw a
  // fresh one.
  struct HeldToken {
    Token token;
    int64_t received_us = 0;
  };
  std::map<Address, HeldToken> tokens_;
  std::deque<Address> token_order_;
  NodeStats stats_;

  std::unordered_map<uint64_t, Rpc> rpcs_;
  std::set<std::pair<int64_t, uint64_t>> rpc_timers_;  // (when, txid)
  double srtt_us_ = -1;
  double rttvar_us_ = 0;

  std::unordered_map<uint64_t, std::unique_ptr<LookupRun>> lookups_;
  std::set<std::pair<int64_t, uint64_t>> lookup_deadlines_;  // (when, lookup id)
  uint64_t next_lookup_id_ = 1;

  std::map<std::pair<std::string, std::string>, Record> own_records_;
  uint64_t last_seq_ = 0;

  struct TokenBucket {
    double tokens = 0;
    int64_t last_us = 0;
  };
  std::unordered_map<std::string, TokenBucket> rate_;
  // Announced addresses with a verification PING in flight, and the id expected to answer there.
  std::map<Address, NodeId> verifying_;

  int64_t next_maintenance_us_ = 0;
  int64_t next_sweep_us_ = 0;
  int64_t next_republish_us_ = 0;
  int64_t next_refresh_us_ = 0;
  // Seeds of the last Bootstrap, retried while the routing table is empty.
  std::vector<Address> seeds_;
  int64_t next_rebootstrap_us_ = 0;

  std::vector<std::function<void()>> deferred_;
  bool running_deferred_ = false;
};

}  // namespace dmoe::dht

#endif  // DMOE_DHT_NODE_H_
