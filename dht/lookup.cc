#include "dht/lookup.h"

#include <algorithm>

namespace dmoe::dht {

Lookup::Lookup(Kind kind, const NodeId& target, std::string key, const NodeId& self,
               Options options)
    : kind_(kind), target_(target), key_(std::move(key)), self_(self), options_(options) {
  options_.paths = std::max<size_t>(options_.paths, 1);
}

Lookup::Candidate* Lookup::FindCandidate(const NodeId& id) {
  for (Candidate& c : candidates_) {
    if (c.contact.id == id) return &c;
  }
  return nullptr;
}

void Lookup::AddCandidate(const WireContact& contact, int depth, std::optional<size_t> path) {
  if (contact.id == self_ || known_.count(contact.id) != 0) return;
  if (options_.max_per_subnet > 0 &&
      (options_.limit_private || !contact.address.IsLocalOrPrivate())) {
    size_t same = 0;
    for (const Candidate& c : candidates_) same += c.contact.address.SameSubnet(contact.address);
    if (same >= options_.max_per_subnet) return;
  }
  known_.insert(contact.id);
  auto pos = std::lower_bound(
      candidates_.begin(), candidates_.end(), contact.id,
      [&](const Candidate& c, const NodeId& id) { return Closer(target_, c.contact.id, id); });
  if (static_cast<size_t>(pos - candidates_.begin()) >= options_.max_candidates) return;
  Candidate c;
  c.contact = contact;
  c.depth = depth;
  c.path = path ? *path % options_.paths : next_path_++ % options_.paths;
  candidates_.insert(pos, std::move(c));
  if (candidates_.size() > options_.max_candidates) {
    // Only never-asked candidates are forgotten, so answers always find their candidate.
    for (auto it = candidates_.end(); it != candidates_.begin();) {
      --it;
      if (it->state == State::kNew) {
        candidates_.erase(it);
        break;
      }
    }
  }
}

std::vector<WireContact> Lookup::NextQueries() {
  std::vector<WireContact> out;
  if (Done()) return out;
  size_t path_window = PathWindow();
  for (size_t path = 0; path < options_.paths; ++path) {
    size_t in_flight = 0;
    for (const Candidate& c : candidates_)
      in_flight += c.path == path && c.state == State::kInFlight;
    size_t window = 0;
    for (Candidate& c : candidates_) {
      if (in_flight >= options_.alpha || window >= path_window) break;
      if (c.path != path || c.state == State::kFailed || c.state == State::kStalled) continue;
      ++window;
      if (c.state == State::kNew) {
        c.state = State::kInFlight;
        ++in_flight;
        out.push_back(c.contact);
      }
    }
  }
  return out;
}

void Lookup::OnNodes(const NodeId& id, const std::vector<WireContact>& nodes) {
  Candidate* c = FindCandidate(id);
  if (c == nullptr || c->state == State::kResponded || c->state == State::kFailed) return;
  c->state = State::kResponded;
  c->cursor.reset();
  int depth = c->depth + 1;
  size_t path = c->path;
  ++responded_;
  for (const WireContact& n : nodes) AddCandidate(n, depth, path);
}

std::optional<Lookup::Cursor> Lookup::OnRecords(const NodeId& id,
                                                const std::vector<Record>& records, bool more) {
  Candidate* c = FindCandidate(id);
  if (c == nullptr || c->state == State::kResponded || c->state == State::kFailed) {
    return std::nullopt;
  }
  for (const Record& r : records) MergeRecord(r);
  if (!c->has_records) {
    c->has_records = true;
    ++record_holders_;
    if (record_holders_ <= options_.quorum) value_depth_ = std::max(value_depth_, c->depth);
  }
  if (more && !records.empty()) {
    c->state = State::kInFlight;
    c->cursor = Cursor{records.back().subkey, records.back().publisher};
    return c->cursor;
  }
  c->state = State::kResponded;
  c->cursor.reset();
  ++responded_;
  return std::nullopt;
}

void Lookup::OnStalled(const NodeId& id) {
  Candidate* c = FindCandidate(id);
  if (c != nullptr && c->state == State::kInFlight && !c->cursor) c->state = State::kStalled;
}

void Lookup::OnFailed(const NodeId& id) {
  Candidate* c = FindCandidate(id);
  if (c == nullptr || c->state == State::kResponded || c->state == State::kFailed) return;
  c->state = State::kFailed;
  c->cursor.reset();
  ++failed_;
}

bool Lookup::PathDone(size_t path) const {
  bool stalled = false;
  size_t window = 0;
  for (const Candidate& c : candidates_) {
    if (c.path != path) continue;
    if (c.cursor.has_value()) return false;
    stalled |= c.state == State::kStalled;
    if (window >= PathWindow()) continue;
    if (c.state == State::kFailed || c.state == State::kStalled) continue;
    ++window;
    if (c.state != State::kResponded) return false;
  }
  // The whole window answered. An empty window with stalled requests may still hear back.
  return window > 0 || !stalled;
}

bool Lookup::Done() const {
  bool paginating = false;
  for (const Candidate& c : candidates_) paginating |= c.cursor.has_value();
  if (kind_ == Kind::kFindValue && record_holders_ >= options_.quorum && !paginating) return true;
  for (size_t path = 0; path < options_.paths; ++path) {
    if (!PathDone(path)) return false;
  }
  return true;
}

std::vector<WireContact> Lookup::ClosestResponded() const {
  std::vector<WireContact> out;
  for (const Candidate& c : candidates_) {
    if (out.size() >= options_.k) break;
    if (c.state == State::kResponded) out.push_back(c.contact);
  }
  return out;
}

void Lookup::MergeRecord(const Record& record) {
  // Per (subkey, publisher): a stranger's record of a subkey never replaces another publisher's,
  // whatever its expiration; the reader sees both and decides (PROTOCOL section 6).
  auto [it, inserted] = records_.emplace(Cursor{record.subkey, record.publisher}, record);
  if (inserted) return;
  if (DecideReplace(it->second, record) == ReplaceDecision::kReplace) it->second = record;
}

int Lookup::Rounds() const {
  if (value_depth_ > 0) return value_depth_;
  int rounds = 0;
  size_t seen = 0;
  for (const Candidate& c : candidates_) {
    if (seen >= options_.k) break;
    if (c.state != State::kResponded) continue;
    ++seen;
    rounds = std::max(rounds, c.depth);
  }
  return rounds;
}

}  // namespace dmoe::dht
