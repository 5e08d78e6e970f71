#include "core/status.h"

#include <gtest/gtest.h>

#include <nlohmann/json.hpp>

namespace dmoe {
namespace {

TEST(StatusTest, CodesMapToProtocolNamesAndHttpStatuses) {
  struct Row {
    Code code;
    const char* name;
    int http;
    bool retryable;
  };
  const Row rows[] = {
      {Code::kInvalidArgument, "invalid_argument", 400, false},
      {Code::kUnauthenticated, "unauthenticated", 401, false},
      {Code::kPermissionDenied, "permission_denied", 403, false},
      {Code::kNotFound, "not_found", 404, false},
      {Code::kPayloadTooLarge, "payload_too_large", 413, false},
      {Code::kUnsupportedMediaType, "unsupported_media_type", 415, false},
      {Code::kResourceExhausted, "resource_exhausted", 429, true},
      {Code::kInternal, "internal", 500, true},
      {Code::kUnavailable, "unavailable", 503, true},
      {Code::kDeadlineExceeded, "deadline_exceeded", 504, true},
  };
  for (const Row& row : rows) {
    EXPECT_EQ(CodeName(row.code), row.name);
    EXPECT_EQ(HttpStatus(row.code), row.http) << row.name;
    EXPECT_EQ(IsRetryable(row.code), row.retryable) << row.name;
    EXPECT_EQ(CodeFromName(row.name), row.code);
  }
  EXPECT_EQ(CodeFromName("no_such_code"), std::nullopt);
}

TEST(StatusTest, JsonBodyFollowsProtocolSection3) {
  Status s = NotFoundError("expert ffn.9 is not hosted here");
  auto body = nlohmann::json::parse(s.ToJson());
  EXPECT_EQ(body["error"]["code"], "not_found");
  EXPECT_EQ(body["error"]["message"], "expert ffn.9 is not hosted here");
}

TEST(StatusTest, JsonBodySurvivesInvalidUtf8InMessage) {
  Status s = InvalidArgumentError(std::string("bad \xff name"));
  auto body = nlohmann::json::parse(s.ToJson());
  EXPECT_EQ(body["error"]["code"], "invalid_argument");
}

Result<int> Half(int x) {
  if (x % 2 != 0) return InvalidArgumentError("odd: " + std::to_string(x));
  return x / 2;
}

Result<int> Quarter(int x) {
  DMOE_ASSIGN_OR_RETURN(int half, Half(x));
  DMOE_ASSIGN_OR_RETURN(int quarter, Half(half));
  return quarter;
}

Status CheckEven(int x) {
  DMOE_RETURN_IF_ERROR(Half(x));
  return Status::Ok();
}

TEST(StatusTest, MacrosPropagateTheFirstError) {
  EXPECT_EQ(*Quarter(8), 2);
  Result<int> r = Quarter(6);
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), Code::kInvalidArgument);
  EXPECT_EQ(r.status().message(), "odd: 3");
  EXPECT_TRUE(CheckEven(4).ok());
  EXPECT_EQ(CheckEven(5).code(), Code::kInvalidArgument);
}

TEST(StatusTest, ResultFromOkStatusBecomesInternal) {
  Result<int> r{Status::Ok()};
  EXPECT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), Code::kInternal);
}

}  // namespace
}  // namespace dmoe
