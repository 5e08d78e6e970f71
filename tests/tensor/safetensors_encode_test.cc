// Encode: round trips through Decode for every dtype and rank, the layout it writes, and the inputs
// it refuses (the same rules Decode enforces).
#include <gtest/gtest.h>

#include <cstdint>
#include <cstring>
#include <map>
#include <string>
#include <vector>

#include "tensor/safetensors.h"

namespace dmoe::safetensors {
namespace {

constexpr DType kAllDTypes[] = {DType::kF32, DType::kF16, DType::kBF16, DType::kF64,
                                DType::kI64, DType::kI32, DType::kU8,   DType::kBool};

// Deterministic bytes for a tensor; BOOL gets only 0 and 1.
std::vector<uint8_t> Pattern(DType dtype, size_t n) {
  std::vector<uint8_t> bytes(n);
  for (size_t i = 0; i < n; ++i) {
    bytes[i] = dtype == DType::kBool ? static_cast<uint8_t>(i % 3 == 0)
                                     : static_cast<uint8_t>(i * 37 + 11);
  }
  return bytes;
}

uint64_t HeaderLength(const std::vector<uint8_t>& blob) {
  uint64_t n = 0;
  for (int i = 0; i < 8; ++i) n |= static_cast<uint64_t>(blob[i]) << (8 * i);
  return n;
}

Status EncodeStatus(const std::vector<TensorRef>& tensors,
                    const std::map<std::string, std::string>& metadata = {}) {
  return Encode(tensors, metadata).status();
}

// Succeeds when `status` is kInvalidArgument and its message names `rule`.
::testing::AssertionResult RefusedWith(const Status& status, std::string_view rule) {
  if (status.code() != Code::kInvalidArgument) {
    return ::testing::AssertionFailure() << "wrong code: " << status.ToString();
  }
  if (status.message().find(rule) == std::string::npos) {
    return ::testing::AssertionFailure()
           << "\"" << status.message() << "\" does not name \"" << rule << "\"";
  }
  return ::testing::AssertionSuccess();
}

TEST(SafetensorsEncodeTest, RoundTripsEveryDTypeAtEveryRank) {
  for (DType dtype : kAllDTypes) {
    for (size_t rank = 0; rank <= kMaxRank; ++rank) {
      std::vector<int64_t> shape;
      for (size_t d = 0; d < rank; ++d) shape.push_back(d % 2 == 0 ? 2 : 1);
      const size_t count = size_t{1} << ((rank + 1) / 2);
      const std::vector<uint8_t> data = Pattern(dtype, count * ItemSize(dtype));
      const std::map<std::string, std::string> metadata = {{"rank", std::to_string(rank)}};
      Result<std::vector<uint8_t>> blob = Encode({{"t", dtype, shape, data}}, metadata);
      ASSERT_TRUE(blob.ok()) << blob.status().ToString();
      Result<Decoded> decoded = Decode(*blob);
      ASSERT_TRUE(decoded.ok()) << DTypeName(dtype) << " rank " << rank << ": "
                                << decoded.status().ToString();
      ASSERT_EQ(decoded->tensors.size(), 1u);
      const TensorView& t = decoded->tensors[0];
      EXPECT_EQ(t.name, "t");
      EXPECT_EQ(t.dtype, dtype);
      EXPECT_EQ(t.shape, shape);
      EXPECT_EQ(t.NumElements(), static_cast<int64_t>(count));
      EXPECT_EQ(std::vector<uint8_t>(t.data.begin(), t.data.end()), data);
      EXPECT_EQ(decoded->metadata, metadata);
    }
  }
}

TEST(SafetensorsEncodeTest, RoundTripsManyTensorsIncludingEmptyOnesInOrder) {
  const std::vector<uint8_t> a = Pattern(DType::kF32, 24);
  const std::vector<uint8_t> b = Pattern(DType::kBool, 5);
  const std::vector<uint8_t> c = Pattern(DType::kBF16, 6);
  const std::vector<TensorRef> tensors = {
      {"empty_first", DType::kF64, {0}, {}},
      {"a", DType::kF32, {2, 3}, a},
      {"mid_empty", DType::kI32, {3, 0, 2}, {}},
      {"b", DType::kBool, {5}, b},
      {"c", DType::kBF16, {1, 3}, c},
      {"empty_last", DType::kU8, {0, 0}, {}},
  };
  Result<std::vector<uint8_t>> blob = Encode(tensors);
  ASSERT_TRUE(blob.ok()) << blob.status().ToString();
  EXPECT_EQ(blob->size(), 8 + HeaderLength(*blob) + 24 + 5 + 6);
  Result<Decoded> decoded = Decode(*blob);
  ASSERT_TRUE(decoded.ok()) << decoded.status().ToString();
  ASSERT_EQ(decoded->tensors.size(), tensors.size());
  for (size_t i = 0; i < tensors.size(); ++i) {
    const TensorView& t = decoded->tensors[i];
    EXPECT_EQ(t.name, tensors[i].name);
    EXPECT_EQ(t.dtype, tensors[i].dtype);
    EXPECT_EQ(t.shape, tensors[i].shape);
    EXPECT_EQ(std::vector<uint8_t>(t.data.begin(), t.data.end()),
              std::vector<uint8_t>(tensors[i].data.begin(), tensors[i].data.end()));
  }
  EXPECT_TRUE(decoded->metadata.empty());
}

TEST(SafetensorsEncodeTest, KeepsTheGivenOrderOfEmptyTensorsAtOneOffset) {
  // Found by safetensors_fuzz: empty tensors sharing an offset are ordered by header position, so
  // the header must list entries in the given order, not sorted by name.
  const std::vector<uint8_t> four = Pattern(DType::kI32, 4);
  const std::vector<TensorRef> tensors = {{"s", DType::kI32, {}, four},
                                          {"}", DType::kF32, {0, 3}, {}},
                                          {"z", DType::kU8, {INT64_MAX, 0}, {}},
                                          {"a", DType::kU8, {0}, {}}};
  Result<std::vector<uint8_t>> blob = Encode(tensors, {{"k", "v"}});
  ASSERT_TRUE(blob.ok()) << blob.status().ToString();
  const std::string header(blob->begin() + 8, blob->begin() + 8 + HeaderLength(*blob));
  EXPECT_EQ(header.rfind(R"({"__metadata__":{"k":"v"},"s":{"dtype":"I32","shape":[],)", 0), 0u)
      << header;
  Result<Decoded> decoded = Decode(*blob);
  ASSERT_TRUE(decoded.ok()) << decoded.status().ToString();
  std::vector<std::string> names;
  for (const TensorView& t : decoded->tensors) names.push_back(t.name);
  EXPECT_EQ(names, (std::vector<std::string>{"s", "}", "z", "a"}));
  // Encoding what was decoded gives the same bytes.
  std::vector<TensorRef> again;
  for (const TensorView& t : decoded->tensors) again.push_back({t.name, t.dtype, t.shape, t.data});
  Result<std::vector<uint8_t>> blob_again = Encode(again, decoded->metadata);
  ASSERT_TRUE(blob_again.ok());
  EXPECT_EQ(*blob_again, *blob);
}

TEST(SafetensorsEncodeTest, EncodesFifteenThousandTensors) {
  std::vector<TensorRef> tensors;
  const std::vector<uint8_t> byte = {1};
  for (int i = 0; i < 15000; ++i)
    tensors.push_back({"t" + std::to_string(i), DType::kU8, {1}, byte});
  Result<std::vector<uint8_t>> blob = Encode(tensors);
  ASSERT_TRUE(blob.ok()) << blob.status().ToString();
  Result<Decoded> decoded = Decode(*blob);
  ASSERT_TRUE(decoded.ok()) << decoded.status().ToString();
  ASSERT_EQ(decoded->tensors.size(), 15000u);
  EXPECT_EQ(decoded->tensors[14999].name, "t14999");
}

TEST(SafetensorsEncodeTest, EncodesNoTensorsAsAnEmptyObject) {
  Result<std::vector<uint8_t>> blob = Encode({});
  ASSERT_TRUE(blob.ok()) << blob.status().ToString();
  const std::string header(blob->begin() + 8, blob->end());
  EXPECT_EQ(header, "{}      ");
  Result<Decoded> decoded = Decode(*blob);
  ASSERT_TRUE(decoded.ok());
  EXPECT_TRUE(decoded->tensors.empty());
}

TEST(SafetensorsEncodeTest, PadsTheHeaderWithSpacesSoDataIsEightAligned) {
  for (size_t name_length = 1; name_length <= 16; ++name_length) {
    const std::vector<uint8_t> data = Pattern(DType::kU8, 3);
    Result<std::vector<uint8_t>> blob =
        Encode({{std::string(name_length, 'x'), DType::kU8, {3}, data}});
    ASSERT_TRUE(blob.ok()) << blob.status().ToString();
    const uint64_t n = HeaderLength(*blob);
    EXPECT_EQ(n % kDataAlignment, 0u);
    EXPECT_EQ(blob->size(), 8 + n + 3);
    const std::string header(blob->begin() + 8, blob->begin() + 8 + n);
    const size_t end = header.rfind('}');
    EXPECT_LT(n - (end + 1), kDataAlignment);
    EXPECT_EQ(header.find_first_not_of(' ', end + 1), std::string::npos);
  }
}

TEST(SafetensorsEncodeTest, KeepsMetadataStringsExactly) {
  const std::map<std::string, std::string> metadata = {{"uid", "ffn.3.14"},
                                                       {"json", R"({"a":[1,2]})"},
                                                       {"quote\"back\\slash", "tab\tnl\n"},
                                                       {"", ""},
                                                       {"unicode", "\xe6\x9d\x83\xf0\x9f\x98\x80"}};
  Result<std::vector<uint8_t>> blob = Encode({}, metadata);
  ASSERT_TRUE(blob.ok()) << blob.status().ToString();
  Result<Decoded> decoded = Decode(*blob);
  ASSERT_TRUE(decoded.ok()) << decoded.status().ToString();
  EXPECT_EQ(decoded->metadata, metadata);
}

TEST(SafetensorsEncodeTest, EncodeIntoReusesTheBufferAndMatchesEncode) {
  const std::vector<uint8_t> data = Pattern(DType::kF32, 4096);
  const std::vector<TensorRef> tensors = {{"x", DType::kF32, {1024}, data}};
  std::vector<uint8_t> buffer = {9, 9, 9};
  ASSERT_TRUE(EncodeInto(tensors, {{"k", "v"}}, &buffer).ok());
  const uint8_t* first = buffer.data();
  EXPECT_EQ(buffer, *Encode(tensors, {{"k", "v"}}));
  ASSERT_TRUE(EncodeInto(tensors, {{"k", "w"}}, &buffer).ok());
  EXPECT_EQ(buffer.data(), first);
  EXPECT_EQ(Decode(buffer)->metadata.at("k"), "w");
  // A refusal leaves the buffer empty.
  const Status refused = EncodeInto({{"", DType::kU8, {1}, data}}, {}, &buffer);
  EXPECT_EQ(refused.code(), Code::kInvalidArgument);
  EXPECT_TRUE(buffer.empty());
}

TEST(SafetensorsEncodeTest, RefusesBadNames) {
  const std::vector<uint8_t> one = {1};
  EXPECT_TRUE(RefusedWith(EncodeStatus({{"", DType::kU8, {1}, one}}),
                          "tensor name must be 1 to 256 bytes, got 0"));
  EXPECT_TRUE(RefusedWith(EncodeStatus({{std::string(257, 'n'), DType::kU8, {1}, one}}),
                          "tensor name must be 1 to 256 bytes, got 257"));
  EXPECT_TRUE(RefusedWith(EncodeStatus({{"a\x01", DType::kU8, {1}, one}}), "not printable UTF-8"));
  EXPECT_TRUE(RefusedWith(EncodeStatus({{"a\xff", DType::kU8, {1}, one}}), "is not valid UTF-8"));
  EXPECT_TRUE(RefusedWith(EncodeStatus({{"__metadata__", DType::kU8, {1}, one}}),
                          "tensor name '__metadata__' is reserved"));
  EXPECT_TRUE(RefusedWith(EncodeStatus({{"a", DType::kU8, {1}, one}, {"a", DType::kU8, {1}, one}}),
                          "duplicate key 'a' in header"));
}

TEST(SafetensorsEncodeTest, RefusesBadShapesAndSizes) {
  const std::vector<uint8_t> eight = Pattern(DType::kU8, 8);
  EXPECT_TRUE(RefusedWith(EncodeStatus({{"a", DType::kU8, {1, 1, 1, 1, 1, 1, 1, 1, 8}, eight}}),
                          "shape has 9 dimensions, more than 8"));
  EXPECT_TRUE(RefusedWith(EncodeStatus({{"a", DType::kU8, {-8}, eight}}),
                          "shape [-8] has a negative dimension"));
  EXPECT_TRUE(RefusedWith(EncodeStatus({{"a", DType::kF32, {3}, eight}}),
                          "tensor 'a': data holds 8 bytes but shape [3] of F32 needs 12"));
  EXPECT_TRUE(
      RefusedWith(EncodeStatus({{"a", DType::kF32, {INT64_MAX, 2}, eight}}), "overflows 64 bits"));
}

TEST(SafetensorsEncodeTest, RefusesBoolBytesOtherThanZeroOrOne) {
  const std::vector<uint8_t> bad = {0, 1, 2};
  EXPECT_TRUE(RefusedWith(EncodeStatus({{"m", DType::kBool, {3}, bad}}),
                          "BOOL tensor 'm' has byte 2 at element 2; BOOL bytes must be 0 or 1"));
}

TEST(SafetensorsEncodeTest, RefusesMetadataThatIsNotUtf8OrHoldsNul) {
  EXPECT_TRUE(RefusedWith(EncodeStatus({}, {{"k", "\xed\xa0\x80"}}),
                          "__metadata__ value '\\xed\\xa0\\x80' is not valid UTF-8"));
  EXPECT_TRUE(RefusedWith(EncodeStatus({}, {{"\xc0\x80", "v"}}), "__metadata__ key"));
  EXPECT_TRUE(RefusedWith(EncodeStatus({}, {{"k", std::string("a\0b", 3)}}), "NUL"));
}

TEST(SafetensorsEncodeTest, RefusesHeaderPastOneMiB) {
  EXPECT_TRUE(
      RefusedWith(EncodeStatus({}, {{"big", std::string(kMaxHeaderBytes, 'x')}}), "exceeds 1 MiB"));
  // Just under the limit is fine, and Decode accepts what Encode wrote.
  Result<std::vector<uint8_t>> blob = Encode({}, {{"big", std::string(kMaxHeaderBytes - 64, 'x')}});
  ASSERT_TRUE(blob.ok()) << blob.status().ToString();
  EXPECT_LE(HeaderLength(*blob), kMaxHeaderBytes);
  EXPECT_TRUE(Decode(*blob).ok());
}

TEST(SafetensorsEncodeTest, NumElementsFlagsBadHandBuiltShapes) {
  TensorView view;
  EXPECT_EQ(view.NumElements(), 1);
  view.shape = {-1, 2};
  EXPECT_EQ(view.NumElements(), -1);
  view.shape = {INT64_MAX, 2};
  EXPECT_EQ(view.NumElements(), -1);
  view.shape = {INT64_MAX, 0};
  EXPECT_EQ(view.NumElements(), 0);
}

TEST(SafetensorsEncodeTest, ItemSizes) {
  EXPECT_EQ(ItemSize(DType::kF32), 4u);
  EXPECT_EQ(ItemSize(DType::kF16), 2u);
  EXPECT_EQ(ItemSize(DType::kBF16), 2u);
  EXPECT_EQ(ItemSize(DType::kF64), 8u);
  EXPECT_EQ(ItemSize(DType::kI64), 8u);
  EXPECT_EQ(ItemSize(DType::kI32), 4u);
  EXPECT_EQ(ItemSize(DType::kU8), 1u);
  EXPECT_EQ(ItemSize(DType::kBool), 1u);
  const Result<DType> bad = ParseDType("F8");
  ASSERT_FALSE(bad.ok());
  EXPECT_EQ(bad.status().code(), Code::kInvalidArgument);
}

}  // namespace
}  // namespace dmoe::safetensors
