// dht::Node, part 2: iterative lookups, get, put, bootstrap and periodic maintenance.
#include <spdlog/spdlog.h>

#include <algorithm>

#include "dht/node.h"

namespace dmoe::dht {

uint64_t Node::StartLookup(Lookup::Kind kind, const NodeId& target, std::string key,
                           int64_t deadline_us, std::function<void(LookupRun&)> on_done) {
  uint64_t id = next_lookup_id_++;
  auto run = std::make_unique<LookupRun>();
  Lookup::Options lo;
  lo.k = options_.k;
  lo.alpha = options_.alpha;
  lo.quorum = options_.get_quorum;
  // Gets run over disjoint paths, so nodes that answer only with each other cannot censor a key;
  // FIND_NODE (which picks where a put stores) keeps one path with a window of k, to find the
  // true k closest.
  lo.paths = kind == Lookup::Kind::kFindValue ? options_.disjoint_paths : 1;
  lo.max_per_subnet = options_.sybil.per_subnet_per_bucket;
  lo.limit_private = options_.sybil.on_private;
  run->lookup = std::make_unique<Lookup>(kind, target, std::move(key), id_, lo);
  run->on_done = std::move(on_done);
  run->start_us = clock_.NowMonotonicUs();
  run->deadline_us = deadline_us;
  for (const Contact& c : table_.Closest(target, options_.k)) {
    run->lookup->AddCandidate(WireContact{c.id, c.address}, 1);
  }
  lookups_.emplace(id, std::move(run));
  if (deadline_us > 0) lookup_deadlines_.emplace(deadline_us, id);
  AdvanceLookup(id);
  return id;
}

void Node::AdvanceLookup(uint64_t lookup_id) {
  auto it = lookups_.find(lookup_id);
  if (it == lookups_.end()) return;
  Lookup& lookup = *it->second->lookup;
  for (const WireContact& c : lookup.NextQueries()) QueryCandidate(lookup_id, c, std::nullopt);
  // QueryCandidate may fail synchronously only through Defer, so the run is still here.
  if (lookup.Done()) FinishLookup(lookup_id);
}

void Node::QueryCandidate(uint64_t lookup_id, const WireContact& contact,
                          std::optional<Lookup::Cursor> cursor) {
  auto it = lookups_.find(lookup_id);
  if (it == lookups_.end()) return;
  LookupRun& run = *it->second;
  const Lookup& lookup = *run.lookup;
  Message m;
  bool paginating = cursor.has_value();
  if (lookup.kind() == Lookup::Kind::kFindNode) {
    m = NewMessage(MessageType::kFindNode, 0);
    m.target = lookup.target();
  } else {
    m = NewMessage(MessageType::kFindValue, 0);
    m.key = lookup.key();
    if (cursor) {
      m.cursor = std::move(cursor->first);
      m.cursor_publisher = cursor->second;
    }
  }
  ++run.rpcs;
  NodeId peer = contact.id;
  auto on_reply = [this, lookup_id, contact, paginating](const Message* reply) {
    auto it = lookups_.find(lookup_id);
    if (it == lookups_.end()) return;
    Lookup& lk = *it->second->lookup;
    if (reply == nullptr || reply->type == MessageType::kError) {
      lk.OnFailed(contact.id);
    } else if (lk.kind() == Lookup::Kind::kFindNode && reply->type == MessageType::kNodes) {
      lk.OnNodes(contact.id, reply->nodes);
    } else if (lk.kind() == Lookup::Kind::kFindValue && reply->type == MessageType::kValue) {
      std::vector<Record> valid;
      for (const Record& r : reply->records) {
        if (AcceptAnswerRecord(r, lk.key())) valid.push_back(r);
      }
      if (!valid.empty() || paginating) {
        std::optional<Lookup::Cursor> next = lk.OnRecords(contact.id, valid, reply->more);
        if (next) QueryCandidate(lookup_id, contact, std::move(next));
      } else {
        lk.OnNodes(contact.id, reply->nodes);
      }
    } else {
      lk.OnFailed(contact.id);
    }
    AdvanceLookup(lookup_id);
  };
  auto on_stall = [this, lookup_id, peer] {
    auto it = lookups_.find(lookup_id);
    if (it == lookups_.end()) return;
    it->second->lookup->OnStalled(peer);
    AdvanceLookup(lookup_id);
  };
  SendRequest(contact.address, contact.id, std::move(m), std::move(on_reply), std::move(on_stall));
}

void Node::FinishLookup(uint64_t lookup_id) {
  auto it = lookups_.find(lookup_id);
  if (it == lookups_.end()) return;
  std::unique_ptr<LookupRun> run = std::move(it->second);
  lookups_.erase(it);
  if (run->deadline_us > 0) lookup_deadlines_.erase({run->deadline_us, lookup_id});
  if (run->on_done) run->on_done(*run);
}

void Node::FindNode(const NodeId& target, FindNodeCallback done) {
  StartLookup(Lookup::Kind::kFindNode, target, "", 0, [this, done](LookupRun& run) {
    if (!done) return;
    Defer([done, nodes = run.lookup->ClosestResponded(), rounds = run.lookup->Rounds(),
           rpcs = run.rpcs] { done(nodes, rounds, rpcs); });
  });
  RunDeferred();
}

void Node::GetMany(std::vector<std::string> keys, int64_t timeout_ms, GetCallback done) {
  auto batch = std::make_shared<Batch>();
  batch->results.resize(keys.size());
  batch->remaining = keys.size();
  batch->done = std::move(done);
  int64_t now_us = clock_.NowMonotonicUs();
  int64_t now_ms = clock_.NowUnixMs();
  int64_t deadline = now_us + std::max<int64_t>(timeout_ms, 1) * 1000;
  for (size_t i = 0; i < keys.size(); ++i) {
    KeyResult& result = batch->results[i];
    result.key = keys[i];
    if (keys[i].empty() || keys[i].size() > options_.store.record.max_key_bytes) {
      result.status = InvalidArgumentError("DHT key must be 1.." +
                                           std::to_string(options_.store.record.max_key_bytes) +
                                           " bytes, got " + std::to_string(keys[i].size()));
      if (--batch->remaining == 0 && batch->done) {
        Defer([batch] { batch->done(std::move(batch->results)); });
      }
      continue;
    }
    if (table_.size() == 0) {
      // A node with no peers answers from what it has. (A node with peers looks up even when it
      // holds records of the key: anyone may have stored an old record here, so its own copy is
      // merged with the others', not trusted alone.)
      std::vector<const Record*> local = store_.Get(keys[i], now_ms, std::nullopt);
      auto lookup = std::make_unique<Lookup>(Lookup::Kind::kFindValue, KeyIdOf(keys[i]), keys[i],
                                             id_, Lookup::Options{});
      for (const Record* r : local) lookup->MergeRecord(*r);
      LookupRun run;
      run.lookup = std::move(lookup);
      FinishKey(batch, i, &run);
      continue;
    }
    StartLookup(Lookup::Kind::kFindValue, KeyIdOf(keys[i]), keys[i], deadline,
                [this, batch, i](LookupRun& run) { FinishKey(batch, i, &run); });
  }
  if (keys.empty() && batch->done) Defer([batch] { batch->done({}); });
  RunDeferred();
}

void Node::FinishKey(const std::shared_ptr<Batch>& batch, size_t index, LookupRun* run) {
  KeyResult& result = batch->results[index];
  Lookup& lookup = *run->lookup;
  int64_t now_ms = clock_.NowUnixMs();
  // Own records are always part of the answer: the publisher knows them best. So are the records
  // this node holds for others, merged like any node's answer.
  for (auto it = own_records_.lower_bound({result.key, std::string()});
       it != own_records_.end() && it->first.first == result.key; ++it) {
    lookup.MergeRecord(it->second);
  }
  for (const Record* r : store_.Get(result.key, now_ms, std::nullopt)) lookup.MergeRecord(*r);
  result.records.clear();
  for (const auto& [slot, record] : lookup.records()) {
    if (record.expiration_ms > now_ms) result.records.push_back(record);
  }
  result.rounds = lookup.Rounds();
  result.rpcs = run->rpcs;
  if (!result.records.empty()) {
    result.status = Status::Ok();
  } else if (table_.size() == 0 && run->rpcs == 0) {
    result.status = UnavailableError("no DHT peer is known, and this node holds no record of '" +
                                     result.key + "'");
  } else if (run->deadline_hit) {
    result.status =
        DeadlineExceededError("DHT get of '" + result.key + "' found nothing before its deadline");
  } else if (lookup.responded() == 0) {
    result.status = UnavailableError("none of the " + std::to_string(lookup.failed()) +
                                     " DHT nodes asked for '" + result.key + "' answered");
  } else {
    result.status = NotFoundError("no record of '" + result.key + "' on the " +
                                  std::to_string(lookup.responded()) + " closest DHT nodes");
  }
  if (--batch->remaining == 0 && batch->done) {
    Defer([batch] { batch->done(std::move(batch->results)); });
  }
}

void Node::Put(std::string key, std::string subkey, std::string value, int64_t ttl_ms,
               PutCallback done) {
  auto fail = [&](Status s) {
    if (done) Defer([done, s] { done(s); });
    RunDeferred();
  };
  if (ttl_ms <= 0 || ttl_ms > kMaxTtlMs) {
    return fail(InvalidArgumentError("DHT record ttl must be 1.." + std::to_string(kMaxTtlMs) +
                                     " ms, got " + std::to_string(ttl_ms)));
  }
  int64_t now_ms = clock_.NowUnixMs();
  uint64_t seq = std::max<uint64_t>(static_cast<uint64_t>(now_ms), last_seq_ + 1);
  Record record = SignRecord(identity_, std::move(key), std::move(subkey), std::move(value),
                             now_ms + ttl_ms, seq);
  RejectReason shape = CheckRecordShape(record, now_ms, options_.store.record);
  if (shape != RejectReason::kNone) return fail(RejectStatus(shape, record));
  last_seq_ = seq;
  own_records_[{record.key, record.subkey}] = record;
  StoreRecord(std::move(record), std::move(done));
}

void Node::StoreRecord(Record record, PutCallback done) {
  if (table_.size() == 0) {
    if (done) {
      Defer([done] {
        done(
            UnavailableError("no DHT peer is known; the record is kept and stored when peers "
                             "appear"));
      });
    }
    RunDeferred();
    return;
  }
  NodeId target = KeyIdOf(record.key);
  StartLookup(
      Lookup::Kind::kFindNode, target, "", 0,
      [this, record = std::move(record), done = std::move(done), target](LookupRun& run) mutable {
        std::vector<WireContact> targets = run.lookup->ClosestResponded();
        // The node itself belongs to the k closest when it beats the farthest target.
        if (targets.size() < options_.k || Closer(target, id_, targets.back().id)) {
          if (targets.size() >= options_.k) targets.pop_back();
          RejectReason r = store_.Put(record, clock_.NowUnixMs(), verified_);
          if (r != RejectReason::kNone) {
            ++stats_.store_rejected[static_cast<size_t>(r)];
          }
        }
        StoreOn(targets, record, std::move(done));
      });
  RunDeferred();
}

void Node::StoreOn(const std::vector<WireContact>& targets, const Record& record,
                   PutCallback done) {
  struct State {
    size_t pending = 0;
    int stored = 0;
    Status first_error;
    PutCallback done;
  };
  auto state = std::make_shared<State>();
  state->pending = targets.size();
  state->done = std::move(done);
  auto finish = [this, state] {
    if (!state->done) return;
    Result<int> result = state->stored > 0 ? Result<int>(state->stored)
                         : !state->first_error.ok()
                             ? Result<int>(state->first_error)
                             : Result<int>(UnavailableError("no DHT node acknowledged the store"));
    Defer([done = std::move(state->done), result] { done(result); });
  };
  if (targets.empty()) {
    finish();
    return;
  }
  Message m = NewMessage(MessageType::kStore, 0);
  m.key = record.key;
  m.records.push_back(record);
  for (const WireContact& c : targets) {
    SendRequest(
        c.address, c.id, m,
        [state, finish](const Message* reply) {
          if (reply != nullptr && reply->type == MessageType::kStoreAck &&
              reply->code == Code::kOk) {
            ++state->stored;
          } else if (reply != nullptr && state->first_error.ok()) {
            Code code = reply->code == Code::kOk ? Code::kInternal : reply->code;
            state->first_error = Status(code, reply->error);
          }
          if (--state->pending == 0) finish();
        },
        nullptr);
  }
}

void Node::Bootstrap(std::vector<Address> seeds, DoneCallback done) {
  auto join = [this, done] {
    if (table_.size() == 0) {
      if (done) Defer([done] { done(UnavailableError("no DHT bootstrap node answered")); });
      return;
    }
    StartLookup(Lookup::Kind::kFindNode, id_, "", 0, [this, done](LookupRun&) {
      // A node that restarted with saved records puts them back now rather than a period later.
      int64_t now_ms = clock_.NowUnixMs();
      for (const auto& [k, record] : own_records_) {
        if (record.expiration_ms > now_ms) StoreRecord(record, nullptr);
      }
      if (options_.join_refresh) {
        for (const NodeId& t : table_.AllBucketTargets(rng_)) {
          StartLookup(Lookup::Kind::kFindNode, t, "", 0, nullptr);
        }
      }
      if (done) Defer([done] { done(Status::Ok()); });
    });
  };
  if (seeds.empty()) {
    join();
    RunDeferred();
    return;
  }
  seeds_ = seeds;
  auto pending = std::make_shared<size_t>(seeds.size());
  for (const Address& seed : seeds) {
    SendRequest(
        seed, std::nullopt, NewMessage(MessageType::kPing, 0),
        [pending, join](const Message*) {
          if (--*pending == 0) join();
        },
        nullptr);
  }
  RunDeferred();
}

std::vector<Record> Node::OwnRecords() const {
  std::vector<Record> out;
  for (const auto& [k, r] : own_records_) out.push_back(r);
  return out;
}

void Node::RestoreOwnRecords(const std::vector<Record>& records) {
  int64_t now_ms = clock_.NowUnixMs();
  for (const Record& r : records) {
    if (r.expiration_ms <= now_ms || r.publisher != identity_.public_key()) continue;
    own_records_[{r.key, r.subkey}] = r;
    last_seq_ = std::max(last_seq_, r.seq);
  }
}

void Node::Maintain(int64_t now_us) {
  int64_t now_ms = clock_.NowUnixMs();
  if (now_us >= next_sweep_us_) {
    next_sweep_us_ = now_us + options_.sweep_interval_ms * 1000;
    store_.Sweep(now_ms);
    std::erase_if(own_records_, [&](const auto& kv) { return kv.second.expiration_ms <= now_ms; });
    std::erase_if(rate_, [&](const auto& kv) { return now_us - kv.second.last_us > 60'000'000; });
  }
  if (table_.size() == 0 && !seeds_.empty() && now_us >= next_rebootstrap_us_) {
    next_rebootstrap_us_ = now_us + 5'000'000;
    Bootstrap(seeds_, nullptr);
  }
  if (now_us >= next_republish_us_) {
    next_republish_us_ = now_us + options_.republish_interval_ms * 1000;
    for (const auto& [k, record] : own_records_) {
      if (record.expiration_ms > now_ms) StoreRecord(record, nullptr);
    }
  }
  if (now_us >= next_refresh_us_) {
    int64_t refresh_us = options_.refresh_interval_ms * 1000;
    next_refresh_us_ = now_us + std::min<int64_t>(refresh_us, 60'000'000);
    if (table_.size() > 0) {
      for (const NodeId& t : table_.IdleBucketTargets(now_us, refresh_us, rng_)) {
        StartLookup(Lookup::Kind::kFindNode, t, "", 0, nullptr);
      }
    }
  }
}

}  // namespace dmoe::dht
