#include "model/model_spec.h"

#include <gtest/gtest.h>

#include <fstream>
#include <sstream>

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

// A spec and a part of the message that refuses it.
struct Refusal {
  std::string json;
  std::string says;
};

void ExpectRefusals(const std::vector<Refusal>& cases) {
  for (const Refusal& c : cases) {
    Result<ModelSpec> r = ParseModelSpec(c.json);
    ASSERT_FALSE(r.ok()) << c.json;
    EXPECT_EQ(r.status().code(), Code::kInvalidArgument);
    EXPECT_NE(r.status().message().find(c.says), std::string::npos)
        << c.json << " -> " << r.status().message();
  }
}

TEST(ModelSpecTest, RefusalsNameTheLayerAndField) {
  const std::vector<Refusal> cases = {
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
  ExpectRefusals(cases);
}

constexpr char kTokenSpec[] = R"({"name": "lm", "input": "tokens", "vocab": 256, "max_len": 64,
  "layers": [{"type": "embedding", "dim": 32}, {"type": "positions"},
    {"type": "attention", "heads": 4, "rotary": true},
    {"type": "residual_moe", "pre_norm": true, "uid_prefix": "ffn", "grid": [4, 4], "k_best": 2},
    {"type": "layer_norm"}, {"type": "lm_head", "tied": true}]})";

TEST(ModelSpecTest, ParsesATokenModelAndTracksWidths) {
  Result<ModelSpec> spec = ParseModelSpec(kTokenSpec);
  ASSERT_TRUE(spec.ok()) << spec.status().ToString();
  EXPECT_EQ(spec->input, InputKind::kTokens);
  EXPECT_EQ(spec->input_dim, 0);
  EXPECT_EQ(spec->vocab, 256);
  EXPECT_EQ(spec->max_len, 64);
  const std::vector<LayerType> types = {LayerType::kEmbedding, LayerType::kPositions,
                                        LayerType::kAttention, LayerType::kResidualMoe,
                                        LayerType::kLayerNorm, LayerType::kLmHead};
  ASSERT_EQ(spec->layers.size(), types.size());
  for (size_t i = 0; i < types.size(); ++i) EXPECT_EQ(spec->layers[i].type, types[i]) << i;
  EXPECT_EQ(spec->layers[0].in_features, 256);  // one token id out of the vocabulary
  EXPECT_EQ(spec->layers[0].out, 32);
  EXPECT_EQ(spec->layers[0].out_features, 32);
  EXPECT_EQ(spec->layers[1].max_len, 64);
  EXPECT_EQ(spec->layers[2].heads, 4);
  EXPECT_TRUE(spec->layers[2].rotary);
  EXPECT_EQ(spec->layers[2].out_features, 32);
  EXPECT_TRUE(spec->layers[3].pre_norm);
  EXPECT_EQ(spec->layers[3].in_features, 32);
  EXPECT_TRUE(spec->layers[5].tied);
  EXPECT_EQ(spec->layers[5].in_features, 32);
  EXPECT_EQ(spec->output_dim(), 256);
  EXPECT_EQ(spec->GridPrefixes(), (std::vector<std::string>{"ffn."}));
  // embedding 256*32, positions 64*32, attention 4*32*32 + 6*32, gating 2*(33*4) + norm 2*32,
  // layer_norm 2*32, tied head 0.
  EXPECT_DOUBLE_EQ(spec->LocalParameterCount(),
                   256 * 32 + 64 * 32 + (4 * 32 * 32 + 6 * 32) + (2 * 33 * 4 + 2 * 32) + 2 * 32);
  Result<ModelSpec> again = ParseModelSpec(spec->ToJson());
  ASSERT_TRUE(again.ok()) << again.status().ToString();
  EXPECT_EQ(again->ToJson(), spec->ToJson());
  EXPECT_EQ(again->input, InputKind::kTokens);
  EXPECT_EQ(again->max_len, 64);
  EXPECT_TRUE(again->layers[2].rotary);
  EXPECT_TRUE(again->layers[3].pre_norm);
  EXPECT_TRUE(again->layers[5].tied);
}

TEST(ModelSpecTest, AFeatureSpecReadsAsItAlwaysDid) {
  Result<ModelSpec> spec = ParseModelSpec(kSpec);
  ASSERT_TRUE(spec.ok()) << spec.status().ToString();
  EXPECT_EQ(spec->input, InputKind::kFeatures);
  EXPECT_FALSE(spec->layers[2].pre_norm);
  // No field of a token model appears in a feature spec's JSON.
  EXPECT_EQ(spec->ToJson().find("\"input\""), std::string::npos);
  EXPECT_EQ(spec->ToJson().find("pre_norm"), std::string::npos);
  // linear 784*64+64, gating 2*(65*4), layer_norm 2*64, linear 64*10+10: what the router counts.
  EXPECT_DOUBLE_EQ(spec->LocalParameterCount(), 784 * 64 + 64 + 2 * 65 * 4 + 2 * 64 + 64 * 10 + 10);
}

// The dense baseline's layer: what one ffn expert computes, run locally, in either kind of model.
TEST(ModelSpecTest, AResidualFfnKeepsTheWidthCountsItsParametersAndRoundTrips) {
  Result<ModelSpec> spec = ParseModelSpec(
      R"({"name":"d","input_dim":8,"layers":[{"type":"residual_ffn","hidden":32,"pre_norm":true},
          {"type":"residual_ffn","hidden":16},{"type":"linear","out":3}]})");
  ASSERT_TRUE(spec.ok()) << spec.status().ToString();
  EXPECT_EQ(spec->layers[0].type, LayerType::kResidualFfn);
  EXPECT_EQ(spec->layers[0].hidden, 32);
  EXPECT_TRUE(spec->layers[0].pre_norm);
  EXPECT_FALSE(spec->layers[1].pre_norm);
  EXPECT_EQ(spec->layers[1].in_features, 8);
  EXPECT_EQ(spec->layers[1].out_features, 8);
  EXPECT_TRUE(spec->GridPrefixes().empty());
  // norm 2*8, linear1 8*32+32, linear2 32*8+8, ffn norm 2*8; then without the pre-norm; linear.
  EXPECT_DOUBLE_EQ(spec->LocalParameterCount(), (16 + 8 * 32 + 32 + 32 * 8 + 8 + 16) +
                                                    (8 * 16 + 16 + 16 * 8 + 8 + 16) + (8 * 3 + 3));
  Result<ModelSpec> again = ParseModelSpec(spec->ToJson());
  ASSERT_TRUE(again.ok()) << again.status().ToString();
  EXPECT_EQ(again->ToJson(), spec->ToJson());
  EXPECT_EQ(ParseModelSpec(R"({"name":"d","input_dim":8,"layers":[{"type":"residual_ffn"}]})")
                .status()
                .message(),
            "layer 0: missing 'hidden'");
  EXPECT_EQ(ParseModelSpec(
                R"({"name":"d","input_dim":8,"layers":[{"type":"residual_ffn","hidden":4,"k":1}]})")
                .status()
                .message(),
            "layer 0: unknown field 'k'");
}

TEST(ModelSpecTest, TheKjvExampleParses) {
  std::ifstream in(std::string(DMOE_SOURCE_DIR) + "/examples/kjv_lm.json");
  ASSERT_TRUE(in) << "examples/kjv_lm.json not found";
  std::stringstream text;
  text << in.rdbuf();
  Result<ModelSpec> spec = ParseModelSpec(text.str());
  ASSERT_TRUE(spec.ok()) << spec.status().ToString();
  EXPECT_EQ(spec->input, InputKind::kTokens);
  EXPECT_EQ(spec->vocab, 256);
  EXPECT_EQ(spec->max_len, 128);
  EXPECT_EQ(spec->output_dim(), 256);
  EXPECT_EQ(spec->GridPrefixes(), (std::vector<std::string>{"ffn0.", "ffn1."}));
}

// The dense baseline of bench/lm has the active parameters of kjv_lm to within 1%: each
// residual_ffn (hidden 1024) stands for k_best = 2 ffn experts of width 128 (hidden 512 each).
TEST(ModelSpecTest, TheDenseKjvExampleHasTheActiveParametersOfTheMixture) {
  auto read = [](const std::string& name) {
    std::ifstream in(std::string(DMOE_SOURCE_DIR) + "/examples/" + name);
    std::stringstream text;
    text << in.rdbuf();
    return ParseModelSpec(text.str());
  };
  Result<ModelSpec> moe = read("kjv_lm.json");
  Result<ModelSpec> dense = read("kjv_dense.json");
  ASSERT_TRUE(moe.ok()) << moe.status().ToString();
  ASSERT_TRUE(dense.ok()) << dense.status().ToString();
  EXPECT_TRUE(dense->GridPrefixes().empty());
  // One ffn expert of width 128: linear1 128*512+512, linear2 512*128+128, norm 2*128.
  const double expert = 128.0 * 512 + 512 + 512.0 * 128 + 128 + 2 * 128;
  const double active = moe->LocalParameterCount() + 2 /*layers*/ * 2 /*k_best*/ * expert;
  EXPECT_DOUBLE_EQ(moe->LocalParameterCount(), 184592);
  EXPECT_DOUBLE_EQ(active, 712464);
  EXPECT_DOUBLE_EQ(dense->LocalParameterCount(), 709632);
}

TEST(ModelSpecTest, TokenModelRefusalsNameTheLayerAndField) {
  const std::string head = R"({"name":"m","input":"tokens","vocab":16,"max_len":8,"layers":[)";
  const std::string emb = R"({"type":"embedding","dim":8})";
  const std::string lm = R"({"type":"lm_head"})";
  const std::vector<Refusal> cases = {
      {R"({"name":"m","input":"text","vocab":16,"max_len":8,"layers":[{"type":"relu"}]})",
       "'input' must be"},
      {R"({"name":"m","input":"tokens","max_len":8,"layers":[{"type":"relu"}]})",
       "missing 'vocab'"},
      {R"({"name":"m","input":"tokens","vocab":16,"layers":[{"type":"relu"}]})",
       "missing 'max_len'"},
      {R"({"name":"m","input":"tokens","vocab":1,"max_len":8,"layers":[{"type":"relu"}]})",
       "'vocab' is 1"},
      {R"({"name":"m","input":"tokens","vocab":16,"max_len":8,"input_dim":4,"layers":[]})",
       "unknown field 'input_dim'"},
      {R"({"name":"m","input_dim":4,"vocab":16,"layers":[{"type":"relu"}]})",
       "unknown field 'vocab'"},
      {head + R"({"type":"relu"},)" + lm + "]}",
       "layer 0: a token model's first layer must be 'embedding'"},
      {head + emb + R"(,{"type":"relu"}]})",
       "layer 1: a token model's last layer must be 'lm_head'"},
      {head + emb + "," + emb + "," + lm + "]}", "layer 1: 'embedding' must be the first layer"},
      {head + emb + "," + lm + "," + lm + "]}", "layer 1: 'lm_head' must be the last layer"},
      {head + R"({"type":"embedding"},)" + lm + "]}", "layer 0: missing 'dim'"},
      {head + emb + R"(,{"type":"attention","heads":3},)" + lm + "]}",
       "layer 1: 'heads' is 3, which does not divide the width 8"},
      {head + emb + R"(,{"type":"attention"},)" + lm + "]}", "layer 1: missing 'heads'"},
      {head + emb + R"(,{"type":"attention","heads":8,"rotary":true},)" + lm + "]}",
       "layer 1: 'rotary' needs an even head width (width / heads), not 1"},
      {head + emb + R"(,{"type":"attention","heads":2,"rotary":"yes"},)" + lm + "]}",
       "layer 1: 'rotary' must be true or false"},
      {head + emb + R"(,{"type":"attention","heads":2,"causal":false},)" + lm + "]}",
       "layer 1: unknown field 'causal'"},
      {head + emb + R"(,{"type":"positions"},{"type":"positions"},)" + lm + "]}",
       "layer 2: a model has at most one 'positions' layer"},
      {head + emb + R"(,{"type":"positions","max_len":4},)" + lm + "]}",
       "layer 1: unknown field 'max_len'"},
      {head + emb + R"(,{"type":"linear","out":4},{"type":"lm_head","tied":true}]})",
       "layer 2: a tied lm_head needs the embedding's width 8, not 4"},
      {head + emb + R"(,{"type":"lm_head","tied":1}]})", "layer 1: 'tied' must be true or false"},
      {head + emb + R"(,{"type":"moe","uid_prefix":"f","grid":[2],"pre_norm":true},)" + lm + "]}",
       "layer 1: 'pre_norm' belongs to residual_moe"},
      {R"({"name":"m","input_dim":4,"layers":[{"type":"attention","heads":2}]})",
       "layer 0: 'attention' belongs to a token model"},
      {R"({"name":"m","input_dim":4,"layers":[{"type":"relu"},{"type":"lm_head"}]})",
       "layer 1: 'lm_head' belongs to a token model"},
  };
  ExpectRefusals(cases);
}

}  // namespace
}  // namespace dmoe::model
