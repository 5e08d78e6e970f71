// One iterative Kademlia lookup (FIND_NODE or FIND_VALUE) as a pure state machine: the Node sends
// the requests it asks for and reports answers, stalls and failures; the Lookup decides whom to ask
// next and when it is done. It does no I/O and reads no clock, so it is tested directly.
//
// Candidates are kept sorted by XOR distance to the target. The "window" is the k closest
// candidates that have neither failed nor stalled. At most `alpha` requests are in flight, each to
// the closest not-yet-asked candidate of the window, and at most one per candidate. A request that
// outlives the soft timeout becomes "stalled": it no longer counts against alpha nor holds a window
// slot, so a dead contact costs one soft timeout instead of the full RPC timeout; its late answer
// is still used.
//
// Done when: (FIND_VALUE) `quorum` candidates answered with records and no pagination is pending;
// or every candidate of the window answered; or nothing is left to ask and nothing is stalled.
//
// Disjoint paths (S/Kademlia): with `paths` = d > 1 the initial candidates are dealt round-robin
// to d paths, a candidate learned from an answer belongs to the path of the node that named it,
// and a node already known to one path is never asked by another. Each path keeps its own window
// (ceil(k / 2) candidates) and its own alpha requests in flight, and the lookup is done when every
// path is (or, for FIND_VALUE, at quorum). So hostile nodes that answer only with each other
// capture at most the paths that reached them, and a key is censored only if every path meets them
// first. Sybil placement: with `max_per_subnet` > 0, at most that many candidates of one /24 (/64)
// are kept (private and loopback addresses exempt unless `limit_private`).
#ifndef DMOE_DHT_LOOKUP_H_
#define DMOE_DHT_LOOKUP_H_

#include <cstdint>
#include <map>
#include <optional>
#include <set>
#include <string>
#include <utility>
#include <vector>

#include "dht/message.h"
#include "dht/node_id.h"
#include "dht/record.h"

namespace dmoe::dht {

class Lookup {
 public:
  enum class Kind { kFindNode, kFindValue };
  enum class State { kNew, kInFlight, kStalled, kResponded, kFailed };

  struct Options {
    size_t k = 20;
    size_t alpha = 3;
    size_t quorum = 1;             // FIND_VALUE: record holders needed to stop early
    size_t max_candidates = 1024;  // farther candidates are forgotten
    size_t paths = 1;              // disjoint paths, at least 1
    size_t max_per_subnet = 0;     // 0 = no limit
    bool limit_private = false;
  };

  // Where a paginated VALUE answer continues: after this (subkey, publisher).
  using Cursor = std::pair<std::string, PublicKey>;

  struct Candidate {
    WireContact contact;
    State state = State::kNew;
    int depth = 1;
    size_t path = 0;
    bool has_records = false;
    std::optional<Cursor> cursor;  // set while a paginated VALUE answer is being fetched
  };

  Lookup(Kind kind, const NodeId& target, std::string key, const NodeId& self, Options options);

  Kind kind() const { return kind_; }
  const NodeId& target() const { return target_; }
  const std::string& key() const { return key_; }

  // Adds a candidate learned at `depth` (1 = from the own routing table), on `path` (nullopt: the
  // next path round-robin). Self and known ids are ignored.
  void AddCandidate(const WireContact& contact, int depth,
                    std::optional<size_t> path = std::nullopt);

  // Candidates to ask now; each is marked in flight. The caller sends one request to each.
  std::vector<WireContact> NextQueries();

  // `id` answered with closer nodes (NODES, or VALUE without records).
  void OnNodes(const NodeId& id, const std::vector<WireContact>& nodes);
  // `id` answered with (already verified) records. Returns the cursor to ask it again with when the
  // answer was paginated (`more`), else nullopt; the candidate stays in flight while paginating.
  std::optional<Cursor> OnRecords(const NodeId& id, const std::vector<Record>& records, bool more);
  void OnStalled(const NodeId& id);
  void OnFailed(const NodeId& id);

  bool Done() const;

  // The window's candidates that answered, closest first (the k closest live nodes at the end of a
  // FIND_NODE lookup).
  std::vector<WireContact> ClosestResponded() const;
  // Merged records by (subkey, publisher): records of one subkey from different publishers are
  // kept side by side; of one publisher's, the higher seq (or the later expiration) wins.
  const std::map<Cursor, Record>& records() const { return records_; }
  void MergeRecord(const Record& record);
  size_t record_holders() const { return record_holders_; }
  size_t responded() const { return responded_; }
  size_t failed() const { return failed_; }
  size_t candidates() const { return candidates_.size(); }
  // The number of sequential rounds (hops) the result needed.
  int Rounds() const;

 private:
  Candidate* FindCandidate(const NodeId& id);
  bool PathDone(size_t path) const;
  // Each path's window: k for one path, else half of k (rounded up). A path whose window hostile
  // nodes fill with record-less answers ends early; the others still reach the honest holders. (k
  // per path, as S/Kademlia has it, costs d times the requests; k / d let 2% of gets miss the
  // record with 20% Sybils in tests/hostile/dht_sybil_test.cc.)
  size_t PathWindow() const {
    return options_.paths <= 1 ? options_.k : std::max<size_t>((options_.k + 1) / 2, 1);
  }

  Kind kind_;
  NodeId target_;
  std::string key_;
  NodeId self_;
  Options options_;
  std::vector<Candidate> candidates_;  // sorted by distance to target_
  std::set<NodeId> known_;
  std::map<Cursor, Record> records_;
  size_t record_holders_ = 0;
  size_t responded_ = 0;
  size_t failed_ = 0;
  int value_depth_ = 0;
  size_t next_path_ = 0;
};

}  // namespace dmoe::dht

#endif  // DMOE_DHT_LOOKUP_H_
