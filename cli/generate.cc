// `dmoe generate`: asks a router to continue a prompt with a published text model and prints the
// text as it is decoded (POST /v1/models/{name}/generate with "stream": true; PROTOCOL.md 5).
//   dmoe generate --router URL --model NAME [--max-tokens N] [--temperature T] [--top-k K]
//                 [--top-p P] [--seed S] [--stop STR]... PROMPT
// The text goes to stdout as it arrives, flushed per event; a summary line goes to stderr at the
// end: "generated N tokens in S s: R tokens/s, first token after F s, finish_reason X".
#include <CLI/CLI.hpp>

#include <chrono>
#include <iomanip>
#include <iostream>
#include <memory>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <vector>

#include "cli/commands.h"
#include "net/http_client.h"
#include "net/sse.h"

namespace dmoe::cli {
namespace {

// The longest a whole generation may take before the command gives up.
constexpr std::chrono::seconds kGenerateTimeout{600};

}  // namespace

int RunGenerate(const std::string& router, const std::string& model, const GenerateFlags& flags,
                std::ostream& out, std::ostream& err) {
  nlohmann::json request = {{"prompt", flags.prompt},
                            {"max_tokens", flags.max_tokens},
                            {"temperature", flags.temperature},
                            {"top_k", flags.top_k},
                            {"top_p", flags.top_p},
                            {"stream", true}};
  if (flags.seed) request["seed"] = *flags.seed;
  if (!flags.stop.empty()) request["stop"] = flags.stop;
  const std::string body = request.dump();

  const auto start = std::chrono::steady_clock::now();
  std::optional<double> first_token_s;
  std::optional<nlohmann::json> last;  // the event with finish_reason
  Status stream_error = Status::Ok();
  net::SseParser parser;
  Result<net::Response> head = net::FetchStream(
      "POST", router + "/v1/models/" + model + "/generate", {{"Content-Type", "application/json"}},
      net::Bytes(body.begin(), body.end()), kGenerateTimeout, [&](std::string_view piece) {
        stream_error = parser.Feed(piece, [&](net::SseMessage m) {
          nlohmann::json event = nlohmann::json::parse(m.data, nullptr, false);
          if (!event.is_object()) {
            stream_error = InternalError("the router sent an event that is not a JSON object");
            return;
          }
          const std::string text = event.value("text", "");
          if (!text.empty()) {
            if (!first_token_s) {
              first_token_s =
                  std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
            }
            out << text << std::flush;
          }
          if (event.contains("finish_reason")) last = std::move(event);
        });
        return stream_error.ok() && !last;
      });
  // A refusal (400, 404, 503) is a whole PROTOCOL section 3 body, and its Status here.
  if (!head.ok()) return PrintError(err, head.status());
  if (!stream_error.ok()) return PrintError(err, stream_error);
  if (!last) return PrintError(err, UnavailableError("the stream ended without a finish_reason"));
  const double seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  const int64_t tokens = (*last)["usage"].value("completion_tokens", int64_t{0});
  const std::string reason = (*last).value("finish_reason", "");
  out << "\n" << std::flush;
  err << "generated " << tokens << " tokens in " << std::fixed << std::setprecision(2) << seconds
      << " s: " << std::setprecision(1) << (seconds > 0 ? tokens / seconds : 0.0)
      << " tokens/s, first token after " << std::setprecision(3) << first_token_s.value_or(seconds)
      << " s, finish_reason " << reason << "\n";
  if (reason == "error") {
    const nlohmann::json& e = (*last)["error"];
    return PrintError(err, UnavailableError("the swarm failed mid-generation: " +
                                            e.value("code", std::string("?")) + ": " +
                                            e.value("message", std::string())));
  }
  return kExitOk;
}

void AddGenerateCommand(CLI::App& app, int* exit_code) {
  auto* cmd = app.add_subcommand(
      "generate", "Continue a prompt with a published text model, printing tokens as they arrive");
  auto router = std::make_shared<std::string>();
  auto model = std::make_shared<std::string>();
  auto flags = std::make_shared<GenerateFlags>();
  auto seed = std::make_shared<uint64_t>(0);
  cmd->add_option("--router", *router, "router URL, e.g. http://127.0.0.1:8000")->required();
  cmd->add_option("--model", *model, "model name")->required();
  cmd->add_option("--max-tokens", flags->max_tokens, "tokens (bytes) to generate at most")
      ->capture_default_str();
  cmd->add_option("--temperature", flags->temperature, "0 = greedy; higher = more varied")
      ->capture_default_str();
  cmd->add_option("--top-k", flags->top_k, "draw among the K most likely tokens; 0 = all")
      ->capture_default_str();
  cmd->add_option("--top-p", flags->top_p, "draw among the fewest tokens holding this much mass")
      ->capture_default_str();
  auto* seed_option = cmd->add_option("--seed", *seed, "seed of the draws (same seed, same text)");
  cmd->add_option("--stop", flags->stop, "end before this string; repeatable");
  cmd->add_option("prompt", flags->prompt, "the text to continue")->required();
  cmd->callback([=] {
    if (seed_option->count() > 0) flags->seed = *seed;
    *exit_code = RunGenerate(*router, *model, *flags, std::cout, std::cerr);
  });
}

}  // namespace dmoe::cli
