#include "router/swarm.h"

#include <spdlog/spdlog.h>

#include <future>

#include "core/identity.h"
#include "core/uid.h"
#include "dht/announcement.h"

namespace dmoe::router {

SwarmView::SwarmView(dht::Dht& dht, SwarmOptions options, const Clock& clock, net::BufferPool& pool,
                     net::IoContext& io)
    : dht_(dht), options_(options), clock_(clock), http_({.buffer_pool = &pool}, &io) {}

SwarmView::~SwarmView() { Stop(); }

void SwarmView::Watch(const std::string& grid_prefix) {
  std::lock_guard<std::mutex> lock(mu_);
  prefixes_.insert(grid_prefix);
}

void SwarmView::Start() {
  thread_ = std::thread([this] {
    std::unique_lock<std::mutex> lock(run_mu_);
    while (!stopping_) {
      lock.unlock();
      RefreshOnce();
      lock.lock();
      cv_.wait_for(lock, std::chrono::milliseconds(options_.refresh_ms),
                   [this] { return stopping_; });
    }
  });
}

void SwarmView::Stop() {
  {
    std::lock_guard<std::mutex> lock(run_mu_);
    stopping_ = true;
  }
  cv_.notify_all();
  if (thread_.joinable()) thread_.join();
}

std::vector<SwarmExpert> SwarmView::Walk() {
  std::set<std::string> level;
  {
    std::lock_guard<std::mutex> lock(mu_);
    for (const std::string& p : prefixes_) level.insert(p);
  }
  std::set<std::string> uids;
  // Each level asks all its prefixes in one batched get; an entry whose uid lies one index below
  // the prefix names a leaf, any other opens the next level.
  for (size_t depth = 0; depth < kMaxUidIndices && !level.empty(); ++depth) {
    std::vector<std::string> keys;
    for (const std::string& p : level) keys.push_back(dht::PrefixKey(p));
    std::vector<dht::KeyResult> results = dht_.GetManyBlocking(keys, options_.dht_timeout);
    std::set<std::string> next;
    size_t i = 0;
    for (const std::string& p : level) {
      const dht::KeyResult& r = results[i++];
      Result<GridPrefix> gp = ParseGridPrefix(p);
      if (!gp.ok()) continue;
      for (const dht::Record& rec : r.records) {
        Result<dht::PrefixEntry> entry = dht::PrefixEntry::Parse(rec.value);
        Result<ExpertUid> uid =
            entry.ok() ? ParseExpertUid(entry->uid) : Result<ExpertUid>(entry.status());
        if (!uid.ok() || uid->indices.size() <= gp->indices.size()) continue;
        const std::string child = p + rec.subkey;
        if (uid->indices.size() == gp->indices.size() + 1) {
          if (ParseExpertUid(child).ok()) uids.insert(child);
        } else if (ParseGridPrefix(child + ".").ok()) {
          next.insert(child + ".");
        }
      }
    }
    level = std::move(next);
  }
  std::vector<SwarmExpert> found;
  if (uids.empty()) return found;
  std::vector<std::string> keys;
  for (const std::string& uid : uids) keys.push_back(dht::ExpertKey(uid));
  std::vector<dht::KeyResult> results = dht_.GetManyBlocking(keys, options_.dht_timeout);
  size_t i = 0;
  for (const std::string& uid : uids) {
    for (const dht::Record& rec : results[i].records) {
      // A record's subkey names its publisher; one that names another peer is a stranger's
      // forgery of that peer's entry (docs/protocol.md section 6) and is not shown.
      if (rec.subkey != PeerIdOf(rec.publisher)) continue;
      Result<dht::ExpertAnnouncement> a = dht::ExpertAnnouncement::Parse(rec.value);
      if (!a.ok()) continue;
      SwarmExpert e;
      e.uid = uid;
      e.peer_id = rec.subkey;
      e.endpoint = a->endpoint;
      e.expires_at_ms = rec.expiration_ms;
      e.step = a->step;
      e.load = a->load;
      e.type = a->type;
      e.hidden_dim = a->hidden_dim;
      found.push_back(std::move(e));
    }
    ++i;
  }
  return found;
}

namespace {
// A health answer is a small JSON object; a server that sends more is not believed, and cannot
// make the router read (or hold) a large body.
constexpr uint64_t kHealthMaxBodyBytes = 64 << 10;
}  // namespace

void SwarmView::RefreshOnce() {
  std::vector<SwarmExpert> found = Walk();
  // One health check per server, all at once.
  std::map<std::string, std::shared_ptr<std::promise<double>>> checks;
  for (const SwarmExpert& e : found) {
    if (checks.count(e.endpoint)) continue;
    auto promise = std::make_shared<std::promise<double>>();
    checks[e.endpoint] = promise;
    const int64_t start = clock_.NowMonotonicUs();
    http_.Request(
        "GET", e.endpoint + "/v1/health", {}, {},
        std::chrono::steady_clock::now() + options_.health_timeout,
        [this, promise, start](Result<net::Response> r) {
          promise->set_value(r.ok() && r->status == 200 ? (clock_.NowMonotonicUs() - start) / 1000.0
                                                        : -1.0);
        },
        net::RequestOptions{.max_response_body_bytes = kHealthMaxBodyBytes});
  }
  std::map<std::string, double> latency;
  for (auto& [endpoint, promise] : checks) latency[endpoint] = promise->get_future().get();

  const int64_t now = clock_.NowUnixMs();
  const size_t table = dht_.RoutingTableSize();
  std::lock_guard<std::mutex> lock(mu_);
  std::set<std::pair<std::string, std::string>> current;
  for (SwarmExpert& e : found) {
    e.latency_ms = latency[e.endpoint];
    e.status = e.latency_ms >= 0 ? "alive" : "unreachable";
    e.last_seen_ms = now;
    current.insert({e.uid, e.peer_id});
    experts_[{e.uid, e.peer_id}] = std::move(e);
  }
  SwarmPoint point;
  point.t_ms = now;
  double latency_sum = 0;
  int latency_n = 0;
  for (auto it = experts_.begin(); it != experts_.end();) {
    SwarmExpert& e = it->second;
    if (!current.count(it->first)) {
      if (now - e.last_seen_ms > options_.forget_after_ms) {
        it = experts_.erase(it);
        continue;
      }
      e.status = "stale";
      e.latency_ms = -1;
    }
    if (e.status == "alive") {
      ++point.alive;
      latency_sum += e.latency_ms;
      ++latency_n;
    } else if (e.status == "unreachable") {
      ++point.unreachable;
    } else {
      ++point.stale;
    }
    ++it;
  }
  point.health_latency_ms = latency_n ? latency_sum / latency_n : 0;
  history_.push_back(point);
  while (!history_.empty() && now - history_.front().t_ms > options_.history_ms)
    history_.pop_front();
  refreshed_at_ms_ = now;
  routing_table_ = table;
}

SwarmSnapshot SwarmView::Snapshot() const {
  std::lock_guard<std::mutex> lock(mu_);
  SwarmSnapshot s;
  for (const auto& [key, e] : experts_) s.experts.push_back(e);
  s.history.assign(history_.begin(), history_.end());
  s.dht_routing_table = routing_table_;
  s.refreshed_at_ms = refreshed_at_ms_;
  return s;
}

}  // namespace dmoe::router
