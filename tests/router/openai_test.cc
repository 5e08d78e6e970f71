// The OpenAI-compatible API: the translation of requests and answers (router/openai.h), then the
// routes under /openai/v1 of an in-process router serving the shift model (tests/openai/
// shift_model.h), whose every answer is known exactly.
#include "router/openai.h"

#include <gtest/gtest.h>

#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "net/http_client.h"
#include "net/sse.h"
#include "tests/openai/shift_model.h"
#include "tests/router/router_fixture.h"

namespace dmoe::router {
namespace {

using nlohmann::json;
using openai::Api;

Result<openai::Request> Parse(Api api, const json& body, std::string* param = nullptr) {
  return openai::ParseRequest(api, body.dump(), GenerateLimits{}, param);
}

// The param of the refusal of `body`, which must be a 400.
std::string RefusedParam(Api api, const json& body) {
  std::string param = "<unset>";
  Result<openai::Request> r = Parse(api, body, &param);
  EXPECT_FALSE(r.ok()) << body.dump();
  if (!r.ok()) {
    EXPECT_EQ(r.status().code(), Code::kInvalidArgument) << r.status().ToString();
  }
  return param;
}

TEST(OpenAiTranslateTest, CompletionsTakeOpenAiDefaultsAndKnobs) {
  Result<openai::Request> r = Parse(Api::kCompletions, {{"model", "shift"}, {"prompt", "abc"}});
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  EXPECT_EQ(r->model, "shift");
  EXPECT_EQ(r->params.prompt, "abc");
  EXPECT_EQ(r->params.max_tokens, 16);
  EXPECT_EQ(r->params.temperature, 1.0);
  EXPECT_FALSE(r->params.stream);
  EXPECT_TRUE(r->params.stop.empty());
  EXPECT_FALSE(r->params.seed.has_value());

  r = Parse(Api::kCompletions, {{"model", "shift"},
                                {"prompt", {"xy"}},
                                {"max_tokens", 5},
                                {"temperature", 0},
                                {"top_p", 0.5},
                                {"seed", -1},
                                {"stop", "\n"},
                                {"stream", true},
                                {"stream_options", {{"include_usage", true}}},
                                {"n", 1},
                                {"user", "someone"},  // unknown fields are ignored
                                {"presence_penalty", nullptr}});
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  EXPECT_EQ(r->params.prompt, "xy");
  EXPECT_EQ(r->params.max_tokens, 5);
  EXPECT_EQ(r->params.temperature, 0.0);
  EXPECT_EQ(r->params.top_p, 0.5);
  EXPECT_EQ(r->params.seed, UINT64_MAX);  // -1 modulo 2^64
  EXPECT_EQ(r->params.stop, std::vector<std::string>{"\n"});
  EXPECT_TRUE(r->params.stream);
  EXPECT_TRUE(r->include_usage);
}

TEST(OpenAiTranslateTest, ChatRendersTheTemplateAndAddsItsStop) {
  Result<openai::Request> r =
      Parse(Api::kChatCompletions,
            {{"model", "shift"},
             {"messages",
              {{{"role", "system"}, {"content", "Be brief."}},
               {{"role", "user"},
                {"content",
                 {{{"type", "text"}, {"text", "hi "}}, {{"type", "text"}, {"text", "there"}}}}},
               {{"role", "assistant"}, {"content", "Hello."}},
               {{"role", "user"}, {"content", "Bye"}}}},
             {"stop", {"!", "?"}}});
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  EXPECT_EQ(r->params.prompt,
            "system: Be brief.\nuser: hi there\nassistant: Hello.\nuser: Bye\nassistant: ");
  EXPECT_EQ(r->params.stop, (std::vector<std::string>{"!", "?", "\nuser:"}));
  // Chat runs until a stop or the model's context is full unless told otherwise.
  EXPECT_EQ(r->params.max_tokens, GenerateLimits{}.max_tokens);
  r = Parse(Api::kChatCompletions, {{"model", "m"},
                                    {"messages", {{{"role", "user"}, {"content", "x"}}}},
                                    {"max_completion_tokens", 7}});
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  EXPECT_EQ(r->params.max_tokens, 7);
  EXPECT_EQ(openai::RenderChat({{"user", "hi"}}), "user: hi\nassistant: ");
}

TEST(OpenAiTranslateTest, RefusalsNameTheirField) {
  const json chat_message = {{{"role", "user"}, {"content", "x"}}};
  EXPECT_EQ(RefusedParam(Api::kCompletions, {{"prompt", "a"}}), "model");
  EXPECT_EQ(RefusedParam(Api::kCompletions, {{"model", 3}, {"prompt", "a"}}), "model");
  EXPECT_EQ(RefusedParam(Api::kCompletions, {{"model", "m"}}), "prompt");
  EXPECT_EQ(RefusedParam(Api::kCompletions, {{"model", "m"}, {"prompt", {"a", "b"}}}), "prompt");
  EXPECT_EQ(RefusedParam(Api::kCompletions, {{"model", "m"}, {"prompt", {1, 2}}}), "prompt");
  EXPECT_EQ(RefusedParam(Api::kCompletions, {{"model", "m"}, {"prompt", "a"}, {"n", 2}}), "n");
  EXPECT_EQ(RefusedParam(Api::kCompletions, {{"model", "m"}, {"prompt", "a"}, {"echo", true}}),
            "echo");
  EXPECT_EQ(RefusedParam(Api::kCompletions, {{"model", "m"}, {"prompt", "a"}, {"logprobs", 2}}),
            "logprobs");
  EXPECT_EQ(RefusedParam(Api::kCompletions, {{"model", "m"}, {"prompt", "a"}, {"best_of", 3}}),
            "best_of");
  EXPECT_EQ(RefusedParam(Api::kCompletions, {{"model", "m"}, {"prompt", "a"}, {"suffix", "z"}}),
            "suffix");
  EXPECT_EQ(RefusedParam(Api::kCompletions, {{"model", "m"}, {"prompt", "a"}, {"seed", 1.5}}),
            "seed");
  EXPECT_EQ(RefusedParam(Api::kCompletions, {{"model", "m"}, {"prompt", "a"}, {"stream", "yes"}}),
            "stream");
  EXPECT_EQ(
      RefusedParam(Api::kCompletions,
                   {{"model", "m"}, {"prompt", "a"}, {"stream_options", {{"include_usage", 1}}}}),
      "stream_options");
  EXPECT_EQ(RefusedParam(Api::kChatCompletions, {{"model", "m"}}), "messages");
  EXPECT_EQ(RefusedParam(Api::kChatCompletions, {{"model", "m"}, {"messages", json::array()}}),
            "messages");
  EXPECT_EQ(RefusedParam(Api::kChatCompletions,
                         {{"model", "m"}, {"messages", {{{"role", "tool"}, {"content", "x"}}}}}),
            "messages");
  EXPECT_EQ(
      RefusedParam(Api::kChatCompletions,
                   {{"model", "m"},
                    {"messages",
                     {{{"role", "user"}, {"content", {{{"type", "image_url"}, {"text", "x"}}}}}}}}),
      "messages");
  EXPECT_EQ(RefusedParam(
                Api::kChatCompletions,
                {{"model", "m"}, {"messages", chat_message}, {"tools", {{{"type", "function"}}}}}),
            "tools");
  // The template takes one of the 4 stop strings.
  EXPECT_EQ(
      RefusedParam(Api::kChatCompletions,
                   {{"model", "m"}, {"messages", chat_message}, {"stop", {"a", "b", "c", "d"}}}),
      "stop");
  json too_many = json::array();
  for (int i = 0; i < 65; ++i) too_many.push_back({{"role", "user"}, {"content", "x"}});
  EXPECT_EQ(RefusedParam(Api::kChatCompletions, {{"model", "m"}, {"messages", too_many}}),
            "messages");
  // Ranges are checked as dmoe's own generate route checks them (the message names the field).
  std::string param;
  Result<openai::Request> r =
      Parse(Api::kCompletions, {{"model", "m"}, {"prompt", "a"}, {"temperature", 5}}, &param);
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), Code::kInvalidArgument);
  EXPECT_NE(r.status().message().find("temperature"), std::string::npos) << r.status().message();
  r = Parse(Api::kCompletions, {{"model", "m"}, {"prompt", std::string(8193, 'a')}});
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), Code::kInvalidArgument);
  // Not JSON, and too large.
  r = openai::ParseRequest(Api::kCompletions, "{\"model\":", GenerateLimits{}, &param);
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), Code::kInvalidArgument);
  EXPECT_EQ(param, "");
  r = openai::ParseRequest(Api::kCompletions, std::string(openai::kMaxBodyBytes + 1, ' '),
                           GenerateLimits{});
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), Code::kPayloadTooLarge);
}

TEST(OpenAiTranslateTest, ErrorObjectsHaveOpenAisShape) {
  EXPECT_EQ(json::parse(openai::ErrorJson(InvalidArgumentError("n must be 1"), "n")),
            json({{"error",
                   {{"message", "n must be 1"},
                    {"type", "invalid_request_error"},
                    {"param", "n"},
                    {"code", "invalid_argument"}}}}));
  EXPECT_EQ(json::parse(openai::ErrorJson(NotFoundError("no model x"), "model", "model_not_found")),
            json({{"error",
                   {{"message", "no model x"},
                    {"type", "invalid_request_error"},
                    {"param", "model"},
                    {"code", "model_not_found"}}}}));
  EXPECT_EQ(json::parse(openai::ErrorJson(UnavailableError("busy"))),
            json({{"error",
                   {{"message", "busy"},
                    {"type", "server_error"},
                    {"param", nullptr},
                    {"code", "unavailable"}}}}));
  EXPECT_EQ(json::parse(openai::ErrorJson(ResourceExhaustedError("slow down")))["error"]["type"],
            "rate_limit_error");
}

TEST(OpenAiTranslateTest, ModelListGivesVersionSeconds) {
  EXPECT_EQ(
      json::parse(openai::ModelListJson({{"shift", 1700000000123}, {"kjv", 5000}})),
      json({{"object", "list"},
            {"data",
             {{{"id", "shift"}, {"object", "model"}, {"created", 1700000000}, {"owned_by", "dmoe"}},
              {{"id", "kjv"}, {"object", "model"}, {"created", 5}, {"owned_by", "dmoe"}}}}}));
}

GenerationEvent Piece(std::string text) {
  GenerationEvent e;
  e.text = std::move(text);
  return e;
}
GenerationEvent Last(FinishReason reason, std::string text = "") {
  return {.text = std::move(text),
          .done = true,
          .finish_reason = reason,
          .error = reason == FinishReason::kError ? UnavailableError("2 of 16 experts answered")
                                                  : Status::Ok(),
          .prompt_tokens = 3,
          .completion_tokens = 4,
          .model_version = 9};
}

TEST(OpenAiTranslateTest, CompletionAnswerWholeAndStreamed) {
  openai::Answer answer(Api::kCompletions, "shift", "cmpl-7", 1700000000, false);
  const json frame = {
      {"id", "cmpl-7"}, {"object", "text_completion"}, {"created", 1700000000}, {"model", "shift"}};
  json body = frame;
  body["choices"] = {
      {{"index", 0}, {"text", "bcde"}, {"logprobs", nullptr}, {"finish_reason", "stop"}}};
  body["usage"] = {{"prompt_tokens", 3}, {"completion_tokens", 4}, {"total_tokens", 7}};
  EXPECT_EQ(json::parse(answer.Body("bcde", Last(FinishReason::kStop))), body);

  EXPECT_TRUE(answer.StreamStart().empty());
  std::vector<std::string> piece = answer.StreamEvents(Piece("bc"));
  ASSERT_EQ(piece.size(), 1u);
  json chunk = frame;
  chunk["choices"] = {
      {{"index", 0}, {"text", "bc"}, {"logprobs", nullptr}, {"finish_reason", nullptr}}};
  EXPECT_EQ(json::parse(piece[0]), chunk);
  std::vector<std::string> last = answer.StreamEvents(Last(FinishReason::kLength, "d"));
  ASSERT_EQ(last.size(), 3u);
  chunk["choices"][0]["text"] = "d";
  EXPECT_EQ(json::parse(last[0]), chunk);
  chunk["choices"][0]["text"] = "";
  chunk["choices"][0]["finish_reason"] = "length";
  EXPECT_EQ(json::parse(last[1]), chunk);
  EXPECT_EQ(last[2], "[DONE]");
}

TEST(OpenAiTranslateTest, ChatAnswerWholeAndStreamedWithUsage) {
  openai::Answer answer(Api::kChatCompletions, "shift", "chatcmpl-1", 5, true);
  json body = json::parse(answer.Body("Hi", Last(FinishReason::kLength)));
  EXPECT_EQ(body["object"], "chat.completion");
  EXPECT_EQ(body["choices"], json({{{"index", 0},
                                    {"message", {{"role", "assistant"}, {"content", "Hi"}}},
                                    {"logprobs", nullptr},
                                    {"finish_reason", "length"}}}));

  std::vector<std::string> start = answer.StreamStart();
  ASSERT_EQ(start.size(), 1u);
  json first = json::parse(start[0]);
  EXPECT_EQ(first["object"], "chat.completion.chunk");
  EXPECT_EQ(first["choices"][0]["delta"], json({{"role", "assistant"}, {"content", ""}}));
  EXPECT_EQ(first["choices"][0]["finish_reason"], nullptr);
  EXPECT_EQ(json::parse(answer.StreamEvents(Piece("H"))[0])["choices"][0]["delta"],
            json({{"content", "H"}}));
  std::vector<std::string> last = answer.StreamEvents(Last(FinishReason::kStop));
  ASSERT_EQ(last.size(), 3u);
  EXPECT_EQ(json::parse(last[0])["choices"][0]["finish_reason"], "stop");
  json usage = json::parse(last[1]);
  EXPECT_EQ(usage["choices"], json::array());
  EXPECT_EQ(usage["usage"],
            json({{"prompt_tokens", 3}, {"completion_tokens", 4}, {"total_tokens", 7}}));
  EXPECT_EQ(last[2], "[DONE]");
}

// OpenAI has no "error" finish reason: a swarm failure mid-stream is an error event, then [DONE].
TEST(OpenAiTranslateTest, ASwarmFailureMidStreamIsAnErrorEvent) {
  openai::Answer answer(Api::kChatCompletions, "shift", "chatcmpl-2", 5, true);
  std::vector<std::string> last = answer.StreamEvents(Last(FinishReason::kError, "x"));
  ASSERT_EQ(last.size(), 3u);
  EXPECT_EQ(json::parse(last[0])["choices"][0]["delta"]["content"], "x");
  EXPECT_EQ(json::parse(last[1]), json({{"error",
                                         {{"message", "2 of 16 experts answered"},
                                          {"type", "server_error"},
                                          {"param", nullptr},
                                          {"code", "unavailable"}}}}));
  EXPECT_EQ(last[2], "[DONE]");
}

// The routes, on an in-process router with the shift model published (no swarm needed).
class OpenAiRouteTest : public RouterTest {
 protected:
  void SetUp() override {
    StartRouter();
    ASSERT_EQ(Publish("shift", testing::ShiftModel("shift", false, NowMs())).status, 200);
  }

  net::Response Post(const std::string& path, const json& body,
                     const std::string& content_type = "application/json") {
    const std::string text = body.dump();
    net::Headers headers;
    if (!content_type.empty()) headers.Set("Content-Type", content_type);
    Result<net::Response> r =
        net::Fetch("POST", router_->endpoint() + path, std::move(headers),
                   net::Bytes(text.begin(), text.end()), std::chrono::seconds(30),
                   net::RequestOptions{.raw_error_responses = true});
    EXPECT_TRUE(r.ok()) << r.status().ToString();
    return r.ok() ? std::move(r).value() : net::Response{};
  }

  // The data of every SSE message of a streamed answer.
  static std::vector<std::string> SseData(const net::Response& r) {
    std::vector<std::string> data;
    net::SseParser parser;
    Status s = parser.Feed(r.body_view(), [&](net::SseMessage m) { data.push_back(m.data); });
    EXPECT_TRUE(s.ok()) << s.ToString();
    return data;
  }
};

TEST_F(OpenAiRouteTest, ModelsListsTokenModelsOnly) {
  const int64_t version = NowMs();
  ASSERT_EQ(Publish("tiny", TinyModel(std::to_string(version))).status, 200);
  Result<net::Response> r = net::Fetch("GET", router_->endpoint() + "/openai/v1/models");
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  ASSERT_EQ(r->status, 200);
  json list = json::parse(r->body_view());
  EXPECT_EQ(list["object"], "list");
  ASSERT_EQ(list["data"].size(), 1u) << list.dump();
  EXPECT_EQ(list["data"][0]["id"], "shift");
  EXPECT_EQ(list["data"][0]["owned_by"], "dmoe");
  EXPECT_LE(list["data"][0]["created"].get<int64_t>(), version / 1000);
  EXPECT_GT(list["data"][0]["created"].get<int64_t>(), version / 1000 - 600);
}

TEST_F(OpenAiRouteTest, CompletionIsTheShiftedPrompt) {
  net::Response r =
      Post("/openai/v1/completions",
           {{"model", "shift"}, {"prompt", "a"}, {"max_tokens", 5}, {"temperature", 0}});
  ASSERT_EQ(r.status, 200) << r.body_view();
  json body = json::parse(r.body_view());
  EXPECT_EQ(body["object"], "text_completion");
  EXPECT_EQ(body["model"], "shift");
  EXPECT_EQ(body["id"].get<std::string>().rfind("cmpl-", 0), 0u) << body["id"];
  EXPECT_EQ(body["choices"][0]["text"], "bcdef");
  EXPECT_EQ(body["choices"][0]["finish_reason"], "length");
  EXPECT_EQ(body["usage"],
            json({{"prompt_tokens", 1}, {"completion_tokens", 5}, {"total_tokens", 6}}));

  r = Post("/openai/v1/completions", {{"model", "shift"}, {"prompt", "a"}, {"stop", "e"}});
  ASSERT_EQ(r.status, 200) << r.body_view();
  body = json::parse(r.body_view());
  EXPECT_EQ(body["choices"][0]["text"], "bcd");
  EXPECT_EQ(body["choices"][0]["finish_reason"], "stop");
}

TEST_F(OpenAiRouteTest, CompletionStreamsChunksThenDone) {
  net::Response r = Post("/openai/v1/completions", {{"model", "shift"},
                                                    {"prompt", "a"},
                                                    {"max_tokens", 4},
                                                    {"stream", true},
                                                    {"stream_options", {{"include_usage", true}}}});
  ASSERT_EQ(r.status, 200) << r.body_view();
  EXPECT_EQ(net::MediaTypeOf(r.headers), "text/event-stream");
  std::vector<std::string> data = SseData(r);
  ASSERT_GE(data.size(), 4u);
  EXPECT_EQ(data.back(), "[DONE]");
  std::string text;
  for (size_t i = 0; i + 3 < data.size(); ++i) {
    json chunk = json::parse(data[i]);
    EXPECT_EQ(chunk["choices"][0]["finish_reason"], nullptr);
    text += chunk["choices"][0]["text"].get<std::string>();
  }
  EXPECT_EQ(text, "bcde");
  json last = json::parse(data[data.size() - 3]);
  EXPECT_EQ(last["choices"][0]["finish_reason"], "length");
  EXPECT_EQ(last["choices"][0]["text"], "");
  EXPECT_EQ(json::parse(data[data.size() - 2])["usage"],
            json({{"prompt_tokens", 1}, {"completion_tokens", 4}, {"total_tokens", 5}}));
}

TEST_F(OpenAiRouteTest, ChatWholeAndStreamed) {
  const json request = {
      {"model", "shift"}, {"messages", {{{"role", "user"}, {"content", "hi"}}}}, {"max_tokens", 3}};
  net::Response r = Post("/openai/v1/chat/completions", request);
  ASSERT_EQ(r.status, 200) << r.body_view();
  json body = json::parse(r.body_view());
  EXPECT_EQ(body["object"], "chat.completion");
  // "user: hi\nassistant: " ends with a space: the shift model continues "!\"#".
  EXPECT_EQ(body["choices"][0]["message"], json({{"role", "assistant"}, {"content", "!\"#"}}));
  EXPECT_EQ(body["usage"]["prompt_tokens"], 20);

  json streamed = request;
  streamed["stream"] = true;
  r = Post("/openai/v1/chat/completions", streamed);
  ASSERT_EQ(r.status, 200) << r.body_view();
  std::vector<std::string> data = SseData(r);
  ASSERT_GE(data.size(), 3u);
  EXPECT_EQ(json::parse(data.front())["choices"][0]["delta"]["role"], "assistant");
  EXPECT_EQ(data.back(), "[DONE]");
  std::string text;
  for (size_t i = 0; i + 1 < data.size(); ++i) {
    text += json::parse(data[i])["choices"][0]["delta"].value("content", "");
  }
  EXPECT_EQ(text, "!\"#");
  EXPECT_EQ(json::parse(data[data.size() - 2])["choices"][0]["finish_reason"], "length");
}

TEST_F(OpenAiRouteTest, ErrorsAreOpenAiErrorObjects) {
  net::Response r = Post("/openai/v1/completions", {{"model", "nope"}, {"prompt", "a"}});
  EXPECT_EQ(r.status, 404);
  json error = json::parse(r.body_view())["error"];
  EXPECT_EQ(error["code"], "model_not_found");
  EXPECT_EQ(error["param"], "model");
  EXPECT_EQ(error["type"], "invalid_request_error");

  r = Post("/openai/v1/completions", {{"model", "shift"}, {"prompt", "a"}, {"n", 3}});
  EXPECT_EQ(r.status, 400);
  EXPECT_EQ(json::parse(r.body_view())["error"]["param"], "n");

  r = Post("/openai/v1/completions", {{"model", "shift"}, {"prompt", "a"}}, "text/plain");
  EXPECT_EQ(r.status, 415);
  EXPECT_EQ(json::parse(r.body_view())["error"]["code"], "unsupported_media_type");

  // A feature model cannot generate.
  ASSERT_EQ(Publish("tiny", TinyModel(std::to_string(NowMs()))).status, 200);
  r = Post("/openai/v1/completions", {{"model", "tiny"}, {"prompt", "a"}});
  EXPECT_EQ(r.status, 400);
  EXPECT_EQ(json::parse(r.body_view())["error"]["code"], "invalid_argument");

  // Past 64 KiB the body is not read.
  r = Post(
      "/openai/v1/completions",
      {{"model", "shift"}, {"prompt", "a"}, {"user", std::string(openai::kMaxBodyBytes, 'u')}});
  EXPECT_EQ(r.status, 413);
}

// A moe layer with no experts to ask: the swarm cannot answer the first token.
TEST_F(OpenAiRouteTest, ASwarmThatCannotAnswerIs503OrAnErrorEvent) {
  ASSERT_EQ(Publish("lonely", testing::ShiftModel("lonely", true, NowMs())).status, 200);
  net::Response r = Post("/openai/v1/completions", {{"model", "lonely"}, {"prompt", "a"}});
  EXPECT_EQ(r.status, 503) << r.body_view();
  EXPECT_EQ(json::parse(r.body_view())["error"]["code"], "unavailable");

  r = Post("/openai/v1/chat/completions", {{"model", "lonely"},
                                           {"messages", {{{"role", "user"}, {"content", "hi"}}}},
                                           {"stream", true}});
  ASSERT_EQ(r.status, 200) << r.body_view();
  std::vector<std::string> data = SseData(r);
  ASSERT_EQ(data.size(), 3u) << r.body_view();
  EXPECT_EQ(json::parse(data[0])["choices"][0]["delta"]["role"], "assistant");
  EXPECT_EQ(json::parse(data[1])["error"]["code"], "unavailable");
  EXPECT_EQ(json::parse(data[1])["error"]["type"], "server_error");
  EXPECT_EQ(data[2], "[DONE]");
}

}  // namespace
}  // namespace dmoe::router
