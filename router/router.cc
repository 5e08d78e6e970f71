#include "router/router.h"

#include <ATen/ATen.h>
#include <spdlog/spdlog.h>

#include <atomic>
#include <nlohmann/json.hpp>
#include <set>

#include "core/clock.h"
#include "core/hex.h"
#include "core/identity.h"
#include "core/integer.h"
#include "core/metrics.h"
#include "core/request_auth.h"
#include "dht/dht.h"
#include "model/model_spec.h"
#include "net/http_server.h"
#include "net/io_context.h"
#include "net/sse.h"
#include "net/url.h"
#include "router/dashboard_asset.h"
#include "router/generation.h"
#include "router/inference.h"
#include "router/openai.h"
#include "router/request_series.h"
#include "router/swarm.h"
#include "router/ws_generation.h"
#include "storage/kv_store.h"
#include "storage/model_store.h"
#include "tensor/safetensors.h"
#include "tensor/torch_tensor.h"

namespace dmoe::router {
namespace {

// How far ahead of the router's clock a published version (unix ms) may be.
constexpr int64_t kMaxVersionAheadMs = 24 * 3600 * 1000;

// {"inputs": [[...], ...]} -> F32 [B, input_dim].
Result<at::Tensor> ParseJsonInputs(std::string_view body, int64_t input_dim) {
  nlohmann::json j = nlohmann::json::parse(body, nullptr, false);
  if (j.is_discarded() || !j.is_object() || !j.contains("inputs") || !j["inputs"].is_array()) {
    return InvalidArgumentError("body must be JSON {\"inputs\": [[...], ...]}");
  }
  const nlohmann::json& rows = j["inputs"];
  if (rows.empty()) return InvalidArgumentError("inputs is empty: send at least one row");
  at::Tensor x = at::empty({static_cast<int64_t>(rows.size()), input_dim}, at::kFloat);
  float* out = x.data_ptr<float>();
  for (size_t r = 0; r < rows.size(); ++r) {
    if (!rows[r].is_array() || static_cast<int64_t>(rows[r].size()) != input_dim) {
      return InvalidArgumentError("inputs[" + std::to_string(r) + "] must be a list of " +
                                  std::to_string(input_dim) + " numbers, the model's input_dim");
    }
    for (int64_t c = 0; c < input_dim; ++c) {
      const nlohmann::json& v = rows[r][c];
      if (!v.is_number()) {
        return InvalidArgumentError("inputs[" + std::to_string(r) + "][" + std::to_string(c) +
                                    "] is not a number");
      }
      // Checked after the cast: 1e300 is a finite double but an infinite float.
      const float f = static_cast<float>(v.get<double>());
      if (!std::isfinite(f)) {
        return InvalidArgumentError("inputs[" + std::to_string(r) + "][" + std::to_string(c) +
                                    "] is not a finite F32 number");
      }
      out[r * input_dim + c] = f;
    }
  }
  return x;
}

// The answer to a generation that ended: `done` is its last event, `text` the text to send with
// it (all of it for a whole answer, "" for the last event of a stream).
nlohmann::json GenerationResult(const GenerationEvent& done, std::string_view text) {
  nlohmann::json j = {
      {"text", text},
      {"finish_reason", FinishReasonName(done.finish_reason)},
      {"usage",
       {{"prompt_tokens", done.prompt_tokens}, {"completion_tokens", done.completion_tokens}}},
      {"model_version", done.model_version}};
  if (done.finish_reason == FinishReason::kError) {
    j["error"] = {{"code", CodeName(done.error.code())}, {"message", done.error.message()}};
  }
  return j;
}

std::string Dump(const nlohmann::json& j) {
  return j.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
}

class RouterImpl : public Router {
 public:
  RouterImpl(RouterOptions options, RouterContext context)
      : options_(std::move(options)),
        context_(context),
        clock_(*context.clock),
        dht_(*context.dht),
        identity_(*options_.identity) {}
  ~RouterImpl() override { Stop(); }

  Status Init() {
    if (options_.db_dir.empty())
      return InvalidArgumentError("--db is required: models are kept there");
    std::optional<std::set<PublicKey>> server_keys;
    if (!options_.server_keys_path.empty()) {
      DMOE_ASSIGN_OR_RETURN(server_keys, RequestVerifier::LoadKeyFile(options_.server_keys_path));
    }
    if (!options_.trainer_keys_path.empty()) {
      DMOE_ASSIGN_OR_RETURN(std::set<PublicKey> keys,
                            RequestVerifier::LoadKeyFile(options_.trainer_keys_path));
      verifier_ = std::make_unique<RequestVerifier>(std::move(keys), identity_.peer_id(), clock_);
    } else if (!net::IsLoopbackHost(options_.listen_host) && !options_.open_publishing) {
      return InvalidArgumentError(
          "refusing to accept model publication on " + options_.listen_host +
          " without --trainer-keys; pass --open-publishing to allow anyone");
    }
    DMOE_ASSIGN_OR_RETURN(std::unique_ptr<storage::KvStore> kv,
                          storage::KvStore::Open(options_.db_dir));
    models_ =
        std::make_unique<storage::ModelStore>(std::shared_ptr<storage::KvStore>(std::move(kv)));

    SwarmOptions swarm_options;
    swarm_options.refresh_ms = options_.swarm_refresh_ms;
    swarm_ = std::make_unique<SwarmView>(dht_, swarm_options, clock_, *context_.buffer_pool,
                                         *context_.net_io);
    for (const std::string& p : options_.watch_prefixes) swarm_->Watch(p);
    DMOE_ASSIGN_OR_RETURN(std::vector<storage::ModelInfo> models, models_->List());
    for (const storage::ModelInfo& m : models) WatchSpec(m.spec_json);
    swarm_->Start();

    inference_ = std::make_unique<Inference>(dht_, clock_, *context_.buffer_pool,
                                             std::move(server_keys), context_.local_experts);
    compute_ = std::make_unique<net::IoContext>(std::max(1, options_.inference_threads));
    StartGenerator();

    net::HttpServerOptions http_options;
    http_options.host = options_.listen_host;
    http_options.port = options_.listen_port;
    http_options.max_body_bytes = options_.max_body_bytes;
    http_options.max_held_request_bytes = options_.max_held_request_bytes;
    http_options.max_connections = options_.max_connections;
    http_options.max_connections_per_ip = options_.max_connections_per_ip;
    http_options.buffer_pool = context_.buffer_pool;
    http_ = std::make_unique<net::HttpServer>(http_options, context_.net_io);
    RegisterRoutes();
    return http_->Start();
  }

  std::string endpoint() const override {
    std::string host = options_.listen_host == "0.0.0.0" ? "127.0.0.1" : options_.listen_host;
    return "http://" + host + ":" + std::to_string(http_->port());
  }
  uint16_t port() const override { return http_->port(); }
  std::string peer_id() const override { return identity_.peer_id(); }

  void Stop() override {
    if (stopped_.exchange(true)) return;
    // Generations end first ("the router is stopping"), so that their requests answer before the
    // server's drain deadline instead of being cut by it.
    if (generator_) generator_->Stop();
    if (http_) http_->Stop(std::chrono::seconds(5));
    if (compute_) compute_->Stop();
    if (swarm_) swarm_->Stop();
    generator_.reset();
    inference_.reset();
  }

 private:
  void WatchSpec(const std::string& spec_json) {
    for (const std::string& prefix : Inference::GridPrefixesOf(spec_json)) swarm_->Watch(prefix);
  }

  void Count(const std::string& route, Code code) {
    metrics_
        .GetCounter("dmoe_router_requests_total", "Router requests answered, by route and code.",
                    {{"route", route}, {"code", std::string(CodeName(code))}})
        .Increment();
  }

  net::Response Answer(const std::string& route, net::Response r) {
    Status s = r.status == 200 ? Status::Ok() : net::StatusFromResponse(r);
    Count(route, s.code());
    return r;
  }

  std::string SwarmJson() {
    SwarmSnapshot snap = swarm_->Snapshot();
    nlohmann::json experts = nlohmann::json::array();
    struct Peer {
      std::string endpoint;
      int experts = 0;
      int alive = 0;
      double latency = -1;
      std::string status;
    };
    std::map<std::string, Peer> peers;
    for (const SwarmExpert& e : snap.experts) {
      experts.push_back({{"uid", e.uid},
                         {"peer_id", e.peer_id},
                         {"endpoint", e.endpoint},
                         {"expires_at", e.expires_at_ms},
                         {"step", e.step},
                         {"load", e.load},
                         {"status", e.status},
                         {"latency_ms", e.latency_ms},
                         {"type", e.type},
                         {"hidden_dim", e.hidden_dim}});
      Peer& p = peers[e.peer_id];
      p.endpoint = e.endpoint;
      ++p.experts;
      if (e.status == "alive") {
        ++p.alive;
        p.latency = e.latency_ms;
        p.status = "alive";
      } else if (p.status.empty() || p.status == "stale") {
        p.status = e.status;
      }
    }
    nlohmann::json peer_list = nlohmann::json::array();
    for (const auto& [id, p] : peers) {
      peer_list.push_back({{"peer_id", id},
                           {"endpoint", p.endpoint},
                           {"experts", p.experts},
                           {"status", p.status},
                           {"latency_ms", p.latency}});
    }
    nlohmann::json history = nlohmann::json::array();
    for (const SwarmPoint& p : snap.history) {
      history.push_back({{"t_ms", p.t_ms},
                         {"alive", p.alive},
                         {"unreachable", p.unreachable},
                         {"stale", p.stale},
                         {"health_latency_ms", p.health_latency_ms}});
    }
    nlohmann::json requests = nlohmann::json::array();
    for (const RequestPoint& p : series_.Points()) {
      requests.push_back(
          {{"t_ms", p.t_ms}, {"requests", p.requests}, {"errors", p.errors}, {"p50_ms", p.p50_ms}});
    }
    return nlohmann::json{
        {"experts", experts},
        {"peers", peer_list},
        {"models", ModelsJson()},
        {"dht", {{"routing_table", snap.dht_routing_table}, {"peer_id", dht_.peer_id()}}},
        {"history", history},
        {"requests", requests},
        {"refreshed_at", snap.refreshed_at_ms}}
        .dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
  }

  nlohmann::json ModelsJson() {
    nlohmann::json list = nlohmann::json::array();
    Result<std::vector<storage::ModelInfo>> models = models_->List();
    if (!models.ok()) return list;
    for (const storage::ModelInfo& m : *models) {
      nlohmann::json spec = nlohmann::json::parse(m.spec_json, nullptr, false);
      list.push_back({{"name", m.name},
                      {"version", m.version},
                      {"spec", spec},
                      {"published_unix_ms", m.published_unix_ms},
                      {"publisher", m.publisher}});
    }
    return list;
  }

  void Publish(net::Request req, net::Responder respond) {
    const std::string name(req.Param("name").value_or(""));
    auto fail = [&](Status s) { respond(Answer("publish", net::Response::Error(s))); };
    if (verifier_) {
      RequestSignature sig{std::string(req.headers.Get(kKeyHeader).value_or("")),
                           std::string(req.headers.Get(kTimestampHeader).value_or("")),
                           std::string(req.headers.Get(kNonceHeader).value_or("")),
                           std::string(req.headers.Get(kSignatureHeader).value_or(""))};
      Status auth = verifier_->Verify(sig, req.method, req.path, HexEncode(Blake2b256(req.body)));
      if (!auth.ok()) return fail(auth);
    }
    Result<safetensors::Decoded> decoded = safetensors::Decode(req.body);
    if (!decoded.ok()) return fail(decoded.status());
    auto spec = decoded->metadata.find("spec");
    auto version = decoded->metadata.find("version");
    if (spec == decoded->metadata.end() || version == decoded->metadata.end()) {
      return fail(
          InvalidArgumentError("a published model needs __metadata__ 'spec' and 'version'"));
    }
    const std::optional<int64_t> parsed = ParseInteger<int64_t>(version->second);
    if (!parsed || *parsed < 1) {
      return fail(
          InvalidArgumentError("version '" + version->second + "' is not a positive integer"));
    }
    const int64_t v = *parsed;
    // Versions only grow, so one far in the future would lock the model for good. Trainers use
    // unix milliseconds (PROTOCOL section 5); a day of clock skew is more than enough.
    const int64_t now_ms = clock_.NowUnixMs();
    if (v > now_ms + kMaxVersionAheadMs) {
      return fail(InvalidArgumentError(
          "version " + std::to_string(v) + " is more than a day ahead of the router's clock (" +
          std::to_string(now_ms) + " unix ms); versions are unix milliseconds"));
    }
    storage::Model model;
    model.info = {name, v, spec->second, clock_.NowUnixMs(),
                  std::string(req.headers.Get(kKeyHeader).value_or(""))};
    model.state = std::move(req.body);
    // Building the spec's network to check the state dict, and the synced RocksDB write, both
    // stay off the network thread.
    compute_->Post([this, model = std::move(model), respond]() mutable {
      Status s = inference_->ValidateModel(model.info.name, model.info.spec_json, model.state);
      if (s.ok()) s = models_->Publish(model);
      if (!s.ok()) return respond(Answer("publish", net::Response::Error(s)));
      WatchSpec(model.info.spec_json);
      spdlog::info("model {} version {} published", model.info.name, model.info.version);
      respond(Answer(
          "publish",
          net::Response::Json(
              200,
              nlohmann::json{{"name", model.info.name}, {"version", model.info.version}}.dump())));
    });
  }

  // A place in the bounded inference queue, given back when the request's work is done.
  // The gauge shows operators (and tests) how full the queue is.
  class InferenceSlot {
   public:
    InferenceSlot(std::atomic<int>* queued, Gauge* gauge) : queued_(queued), gauge_(gauge) {
      gauge_->Add(1);
    }
    ~InferenceSlot() {
      gauge_->Add(-1);
      queued_->fetch_sub(1);
    }
    InferenceSlot(const InferenceSlot&) = delete;
    InferenceSlot& operator=(const InferenceSlot&) = delete;

   private:
    std::atomic<int>* queued_;
    Gauge* gauge_;
  };

  void Infer(net::Request req, net::Responder respond) {
    const int64_t start_us = clock_.NowMonotonicUs();
    if (inferences_queued_.fetch_add(1) >= options_.max_queued_inferences) {
      inferences_queued_.fetch_sub(1);
      metrics_
          .GetCounter("dmoe_router_infer_refused_total",
                      "Inference requests refused because the queue was full.")
          .Increment();
      return respond(
          Answer("infer", net::Response::Error(UnavailableError(
                              "the router has " + std::to_string(options_.max_queued_inferences) +
                              " inference requests queued; retry later or at another router"))));
    }
    auto slot = std::make_shared<InferenceSlot>(
        &inferences_queued_,
        &metrics_.GetGauge("dmoe_router_inferences_queued",
                           "Inference requests queued or being computed (at most "
                           "--max-queued-inferences)."));
    compute_->Post([this, req = std::move(req), respond, start_us, slot]() mutable {
      auto finish = [&](net::Response r) {
        double ms = (clock_.NowMonotonicUs() - start_us) / 1000.0;
        series_.Record(clock_.NowUnixMs(), ms, r.status == 200);
        metrics_.GetHistogram("dmoe_router_infer_seconds", "Inference latency.", LatencyBuckets())
            .Observe(ms / 1000.0);
        respond(Answer("infer", std::move(r)));
      };
      const std::string name(req.Param("name").value_or(""));
      Result<storage::Model> model = models_->Get(name);
      if (!model.ok()) return finish(net::Response::Error(model.status()));
      Result<int64_t> input_dim = Inference::InputDimOf(model->info.spec_json);
      if (!input_dim.ok()) return finish(net::Response::Error(input_dim.status()));
      const bool binary = net::IsSafetensorsBody(req.headers);
      at::Tensor x;
      if (binary) {
        Result<tensor::TorchPayload> p = tensor::DecodeToTorch(req.body);
        if (!p.ok()) return finish(net::Response::Error(p.status()));
        if (p->tensors.size() != 1 || !p->tensors.count("x")) {
          return finish(
              net::Response::Error(InvalidArgumentError("send exactly one tensor, named 'x'")));
        }
        x = p->tensors["x"];
        if (x.scalar_type() != at::kFloat || x.dim() != 2 || x.size(1) != *input_dim ||
            x.size(0) < 1) {
          return finish(net::Response::Error(InvalidArgumentError(
              "x must be F32 [B, " + std::to_string(*input_dim) + "] with B >= 1")));
        }
        if (!at::isfinite(x).all().item<bool>()) {
          return finish(net::Response::Error(InvalidArgumentError("x holds NaN or Inf")));
        }
      } else if (net::HasMediaType(req.headers, "application/json") ||
                 net::MediaTypeOf(req.headers).empty()) {
        Result<at::Tensor> parsed = ParseJsonInputs(req.body_view(), *input_dim);
        if (!parsed.ok()) return finish(net::Response::Error(parsed.status()));
        x = *parsed;
      } else {
        return finish(net::Response::Error(
            UnsupportedMediaTypeError("send application/json or application/x-safetensors")));
      }
      Result<InferResult> r = inference_->Run(*model, x);
      if (!r.ok()) return finish(net::Response::Error(r.status()));
      nlohmann::json experts = r->experts;
      if (binary) {
        Result<std::vector<uint8_t>> blob = tensor::EncodeFromTorch(
            {{"y", r->y}},
            {{"model_version", std::to_string(r->model_version)}, {"experts", experts.dump()}});
        if (!blob.ok()) return finish(net::Response::Error(blob.status()));
        return finish(net::Response::Binary(200, net::kSafetensorsType, std::move(blob).value()));
      }
      nlohmann::json outputs = nlohmann::json::array();
      at::Tensor y = r->y.contiguous();
      const float* data = y.data_ptr<float>();
      for (int64_t i = 0; i < y.size(0); ++i) {
        outputs.push_back(std::vector<float>(data + i * y.size(1), data + (i + 1) * y.size(1)));
      }
      finish(net::Response::Json(200, nlohmann::json{{"outputs", outputs},
                                                     {"experts", experts},
                                                     {"model_version", r->model_version}}
                                          .dump()));
    });
  }

  void StartGenerator() {
    generator_ =
        std::make_unique<Generator>(GeneratorOptions{.clock = &clock_,
                                                     .max_active = options_.max_batch_sequences,
                                                     .max_pending = options_.max_generations},
                                    *inference_);
    auto stat = [this](int64_t GeneratorStats::*field) {
      return [this, field] {
        return generator_ ? static_cast<double>(generator_->stats().*field) : 0.0;
      };
    };
    metrics_.AddCallbackCounter("dmoe_router_generate_steps_total",
                                "Steps of the generator's decode loop; each decodes every active "
                                "generation once.",
                                {}, stat(&GeneratorStats::steps));
    metrics_.AddCallbackCounter("dmoe_router_generated_tokens_total", "Tokens generated.", {},
                                stat(&GeneratorStats::tokens));
    metrics_.AddCallbackCounter(
        "dmoe_router_generate_decode_seconds_total", "Time the generator spent decoding.", {},
        [this] { return generator_ ? generator_->stats().decode_us / 1e6 : 0.0; });
    metrics_.AddCallbackGauge(
        "dmoe_router_generations_pending",
        "Generations decoding or waiting to (at most --max-generations).", {},
        [this] { return generator_ ? static_cast<double>(generator_->pending()) : 0.0; });
  }

  // POST /v1/models/{name}/generate (PROTOCOL section 5). The body (at most
  // kMaxGenerateRequestBytes) is parsed here on the network thread; the model lookup and the
  // submission, which may build the model, run on an inference thread; the answer is written from
  // the decode thread when the generation ends.
  void Generate(net::Request req, net::Responder respond) {
    auto fail = [&](const Status& s) { respond(Answer("generate", net::Response::Error(s))); };
    Result<GenerateParams> params = ParseGenerateRequest(req.body_view(), GenerateLimits{});
    if (!params.ok()) return fail(params.status());
    compute_->Post([this, name = std::string(req.Param("name").value_or("")),
                    params = std::move(params).value(), respond]() mutable {
      Result<storage::Model> model = models_->Get(name);
      Status s = model.status();
      if (s.ok()) {
        GenerationSink sink = params.stream ? StreamSink(respond) : WholeAnswerSink(respond);
        s = generator_->Submit(*model, std::move(params), std::move(sink));
      }
      if (!s.ok()) respond(Answer("generate", net::Response::Error(s)));
    });
  }

  // Answers a generation as Server-Sent Events: one `data: {"text": PIECE}` per event with text,
  // then `data: {"text": "", "finish_reason", "usage", "model_version"}` (and "error" when the
  // reason is "error"), then the end of the body. The stream opens at the first event, so a
  // generation that fails before its first token is answered as a whole error (503 for an
  // unavailable swarm), as without "stream". A client that leaves closes the stream, and the
  // generation ends at the next step.
  GenerationSink StreamSink(net::Responder respond) {
    return [this, respond,
            stream = std::shared_ptr<net::ResponseStream>()](const GenerationEvent& e) mutable {
      if (!stream) {
        if (e.done && e.finish_reason == FinishReason::kError && e.completion_tokens == 0) {
          respond(Answer("generate", net::Response::Error(e.error)));
          return false;
        }
        Count("generate", Code::kOk);
        stream = respond.Stream(200, "text/event-stream", {{"Cache-Control", "no-cache"}});
      }
      if (!e.text.empty()) stream->Write(net::SseEvent(Dump(nlohmann::json{{"text", e.text}})));
      if (e.done) {
        stream->Write(net::SseEvent(Dump(GenerationResult(e, ""))));
        stream->End();
      }
      return !stream->closed();
    };
  }

  // Collects a generation's text and answers it whole at the end: 200 with the text, or, when the
  // generation failed before its first token, the error alone (503 for an unavailable swarm).
  GenerationSink WholeAnswerSink(net::Responder respond) {
    return [this, respond, text = std::string()](const GenerationEvent& e) mutable {
      text += e.text;
      if (!e.done) return true;
      if (e.finish_reason == FinishReason::kError && e.completion_tokens == 0) {
        respond(Answer("generate", net::Response::Error(e.error)));
      } else {
        respond(Answer("generate", net::Response::Json(200, Dump(GenerationResult(e, text)))));
      }
      return true;
    };
  }

  void RegisterGenerateRoutes() {
    http_->Handle(
        "POST", "/v1/models/{name}/generate",
        [this](net::Request req, net::Responder respond) { Generate(std::move(req), respond); },
        [](const net::RequestHead& head) {
          if (!net::HasMediaType(head.headers, "application/json")) {
            return UnsupportedMediaTypeError("send the generate request as application/json");
          }
          if (head.content_length && *head.content_length > kMaxGenerateRequestBytes) {
            return PayloadTooLargeError("a generate request has at most " +
                                        std::to_string(kMaxGenerateRequestBytes) + " bytes, not " +
                                        std::to_string(*head.content_length));
          }
          return Status::Ok();
        });
  }

  void RegisterRoutes() {
    http_->Handle("GET", "/", [](net::Request, net::Responder respond) {
      respond(net::Response::Text(200, "text/html; charset=utf-8", DashboardHtml()));
    });
    // Liveness for load balancers and tests, answered on the network thread, never queued; and the
    // router's peer id (what trainers sign publications for, dmoe-req-v2), proven by a signature
    // over a client's challenge when one is given.
    http_->Handle("GET", "/v1/health", [this](net::Request req, net::Responder respond) {
      nlohmann::json body = {{"status", "ok"},
                             {"peer_id", identity_.peer_id()},
                             {"public_key", identity_.public_key_hex()}};
      if (std::optional<std::string_view> challenge = req.QueryValue("challenge")) {
        if (!IsChallengeHex(*challenge)) {
          return respond(net::Response::Error(InvalidArgumentError(
              "challenge must be " + std::to_string(kChallengeHexChars) + " hex characters")));
        }
        if (!proof_limiter_.Allow(clock_.NowUnixMs())) {
          return respond(net::Response::Error(
              ResourceExhaustedError("too many challenges this second; retry later")));
        }
        body["proof"] = SignProof(identity_, *challenge);
      }
      respond(net::Response::Json(200, body.dump()));
    });
    http_->Handle("GET", "/v1/swarm", [this](net::Request, net::Responder respond) {
      respond(Answer("swarm", net::Response::Json(200, SwarmJson())));
    });
    http_->Handle("GET", "/v1/models", [this](net::Request, net::Responder respond) {
      respond(Answer("models",
                     net::Response::Json(200, nlohmann::json{{"models", ModelsJson()}}.dump())));
    });
    http_->Handle(
        "PUT", "/v1/models/{name}",
        [this](net::Request req, net::Responder respond) { Publish(std::move(req), respond); },
        [this](const net::RequestHead& head) {
          if (verifier_) {
            RequestSignature sig{std::string(head.headers.Get(kKeyHeader).value_or("")),
                                 std::string(head.headers.Get(kTimestampHeader).value_or("")),
                                 std::string(head.headers.Get(kNonceHeader).value_or("")),
                                 std::string(head.headers.Get(kSignatureHeader).value_or(""))};
            DMOE_RETURN_IF_ERROR(verifier_->CheckHead(sig));
          }
          if (!net::IsSafetensorsBody(head.headers)) {
            return UnsupportedMediaTypeError("publish the state dict as application/x-safetensors");
          }
          return storage::ModelStore::ValidateName(std::string(head.Param("name").value_or("")));
        });
    http_->Handle(
        "POST", "/v1/models/{name}/infer",
        [this](net::Request req, net::Responder respond) { Infer(std::move(req), respond); });
    RegisterGenerateRoutes();
    http_->Handle("GET", "/metrics", [this](net::Request, net::Responder respond) {
      respond(net::Response::Text(200, "text/plain; version=0.0.4", metrics_.Render()));
    });
    RegisterOpenAiRoutes();
    RegisterWebSocketRoutes();
  }

  // The OpenAI-compatible API under /openai/v1 (router/openai.h): translation at the edge, the
  // generation itself as dmoe's own generate route runs it.
  void RegisterOpenAiRoutes() {
    http_->Handle("GET", "/openai/v1/models", [this](net::Request, net::Responder respond) {
      respond(Answer("openai_models", net::Response::Json(200, OpenAiModelsJson())));
    });
    // A declared body past the limit is refused before it is read (with dmoe's error body; one
    // sent chunked is refused by ParseRequest once read, with OpenAI's).
    auto body_limit = [](const net::RequestHead& head) -> Status {
      if (head.content_length && *head.content_length > openai::kMaxBodyBytes) {
        return PayloadTooLargeError("the body declares " + std::to_string(*head.content_length) +
                                    " bytes; at most " + std::to_string(openai::kMaxBodyBytes) +
                                    " are allowed");
      }
      return Status::Ok();
    };
    http_->Handle(
        "POST", "/openai/v1/completions",
        [this](net::Request req, net::Responder respond) {
          OpenAiGenerate(openai::Api::kCompletions, std::move(req), std::move(respond));
        },
        body_limit);
    http_->Handle(
        "POST", "/openai/v1/chat/completions",
        [this](net::Request req, net::Responder respond) {
          OpenAiGenerate(openai::Api::kChatCompletions, std::move(req), std::move(respond));
        },
        body_limit);
  }

  // The published models the generator can serve: byte-level token models.
  std::string OpenAiModelsJson() {
    std::vector<openai::ModelEntry> entries;
    Result<std::vector<storage::ModelInfo>> models = models_->List();
    if (models.ok()) {
      for (const storage::ModelInfo& m : *models) {
        Result<model::ModelSpec> spec = model::ParseModelSpec(m.spec_json);
        if (spec.ok() && spec->input == model::InputKind::kTokens && spec->vocab == 256) {
          entries.push_back({m.name, m.version});
        }
      }
    }
    return openai::ModelListJson(entries);
  }

  void OpenAiGenerate(openai::Api api, net::Request req, net::Responder respond) {
    const std::string route =
        api == openai::Api::kCompletions ? "openai_completions" : "openai_chat_completions";
    auto fail = [this, route, respond](const Status& s, std::string_view param = {},
                                       std::string_view code = {}) {
      net::Response r = net::Response::Error(s);  // status and Retry-After as dmoe answers them
      const std::string body = openai::ErrorJson(s, param, code);
      r.body.assign(body.begin(), body.end());
      Count(route, s.code());
      respond(std::move(r));
    };
    if (!net::HasMediaType(req.headers, "application/json") &&
        !net::MediaTypeOf(req.headers).empty()) {
      return fail(UnsupportedMediaTypeError("send the request as application/json"));
    }
    std::string param;
    Result<openai::Request> parsed =
        openai::ParseRequest(api, req.body_view(), GenerateLimits{}, &param);
    if (!parsed.ok()) return fail(parsed.status(), param);
    // Submit may build the model: never on a network thread.
    compute_->Post([this, r = std::move(parsed).value(), route, respond, fail]() mutable {
      Result<storage::Model> model = models_->Get(r.model);
      if (!model.ok()) {
        const bool missing = model.status().code() == Code::kNotFound;
        return fail(model.status(), "model", missing ? "model_not_found" : "");
      }
      const char* prefix = r.api == openai::Api::kCompletions ? "cmpl-" : "chatcmpl-";
      auto answer =
          std::make_shared<openai::Answer>(r.api, r.model,
                                           prefix + std::to_string(openai_ids_.fetch_add(1) + 1) +
                                               "-" + std::to_string(clock_.NowUnixMs()),
                                           clock_.NowUnixMs() / 1000, r.include_usage);
      const bool stream = r.params.stream;
      Status s = generator_->Submit(*model, std::move(r.params),
                                    stream ? OpenAiStreamSink(answer, route, respond)
                                           : OpenAiWholeSink(answer, route, respond, fail));
      if (!s.ok()) fail(s);
    });
  }

  // Collects the text and answers once, as OpenAI's object or, when the swarm failed, its error.
  GenerationSink OpenAiWholeSink(
      std::shared_ptr<openai::Answer> answer, const std::string& route, net::Responder respond,
      std::function<void(const Status&, std::string_view, std::string_view)> fail) {
    auto text = std::make_shared<std::string>();
    return [this, answer, route, respond, fail, text](const GenerationEvent& e) {
      *text += e.text;
      if (!e.done) return true;
      if (e.finish_reason == FinishReason::kError) {
        fail(e.error.ok() ? InternalError("the generation failed") : e.error, {}, {});
      } else {
        respond(Answer(route, net::Response::Json(200, answer->Body(*text, e))));
      }
      return false;
    };
  }

  // Opens the event stream at the first event (a Submit refused before it is still an HTTP error)
  // and sends each event's chunks as they come. The sink runs on the decode thread, one event at
  // a time, so its state needs no lock.
  GenerationSink OpenAiStreamSink(std::shared_ptr<openai::Answer> answer, const std::string& route,
                                  net::Responder respond) {
    auto stream = std::make_shared<std::shared_ptr<net::ResponseStream>>();
    return [this, answer, route, respond, stream](const GenerationEvent& e) {
      std::vector<std::string> payloads = answer->StreamEvents(e);
      if (!*stream) {
        *stream = respond.Stream(200, net::kSseType, {{"Cache-Control", "no-cache"}});
        Count(route, Code::kOk);
        std::vector<std::string> start = answer->StreamStart();
        payloads.insert(payloads.begin(), start.begin(), start.end());
      }
      for (const std::string& p : payloads) (*stream)->Write(net::SseEvent(p));
      if (e.done) (*stream)->End();
      return !(*stream)->closed();
    };
  }

  // Generation over the WebSocket GET /v1/ws (router/ws_generation.h).
  void RegisterWebSocketRoutes() {
    net::WsHandlers handlers;
    handlers.on_message = [this](const std::shared_ptr<net::WsConnection>& conn,
                                 net::Bytes message) { WsGenerate(conn, std::move(message)); };
    http_->HandleWebSocket("/v1/ws", std::move(handlers));
  }

  // Sends `text` on `conn`. A connection whose send queue is full (a client that does not read
  // its answers; HttpServerOptions::ws_max_queued_messages) is closed, which ends its generations.
  static bool WsSend(const std::shared_ptr<net::WsConnection>& conn, const std::string& text) {
    if (conn->Send(net::Bytes(text.begin(), text.end())).ok()) return true;
    conn->Close();
    return false;
  }

  // On the connection's strand: parse and count the request, then submit it on an inference
  // thread. Every request begun with TryBeginRequest ends exactly once: on its refusal, on its last
  // event, or when its sink gives up on a connection that closed.
  void WsGenerate(const std::shared_ptr<net::WsConnection>& conn, net::Bytes message) {
    std::string id;
    Result<WsGenerateRequest> parsed = ParseWsGenerateRequest(
        std::string_view(reinterpret_cast<const char*>(message.data()), message.size()),
        GenerateLimits{}, &id);
    if (!parsed.ok()) {
      WsSend(conn, WsErrorMessage(id, parsed.status()));
      return;
    }
    if (!conn->TryBeginRequest(kMaxWsGenerationsInFlight)) {
      WsSend(conn, WsErrorMessage(
                       id, ResourceExhaustedError(
                               "this connection has " + std::to_string(kMaxWsGenerationsInFlight) +
                               " generations in flight; send more once one is done")));
      return;
    }
    compute_->Post([this, conn, r = std::move(parsed).value()]() mutable {
      auto refuse = [&](const Status& s) {
        WsSend(conn, WsErrorMessage(r.id, s));
        conn->EndRequest();
      };
      Result<storage::Model> model = models_->Get(r.model);
      if (!model.ok()) return refuse(model.status());
      Status s = generator_->Submit(*model, std::move(r.params),
                                    [conn, id = r.id](const GenerationEvent& e) {
                                      bool sent = true;
                                      for (const std::string& m : WsEventMessages(id, e))
                                        sent = sent && WsSend(conn, m);
                                      if (e.done || !sent || !conn->is_open()) {
                                        conn->EndRequest();
                                        return false;
                                      }
                                      return true;
                                    });
      if (!s.ok()) refuse(s);
    });
  }

  const RouterOptions options_;
  const RouterContext context_;
  const Clock& clock_;
  dht::Dht& dht_;
  const Identity& identity_;  // options_.identity
  std::unique_ptr<RequestVerifier> verifier_;
  ProofRateLimiter proof_limiter_;
  std::unique_ptr<storage::ModelStore> models_;
  std::unique_ptr<SwarmView> swarm_;
  std::unique_ptr<Inference> inference_;
  std::atomic<int> inferences_queued_{0};  // Outlives compute_, whose tasks hold slots.
  std::unique_ptr<net::IoContext> compute_;
  // After inference_, which it uses: destroyed first.
  std::unique_ptr<Generator> generator_;
  std::unique_ptr<net::HttpServer> http_;
  Metrics metrics_;
  RequestSeries series_;
  std::atomic<bool> stopped_{false};
  std::atomic<uint64_t> openai_ids_{0};  // Numbers the OpenAI answers' ids.
};

}  // namespace

Result<std::unique_ptr<Router>> Router::Start(RouterOptions options, RouterContext context) {
  if (context.clock == nullptr || context.buffer_pool == nullptr || context.net_io == nullptr ||
      context.dht == nullptr) {
    return InvalidArgumentError(
        "the router needs a clock, a buffer pool, network threads and a DHT node from its process");
  }
  if (!options.identity) return InvalidArgumentError("the router needs its identity");
  if (options.identity->peer_id() != context.dht->peer_id()) {
    return InvalidArgumentError("the router's identity (peer id " + options.identity->peer_id() +
                                ") is not its DHT node's (" + context.dht->peer_id() + ")");
  }
  auto router = std::make_unique<RouterImpl>(std::move(options), context);
  Status s = router->Init();
  if (!s.ok()) {
    router->Stop();
    return s;
  }
  return std::unique_ptr<Router>(std::move(router));
}

}  // namespace dmoe::router
