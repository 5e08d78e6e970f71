// Inference (PROTOCOL section 5, POST /v1/models/{name}/infer) on a model of local layers only, so
// that no expert is involved: what the router answers for each kind of bad request, and the two
// answer formats (JSON and safetensors, the request's content type).
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <nlohmann/json.hpp>
#include <string>

#include "tensor/safetensors.h"
#include "tests/router/router_fixture.h"

namespace dmoe::router {
namespace {

std::vector<uint8_t> Bytes(const std::string& s) { return {s.begin(), s.end()}; }

// `values` as one F32 tensor `name` of `shape`, safetensors without metadata.
std::vector<uint8_t> Tensor(const std::string& name, std::vector<int64_t> shape,
                            const std::vector<float>& values) {
  return testing::EncodeF32({{name, std::move(shape), values}});
}

class InferTest : public RouterTest {
 protected:
  void SetUp() override {
    StartRouter();
    version_ = NowMs();
    ASSERT_EQ(Publish("tiny", TinyModel(std::to_string(version_))).status, 200);
  }
  // Expects `r` to be the error `code` with HTTP `status`.
  static void ExpectError(const net::Response& r, int status, const std::string& code) {
    EXPECT_EQ(r.status, status) << r.body_view();
    EXPECT_EQ(ErrorCodeOf(r), code) << r.body_view();
  }
  int64_t version_ = 0;
};

TEST_F(InferTest, JsonInputsGetJsonOutputsOfTheModel) {
  net::Response r =
      Infer("tiny", "application/json", Bytes(R"({"inputs": [[1, 2, 3, 4], [0, 0, 0, 0]]})"));
  ASSERT_EQ(r.status, 200) << r.body_view();
  nlohmann::json j = nlohmann::json::parse(r.body_view(), nullptr, false);
  ASSERT_TRUE(j.is_object()) << r.body_view();
  EXPECT_EQ(j["model_version"].get<int64_t>(), version_);
  ASSERT_EQ(j["outputs"].size(), 2u);
  // Every linear output is the same number, so layer_norm makes each row zeros.
  for (const nlohmann::json& row : j["outputs"]) {
    ASSERT_EQ(row.size(), 3u);
    for (const nlohmann::json& v : row) EXPECT_NEAR(v.get<double>(), 0.0, 1e-3);
  }
  // No moe layer, so no expert answered for any sample. (The router sends [] here rather than one
  // empty list per sample as PROTOCOL section 5 describes.)
  ASSERT_TRUE(j["experts"].is_array()) << r.body_view();
  for (const nlohmann::json& sample : j["experts"]) EXPECT_TRUE(sample.empty()) << r.body_view();
}

TEST_F(InferTest, AMissingContentTypeIsReadAsJson) {
  net::Response r = Infer("tiny", "", Bytes(R"({"inputs": [[1, 2, 3, 4]]})"));
  EXPECT_EQ(r.status, 200) << r.body_view();
}

TEST_F(InferTest, SafetensorsInputGetsSafetensorsOutput) {
  net::Response r = Infer("tiny", "application/x-safetensors", Tensor("x", {1, 4}, {1, 2, 3, 4}));
  ASSERT_EQ(r.status, 200) << r.body_view();
  EXPECT_EQ(r.content_type, "application/x-safetensors");
  Result<safetensors::Decoded> d = safetensors::Decode(r.body);
  ASSERT_TRUE(d.ok()) << d.status().ToString();
  const safetensors::TensorView* y = d->Find("y");
  ASSERT_NE(y, nullptr);
  EXPECT_EQ(y->dtype, safetensors::DType::kF32);
  EXPECT_EQ(y->shape, (std::vector<int64_t>{1, 3}));
  EXPECT_EQ(d->metadata["model_version"], std::to_string(version_));
}

TEST_F(InferTest, AnUnknownModelIsNotFound) {
  ExpectError(Infer("nope", "application/json", Bytes(R"({"inputs": [[1, 2, 3, 4]]})")), 404,
              "not_found");
}

TEST_F(InferTest, BadJsonBodiesAreInvalidArguments) {
  for (const std::string& body : {
           std::string("{nope"),                              // not JSON
           std::string(R"([[1, 2, 3, 4]])"),                  // not an object
           std::string(R"({"inputs": []})"),                  // no rows
           std::string(R"({"inputs": [[1, 2, 3]]})"),         // a row shorter than input_dim
           std::string(R"({"inputs": [[1, 2, 3, "4"]]})"),    // not a number
           std::string(R"({"inputs": [[1, 2, 3, 1e300]]})"),  // finite double, infinite F32
       }) {
    SCOPED_TRACE(body);
    ExpectError(Infer("tiny", "application/json", Bytes(body)), 400, "invalid_argument");
  }
}

TEST_F(InferTest, BadSafetensorsBodiesAreInvalidArguments) {
  const float nan = std::nanf("");
  ExpectError(Infer("tiny", "application/x-safetensors", Bytes("not safetensors")), 400,
              "invalid_argument");
  ExpectError(Infer("tiny", "application/x-safetensors", Tensor("z", {1, 4}, {1, 2, 3, 4})), 400,
              "invalid_argument");
  ExpectError(Infer("tiny", "application/x-safetensors", Tensor("x", {1, 3}, {1, 2, 3})), 400,
              "invalid_argument");
  ExpectError(Infer("tiny", "application/x-safetensors", Tensor("x", {4}, {1, 2, 3, 4})), 400,
              "invalid_argument");
  ExpectError(Infer("tiny", "application/x-safetensors", Tensor("x", {1, 4}, {1, nan, 3, 4})), 400,
              "invalid_argument");
}

TEST_F(InferTest, OtherContentTypesAreUnsupported) {
  ExpectError(Infer("tiny", "text/plain", Bytes("1 2 3 4")), 415, "unsupported_media_type");
}

}  // namespace
}  // namespace dmoe::router
