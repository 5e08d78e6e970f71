#include "model/model_spec.h"

#include <gtest/gtest.h>

namespace dmoe::model {
namespace {

constexpr char kSpec[] = R"({"name": "fmnist", "input_dim": 784, "layers": [
  {"type": "linear", "out": 64}, {"type": "relu"},
  {"type": "residual_moe", "uid_prefix": "ffn", "grid": [4, 4], "k_best": 4, "k_min": 2,
   "forward_timeout_ms": 3000, "timeout_after_k_min_ms": 200, "backward_k_min": 1,
   "backward_timeout_ms": 2500},
  {"type": "layer_norm"}, {"type": "gelu"}, {"type": "linear", "out": 10}]})";

TEST(ModelSpecTest, ParsesTheProtocolExampleAndTracksWidths) {
  Result<ModelSpec> spec = ParseModelSpec(kSpec);
  ASSERT_TRUE(spec.ok()) << spec.status().ToString();
  EXPECT_EQ(spec->name, "fmnist");
  EXPECT_EQ(spec->input_dim, 784);
  ASSERT_EQ(spec->layers.size(), 6u);
  const std::vector<LayerType> types = {LayerType::kLinear,      LayerType::kRelu,
                                        LayerType::kResidualMoe, LayerType::kLayerNorm,
                                        LayerType::kGelu,        LayerType::kLinear};
  for (size_t i = 0; i < types.size(); ++i) EXPECT_EQ(spec->layers[i].type, types[i]) << i;
  EXPECT_EQ(spec->layers[0].in_features, 784);
  EXPECT_EQ(spec->layers[0].out_features, 64);
  const MoeLayerSpec& moe = spec->layers[2].moe;
  EXPECT_EQ(moe.uid_prefix, "ffn");
  EXPECT_EQ(moe.grid, (std::vector<int64_t>{4, 4}));
  EXPECT_EQ(moe.k_min, 2);
  EXPECT_EQ(moe.timeout_after_k_min_ms, 200);
  EXPECT_EQ(moe.backward_timeout_ms, 2500);
  EXPECT_EQ(spec->layers[2].in_features, 64);
  EXPECT_EQ(spec->output_dim(), 10);
  EXPECT_EQ(spec->GridPrefixes(), (std::vector<std::string>{"ffn."}));
  // ToJson round-trips.
  Result<ModelSpec> again = ParseModelSpec(spec->ToJson());
  ASSERT_TRUE(again.ok());
  EXPECT_EQ(again->ToJson(), spec->ToJson());
}

TEST(ModelSpecTest, DropoutKeepsTheWidthAndRoundTripsItsP) {
  auto spec = ParseModelSpec(
      R"({"name":"m","input_dim":8,"layers":[{"type":"dropout","p":0.25},{"type":"linear","out":3}]})");
  ASSERT_TRUE(spec.ok()) << spec.status().ToString();
  EXPECT_EQ(spec->layers[0].type, LayerType::kDropout);
  EXPECT_DOUBLE_EQ(spec->layers[0].p, 0.25);
  EXPECT_EQ(spec->layers[0].out_features, 8);
  Result<ModelSpec> again = ParseModelSpec(spec->ToJson());
  ASSERT_TRUE(again.ok());
  EXPECT_DOUBLE_EQ(again->layers[0].p, 0.25);
}

TEST(ModelSpecTest, MoeDefaultsApplyWhenOmitted) {
  auto spec = ParseModelSpec(
      R"({"name":"m","input_dim":8,"layers":[{"type":"moe","uid_prefix":"e","grid":[3]}]})");
  ASSERT_TRUE(spec.ok()) << spec.status().ToString();
  EXPECT_EQ(spec->layers[0].moe.k_best, 4);
  EXPECT_EQ(spec->layers[0].moe.k_min, 1);
  EXPECT_EQ(spec->output_dim(), 8);
}

TEST(ModelSpecTest, RefusalsNameTheLayerAndField) {
  struct Case {
    const char* json;
    const char* says;
  };
  const Case cases[] = {
      {"[]", "not a JSON object"},
      {"{", "not a JSON object"},
      {R"({"input_dim":4,"layers":[{"type":"relu"}]})", "'name'"},
      {R"({"name":"m","input_dim":0,"layers":[{"type":"relu"}]})", "'input_dim' is 0"},
      {R"({"name":"m","input_dim":4,"layers":[]})", "non-empty list"},
      {R"({"name":"m","input_dim":4,"layers":[{"type":"conv"}]})", "layer 0: unknown type 'conv'"},
      {R"({"name":"m","input_dim":4,"layers":[{"type":"relu"},{"type":"linear"}]})",
       "layer 1: missing 'out'"},
      {R"({"name":"m","input_dim":4,"layers":[{"type":"linear","out":2.5}]})",
       "must be an integer"},
      {R"({"name":"m","input_dim":4,"layers":[{"type":"relu","out":3}]})", "unknown field 'out'"},
      {R"({"name":"m","input_dim":4,"layers":[{"type":"moe","grid":[2]}]})", "uid_prefix"},
      {R"({"name":"m","input_dim":4,"layers":[{"type":"moe","uid_prefix":"9x","grid":[2]}]})",
       "not a uid prefix"},
      {R"({"name":"m","input_dim":4,"layers":[{"type":"moe","uid_prefix":"f","grid":[]}]})",
       "'grid'"},
      {R"({"name":"m","input_dim":4,"layers":[{"type":"moe","uid_prefix":"f","grid":[0]}]})",
       "grid sizes"},
      {R"({"name":"m","input_dim":4,"layers":[{"type":"moe","uid_prefix":"f","grid":[2],"k_best":2,"k_min":3}]})",
       "'k_min' is 3"},
      {R"({"name":"m","input_dim":4,"extra":1,"layers":[{"type":"relu"}]})",
       "unknown field 'extra'"},
      {R"({"name":"m","input_dim":4,"layers":[{"type":"dropout"}]})", "layer 0: missing 'p'"},
      {R"({"name":"m","input_dim":4,"layers":[{"type":"dropout","p":1}]})",
       "'p' is 1, allowed [0, 1)"},
      {R"({"name":"m","input_dim":4,"layers":[{"type":"dropout","p":-0.1}]})", "allowed [0, 1)"},
      {R"({"name":"m","input_dim":4,"layers":[{"type":"dropout","p":"0.5"}]})",
       "'p' must be a number"},
  };
  for (const Case& c : cases) {
    Result<ModelSpec> r = ParseModelSpec(c.json);
    ASSERT_FALSE(r.ok()) << c.json;
    EXPECT_EQ(r.status().code(), Code::kInvalidArgument);
    EXPECT_NE(r.status().message().find(c.says), std::string::npos)
        << c.json << " -> " << r.status().message();
  }
}

}  // namespace
}  // namespace dmoe::model
