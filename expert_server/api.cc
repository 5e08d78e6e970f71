// The HTTP and WebSocket API of PROTOCOL section 4. Handlers run on network threads: they check
// and parse the request, then hand it to the runtime; answers are encoded on the runtime thread and
// sent back through the connection's Responder or WsConnection, which post to its strand.
#include <ATen/ops/full_like.h>
#include <spdlog/spdlog.h>

#include <chrono>
#include <limits>
#include <nlohmann/json.hpp>
#include <optional>

#include "core/hex.h"
#include "core/integer.h"
#include "core/uid.h"
#include "expert_server/server_impl.h"
#include "expert_server/task.h"
#include "net/buffer_pool.h"
#include "tensor/safetensors.h"
#include "tensor/torch_tensor.h"

namespace dmoe::expert_server {
namespace {

Status CheckContentType(const net::RequestHead& head) {
  if (net::IsSafetensorsBody(head.headers)) return Status::Ok();
  return UnsupportedMediaTypeError(
      "Content-Type must be application/x-safetensors or "
      "application/octet-stream, got '" +
      std::string(net::MediaTypeOf(head.headers)) + "'");
}

RequestSignature SignatureOf(const net::RequestHead& head) {
  return {std::string(head.headers.Get(kKeyHeader).value_or("")),
          std::string(head.headers.Get(kTimestampHeader).value_or("")),
          std::string(head.headers.Get(kNonceHeader).value_or("")),
          std::string(head.headers.Get(kSignatureHeader).value_or(""))};
}

const char* OpName(TaskKind kind) { return kind == TaskKind::kForward ? "forward" : "backward"; }

// An error answer on the WebSocket: no tensors, the code and message in the metadata.
std::vector<uint8_t> WsErrorBlob(const std::string& id, const std::string& uid, const Status& s) {
  std::map<std::string, std::string> meta = {
      {"id", id}, {"error_code", std::string(CodeName(s.code()))}, {"error_message", s.message()}};
  if (!uid.empty()) meta["uid"] = uid;
  Result<std::vector<uint8_t>> blob = safetensors::Encode({}, meta);
  if (blob.ok()) return std::move(blob).value();
  // Only a message that is not UTF-8 can fail; send the code alone.
  return std::move(safetensors::Encode({}, {{"id", id},
                                            {"error_code", "internal"},
                                            {"error_message", "unencodable error message"}}))
      .value();
}

// The answer for a uid this server does not host: invalid_argument when it is not a uid at all
// (PROTOCOL section 1: "ffn.01", "1ffn.2", five indices, an index above 999999), not_found when it
// is well formed. Parsed only on this miss path, so a hosted uid costs one map lookup as before.
Status UnhostedUidError(const std::string& uid) {
  Result<ExpertUid> parsed = ParseExpertUid(uid);
  if (!parsed.ok()) return parsed.status();
  return NotFoundError("expert " + uid + " is not hosted here");
}

}  // namespace

Status ServerImpl::CheckTrainingHead(const net::RequestHead& head) {
  if (!verifier_) return Status::Ok();
  return verifier_->CheckHead(SignatureOf(head));
}

Status ServerImpl::VerifyTraining(const net::RequestHead& head, std::span<const uint8_t> body) {
  if (!verifier_) return Status::Ok();
  return verifier_->Verify(SignatureOf(head), head.method, head.path, HexEncode(Blake2b256(body)));
}

void ServerImpl::CountRequest(const std::string& op, Code code, double seconds) {
  metrics_
      .GetCounter("dmoe_requests_total", "Requests answered, by operation and code.",
                  {{"op", op}, {"code", std::string(CodeName(code))}})
      .Increment();
  if (code == Code::kOk) {
    metrics_
        .GetHistogram("dmoe_request_seconds", "Time from request parsed to answer encoded.",
                      LatencyBuckets(), {{"op", op}})
        .Observe(seconds);
  }
}

void ServerImpl::Dispatch(TaskKind kind, const std::string& uid, std::span<const uint8_t> blob,
                          std::map<std::string, std::string> extra_metadata, Reply reply) {
  const int64_t start_us = clock_.NowMonotonicUs();
  const std::string op = OpName(kind);
  auto finish = [this, op, start_us, reply](Result<std::vector<uint8_t>> r) {
    double seconds = (clock_.NowMonotonicUs() - start_us) / 1e6;
    CountRequest(op, r.ok() ? Code::kOk : r.status().code(), seconds);
    reply(std::move(r));
  };
  auto fail = [&](Status s) { finish(std::move(s)); };

  if (!runtime_->Hosts(uid)) return fail(UnhostedUidError(uid));
  Result<safetensors::Decoded> decoded = safetensors::Decode(blob);
  if (!decoded.ok()) return fail(decoded.status());
  Task task;
  task.kind = kind;
  for (const safetensors::TensorView& view : decoded->tensors) {
    const bool allowed = view.name == "x" || (view.name == "mask" && sequence_experts_) ||
                         (view.name == "grad_y" && kind == TaskKind::kBackward);
    if (!allowed) {
      return fail(InvalidArgumentError("tensor '" + view.name + "' is not accepted: " + op +
                                       " takes " +
                                       (kind == TaskKind::kForward ? "x" : "x and grad_y") +
                                       (sequence_experts_ ? " (and optionally mask)" : "")));
    }
    Result<at::Tensor> t = tensor::ToTorch(view);
    if (!t.ok()) return fail(t.status());
    if (view.name == "x") task.x = *t;
    if (view.name == "grad_y") task.grad_y = *t;
    if (view.name == "mask") task.mask = *t;
  }
  if (!task.x.defined()) return fail(InvalidArgumentError(op + " needs a tensor named 'x'"));
  if (kind == TaskKind::kBackward) {
    if (!task.grad_y.defined())
      return fail(InvalidArgumentError("backward needs a tensor named 'grad_y'"));
    auto seen = decoded->metadata.find("step_seen");
    if (seen != decoded->metadata.end()) {
      const std::optional<int64_t> v = ParseInteger<int64_t>(seen->second);
      if (!v || *v < 0) {
        return fail(InvalidArgumentError("step_seen '" + seen->second + "' is not a decimal step"));
      }
      task.step_seen = *v;
    }
  }
  if (InjectFailure()) return fail(UnavailableError("fault injection (--fail-rate)"));
  const std::string output_name = kind == TaskKind::kForward ? "y" : "grad_x";
  const bool inject_nan = kind == TaskKind::kForward && InjectNan();
  net::BufferPool* pool = &http_->buffer_pool();
  task.done = [uid, output_name, extra_metadata, finish, inject_nan, pool](Result<TaskResult> r) {
    if (!r.ok()) return finish(r.status());
    std::map<std::string, std::string> meta = extra_metadata;
    meta["uid"] = uid;
    meta["step"] = std::to_string(r->step);
    at::Tensor output = r->output;
    if (inject_nan) output = at::full_like(output, std::numeric_limits<double>::quiet_NaN());
    // Into a reused buffer; the network thread gives it back once written.
    std::vector<tensor::NamedTensor> tensors = {{output_name, output}};
    std::vector<uint8_t> blob = pool->Take(tensor::EncodedSizeHint(tensors));
    Status encoded = tensor::EncodeFromTorchInto(tensors, meta, &blob);
    if (!encoded.ok()) return finish(encoded);
    finish(std::move(blob));
  };
  // Submit refuses synchronously without calling done; answer those here.
  Reply on_refusal = finish;
  Status submitted = runtime_->Submit(uid, std::move(task));
  if (!submitted.ok()) on_refusal(submitted);
}

std::string ServerImpl::ExpertInfoJson(const std::string& uid) const {
  const int64_t d = options_.expert.hidden_dim;
  nlohmann::json shape = sequence_experts_ ? nlohmann::json{-1, -1, d} : nlohmann::json{-1, d};
  nlohmann::json inputs = {{{"name", "x"}, {"shape", shape}, {"dtypes", {"F32", "F16", "BF16"}}}};
  if (sequence_experts_)
    inputs.push_back(
        {{"name", "mask"}, {"shape", {-1, -1}}, {"dtypes", {"BOOL"}}, {"optional", true}});
  nlohmann::json info = {{"uid", uid},
                         {"type", options_.expert.type},
                         {"hidden_dim", d},
                         {"inputs", inputs},
                         {"outputs", {{{"name", "y"}, {"shape", shape}}}},
                         {"step", runtime_->step(uid)},
                         {"params", runtime_->num_parameters(uid)},
                         {"dtype", "F32"},
                         {"queued", runtime_->queued_samples(uid)}};
  return info.dump();
}

void ServerImpl::RegisterRoutes() {
  http_->Handle("GET", "/v1/health", [this](net::Request req, net::Responder respond) {
    nlohmann::json body = {{"status", "ok"},
                           {"peer_id", identity_.peer_id()},
                           {"experts", runtime_->uids().size()},
                           {"uptime_s", (clock_.NowUnixMs() - started_ms_) / 1000.0}};
    // A client's challenge: prove that this endpoint holds the key that announced it.
    if (std::optional<std::string_view> challenge = req.QueryValue("challenge")) {
      if (!IsChallengeHex(*challenge)) {
        return respond(net::Response::Error(InvalidArgumentError(
            "challenge must be " + std::to_string(kChallengeHexChars) + " hex characters")));
      }
      if (!proof_limiter_.Allow(clock_.NowUnixMs())) {
        return respond(net::Response::Error(
            ResourceExhaustedError("too many challenges this second; retry later")));
      }
      body["public_key"] = identity_.public_key_hex();
      body["proof"] = SignProof(identity_, *challenge);
    }
    respond(net::Response::Json(200, body.dump()));
  });
  http_->Handle("GET", "/v1/experts", [this](net::Request, net::Responder respond) {
    std::string body = "{\"experts\":[";
    bool first = true;
    for (const std::string& uid : runtime_->uids()) {
      body += (first ? "" : ",") + ExpertInfoJson(uid);
      first = false;
    }
    respond(net::Response::Json(200, body + "]}"));
  });
  http_->Handle("GET", "/v1/experts/{uid}", [this](net::Request req, net::Responder respond) {
    std::string uid(req.Param("uid").value_or(""));
    if (!runtime_->Hosts(uid)) return respond(net::Response::Error(UnhostedUidError(uid)));
    respond(net::Response::Json(200, ExpertInfoJson(uid)));
  });
  auto reply_http = [](net::Responder respond) {
    return [respond](Result<std::vector<uint8_t>> r) {
      if (!r.ok()) return respond(net::Response::Error(r.status()));
      respond(net::Response::Binary(200, net::kSafetensorsType, std::move(r).value()));
    };
  };
  http_->Handle(
      "POST", "/v1/experts/{uid}/forward",
      [this, reply_http](net::Request req, net::Responder respond) {
        Dispatch(TaskKind::kForward, std::string(req.Param("uid").value_or("")), req.body, {},
                 reply_http(respond));
        http_->buffer_pool().Give(std::move(req.body));  // Decoded into tensors by now.
      },
      [](const net::RequestHead& head) { return CheckContentType(head); });
  http_->Handle(
      "POST", "/v1/experts/{uid}/backward",
      [this, reply_http](net::Request req, net::Responder respond) {
        Status auth = VerifyTraining(req, req.body);
        if (!auth.ok()) {
          CountRequest("backward", auth.code(), 0);
          return respond(net::Response::Error(auth));
        }
        Dispatch(TaskKind::kBackward, std::string(req.Param("uid").value_or("")), req.body, {},
                 reply_http(respond));
        http_->buffer_pool().Give(std::move(req.body));
      },
      [this](const net::RequestHead& head) {
        // Authentication first, before the body is read or parsed.
        DMOE_RETURN_IF_ERROR(CheckTrainingHead(head));
        return CheckContentType(head);
      });
  http_->HandleWebSocket("/v1/ws",
                         net::WsHandlers{.on_open = {},
                                         .on_message =
                                             [this](const std::shared_ptr<net::WsConnection>& conn,
                                                    net::Bytes message) {
                                               HandleWsMessage(conn, message);
                                               http_->buffer_pool().Give(std::move(message));
                                             },
                                         .on_close = {}},
                         [this](const net::RequestHead& head) {
                           // Forward is open; an upgrade that carries a key wants to train and is
                           // verified now.
                           if (!verifier_ || !head.headers.Has(kKeyHeader)) return Status::Ok();
                           return VerifyTraining(head, {});
                         });
  http_->Handle("GET", "/metrics", [this](net::Request, net::Responder respond) {
    respond(net::Response::Text(200, "text/plain; version=0.0.4", metrics_.Render()));
  });
}

void ServerImpl::HandleWsMessage(const std::shared_ptr<net::WsConnection>& conn,
                                 std::span<const uint8_t> message) {
  HandleMessage(
      message, conn->head().headers.Has(kKeyHeader),
      [this, conn] { return conn->TryBeginRequest(options_.ws_max_in_flight); },
      [conn] { conn->EndRequest(); },
      [conn](std::vector<uint8_t> blob) { conn->Send(std::move(blob)).IgnoreError(); });
}

void ServerImpl::CallLocal(std::span<const uint8_t> message,
                           std::function<void(std::vector<uint8_t>)> answer) {
  // One answer per message, so the blob goes to `answer` once; no in-flight cap: the caller is
  // this process.
  HandleMessage(
      message, /*signed_upgrade=*/false, [] { return true; }, [] {}, std::move(answer));
}

void ServerImpl::HandleMessage(std::span<const uint8_t> message, bool signed_upgrade,
                               const std::function<bool()>& begin, std::function<void()> end,
                               std::function<void(std::vector<uint8_t>)> send) {
  Result<safetensors::Decoded> decoded = safetensors::Decode(message);
  if (!decoded.ok()) return send(WsErrorBlob("", "", decoded.status()));
  auto meta = [&](const char* key) {
    auto it = decoded->metadata.find(key);
    return it == decoded->metadata.end() ? std::string() : it->second;
  };
  const std::string id = meta("id"), op = meta("op"), uid = meta("uid");
  if (op != "forward" && op != "backward") {
    return send(WsErrorBlob(
        id, uid, InvalidArgumentError("op must be 'forward' or 'backward', got '" + op + "'")));
  }
  if (uid.empty())
    return send(WsErrorBlob(id, uid, InvalidArgumentError("the request names no uid")));
  const TaskKind kind = op == "forward" ? TaskKind::kForward : TaskKind::kBackward;
  if (kind == TaskKind::kBackward && verifier_ && !signed_upgrade) {
    CountRequest(op, Code::kUnauthenticated, 0);
    return send(WsErrorBlob(
        id, uid,
        UnauthenticatedError("backward on this server needs a WebSocket opened with a "
                             "signed upgrade (X-DMoE-Key, X-DMoE-Timestamp, X-DMoE-Nonce, "
                             "X-DMoE-Signature: dmoe-req-v2)")));
  }
  if (!begin()) {
    CountRequest(op, Code::kResourceExhausted, 0);
    return send(WsErrorBlob(
        id, uid,
        ResourceExhaustedError("more than " + std::to_string(options_.ws_max_in_flight) +
                               " requests in flight on this connection")));
  }
  Dispatch(kind, uid, message, {{"id", id}},
           [end = std::move(end), id, uid, send](Result<std::vector<uint8_t>> r) {
             end();
             send(r.ok() ? std::move(r).value() : WsErrorBlob(id, uid, r.status()));
           });
}

}  // namespace dmoe::expert_server
