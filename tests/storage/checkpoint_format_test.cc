#include "storage/checkpoint_format.h"

#include <gtest/gtest.h>

namespace dmoe::storage::format {
namespace {

Manifest SampleManifest() {
  Manifest m;
  m.uid = "ffn.1.2";
  m.step = 123456789012;
  m.created_unix_ms = 1'700'000'000'000;
  m.metadata = {{"schema", "ffn-v1"}, {"lr", "0.1"}};
  m.tensors.push_back({"param/w", safetensors::DType::kF32, {3, 4}, 48, Blake2b256("w")});
  m.tensors.push_back({"optim/m", safetensors::DType::kBF16, {}, 2, Blake2b256("m")});
  return m;
}

TEST(CheckpointFormatTest, ManifestRoundTrips) {
  Hash256 written{};
  const std::string bytes = EncodeManifest(SampleManifest(), &written);
  Hash256 read{};
  Result<Manifest> m = DecodeManifest(bytes, &read);
  ASSERT_TRUE(m.ok()) << m.status().ToString();
  EXPECT_EQ(read, written);
  const Manifest want = SampleManifest();
  EXPECT_EQ(m->uid, want.uid);
  EXPECT_EQ(m->step, want.step);
  EXPECT_EQ(m->created_unix_ms, want.created_unix_ms);
  EXPECT_EQ(m->metadata, want.metadata);
  ASSERT_EQ(m->tensors.size(), 2u);
  EXPECT_EQ(m->tensors[0].name, "param/w");
  EXPECT_EQ(m->tensors[0].shape, (std::vector<int64_t>{3, 4}));
  EXPECT_EQ(m->tensors[0].byte_size, 48u);
  EXPECT_EQ(m->tensors[1].dtype, safetensors::DType::kBF16);
  EXPECT_EQ(m->tensors[1].digest, Blake2b256("m"));
}

TEST(CheckpointFormatTest, EveryFlippedByteOrTruncationIsDetected) {
  const std::string bytes = EncodeManifest(SampleManifest());
  for (size_t i = 0; i < bytes.size(); ++i) {
    std::string bad = bytes;
    bad[i] ^= 0x40;
    Result<Manifest> m = DecodeManifest(bad);
    EXPECT_EQ(m.status().code(), Code::kInternal) << "byte " << i;
  }
  for (size_t size = 0; size < bytes.size(); ++size) {
    EXPECT_FALSE(DecodeManifest(bytes.substr(0, size)).ok()) << "size " << size;
  }
}

TEST(CheckpointFormatTest, KeysSortByStepAndStayInsideTheirRanges) {
  EXPECT_LT(ManifestKey("ffn.1", 9), ManifestKey("ffn.1", 10));
  EXPECT_LT(ManifestKey("ffn.1", 255), TensorKey("ffn.1", 256, 0));
  auto [begin, end] = VersionRange("ffn.1", 7);
  for (const std::string& key :
       {ManifestKey("ffn.1", 7), TensorKey("ffn.1", 7, 0), TensorKey("ffn.1", 7, 0xffffffff)}) {
    EXPECT_LE(begin, key);
    EXPECT_LT(key, end);
  }
  EXPECT_GE(TensorKey("ffn.1", 8, 0), end);
  EXPECT_LT(TensorKey("ffn.1", 6, 0xffffffff), begin);

  auto [expert_begin, expert_end] = ExpertRange("ffn.1");
  EXPECT_LE(expert_begin, TensorKey("ffn.1", INT64_MAX, 5));
  EXPECT_LT(TensorKey("ffn.1", INT64_MAX, 5), expert_end);
  EXPECT_FALSE(expert_begin <= ManifestKey("ffn.10", 0) && ManifestKey("ffn.10", 0) < expert_end);
  EXPECT_FALSE(expert_begin <= ManifestKey("ffn.1.2", 0) && ManifestKey("ffn.1.2", 0) < expert_end);
}

TEST(CheckpointFormatTest, StepListRoundTripsAndRefusesGarbage) {
  const std::vector<int64_t> steps = {0, 7, 1LL << 40};
  Result<std::vector<int64_t>> decoded = DecodeSteps(EncodeSteps(steps));
  ASSERT_TRUE(decoded.ok());
  EXPECT_EQ(*decoded, steps);
  EXPECT_EQ(DecodeSteps("").status().code(), Code::kInternal);
  EXPECT_EQ(DecodeSteps("1234567").status().code(), Code::kInternal);
  EXPECT_EQ(DecodeSteps(EncodeSteps({5, 3})).status().code(), Code::kInternal);
  EXPECT_EQ(DecodeSteps(EncodeSteps({-1})).status().code(), Code::kInternal);
}

TEST(CheckpointFormatTest, Utf8Validation) {
  EXPECT_TRUE(IsValidUtf8(""));
  EXPECT_TRUE(IsValidUtf8("plain ascii"));
  EXPECT_TRUE(IsValidUtf8("\xc3\xa9\xe2\x82\xac\xf0\x9f\x98\x80"));  // é € 😀
  EXPECT_FALSE(IsValidUtf8("\xc0\x80"));                             // overlong NUL
  EXPECT_FALSE(IsValidUtf8("\xed\xa0\x80"));                         // surrogate U+D800
  EXPECT_FALSE(IsValidUtf8("\xf4\x90\x80\x80"));                     // above U+10FFFF
  EXPECT_FALSE(IsValidUtf8("\xe2\x82"));                             // truncated
  EXPECT_FALSE(IsValidUtf8("\x80"));                                 // lone continuation byte
}

}  // namespace
}  // namespace dmoe::storage::format
