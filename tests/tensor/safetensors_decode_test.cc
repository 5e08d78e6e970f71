// Decode against hand-made blobs, one rule of PROTOCOL section 2 at a time: each refusal must be
// kInvalidArgument with a message naming the rule, and the matching valid blob must be accepted.
#include <gtest/gtest.h>

#include <cstdint>
#include <string>
#include <vector>

#include "tensor/safetensors.h"
#include "tests/tensor/test_blobs.h"

namespace dmoe::safetensors {
namespace {

using testing::Blob;
using testing::Bytes;
using testing::RawBlob;
using testing::Refused;

// One F32 tensor "a" of shape [2] and its 8 data bytes.
constexpr char kOneTensor[] = R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}})";

// A header holding one F32 tensor "a" whose shape and data_offsets are spliced in verbatim.
std::string Entry(const std::string& shape, const std::string& offsets) {
  return R"({"a":{"dtype":"F32","shape":)" + shape + R"(,"data_offsets":)" + offsets + "}}";
}

TEST(SafetensorsDecodeTest, AcceptsOneTensorAndReturnsAView) {
  std::vector<uint8_t> blob = Blob(kOneTensor, {1, 2, 3, 4, 5, 6, 7, 8});
  Result<Decoded> decoded = Decode(blob);
  ASSERT_TRUE(decoded.ok()) << decoded.status().ToString();
  ASSERT_EQ(decoded->tensors.size(), 1u);
  const TensorView& a = decoded->tensors[0];
  EXPECT_EQ(a.name, "a");
  EXPECT_EQ(a.dtype, DType::kF32);
  EXPECT_EQ(a.shape, std::vector<int64_t>{2});
  EXPECT_EQ(a.NumElements(), 2);
  // Zero copy: the view points at the last 8 bytes of the blob.
  EXPECT_EQ(a.data.data(), blob.data() + blob.size() - 8);
  EXPECT_EQ(a.data.size(), 8u);
  EXPECT_TRUE(decoded->metadata.empty());
  EXPECT_EQ(decoded->Find("a"), &decoded->tensors[0]);
  EXPECT_EQ(decoded->Find("b"), nullptr);
}

TEST(SafetensorsDecodeTest, AcceptsEmptyHeaderObjectWithNoData) {
  Result<Decoded> decoded = Decode(Blob("{}"));
  ASSERT_TRUE(decoded.ok()) << decoded.status().ToString();
  EXPECT_TRUE(decoded->tensors.empty());
}

TEST(SafetensorsDecodeTest, RefusesBlobShorterThanEightBytes) {
  EXPECT_TRUE(Refused({}, "blob of 0 bytes is shorter than the 8-byte header length"));
  EXPECT_TRUE(Refused({2, 0, 0, 0, 0}, "shorter than the 8-byte header length"));
}

TEST(SafetensorsDecodeTest, RefusesHeaderLengthOverOneMiB) {
  EXPECT_EQ(Decode(RawBlob(2000000, "{}")).status().message(),
            "safetensors: header length 2000000 exceeds 1 MiB");
  EXPECT_TRUE(
      Refused(RawBlob(UINT64_MAX, "{}"), "header length 18446744073709551615 exceeds 1 MiB"));
  EXPECT_TRUE(Refused(RawBlob(kMaxHeaderBytes + 1, "{}"), "exceeds 1 MiB"));
}

TEST(SafetensorsDecodeTest, AcceptsHeaderOfExactlyOneMiB) {
  std::string header = "{}";
  header.resize(kMaxHeaderBytes, ' ');
  Result<Decoded> decoded = Decode(Blob(header));
  ASSERT_TRUE(decoded.ok()) << decoded.status().ToString();
}

TEST(SafetensorsDecodeTest, RefusesHeaderLengthPastTheBlob) {
  EXPECT_TRUE(Refused(RawBlob(100, "{}"), "header length 100 does not fit in a blob of 10 bytes"));
  EXPECT_TRUE(Refused(RawBlob(3, "{}"), "does not fit"));
}

TEST(SafetensorsDecodeTest, RefusesNulBytes) {
  EXPECT_TRUE(Refused(Blob(std::string("{}\0 ", 4)), "NUL byte at offset 2"));
  EXPECT_TRUE(Refused(Blob(std::string("{\"a\0\":1}", 8)), "NUL byte"));
  // The escape \u0000 puts a NUL into a string just as well.
  EXPECT_TRUE(Refused(Blob(R"({"__metadata__":{"k":"a\u0000b"}})"), "NUL character"));
  EXPECT_TRUE(Refused(Blob(R"({"__metadata__":{"\u0000":"v"}})"), "NUL character"));
}

TEST(SafetensorsDecodeTest, RefusesHeaderNotStartingWithBrace) {
  EXPECT_TRUE(Refused(Blob(" {}"), "header must start with '{'"));
  EXPECT_TRUE(Refused(Blob("[]"), "header must start with '{'"));
  EXPECT_TRUE(Refused(Blob(""), "header must start with '{'"));
  EXPECT_TRUE(Refused(Blob("\xef\xbb\xbf{}"), "header must start with '{'"));  // UTF-8 BOM
}

TEST(SafetensorsDecodeTest, AcceptsOnlySpacesAfterTheObject) {
  EXPECT_TRUE(Decode(Blob("{}      ")).ok());
  EXPECT_TRUE(Refused(Blob("{}\n"), "one JSON object followed only by spaces"));
  EXPECT_TRUE(Refused(Blob("{}\t  "), "one JSON object followed only by spaces"));
  EXPECT_TRUE(Refused(Blob("{} x"), "one JSON object followed only by spaces"));
  EXPECT_TRUE(Refused(Blob("{}{}"), "one JSON object"));
  EXPECT_TRUE(Refused(Blob("{} {}"), "one JSON object"));
}

TEST(SafetensorsDecodeTest, AcceptsWhitespaceInsideTheObject) {
  const std::string header =
      "{ \"a\" :\n\t{\"dtype\" : \"U8\", \"shape\" : [ 1 ],\r\n \"data_offsets\" : [0, 1] } }";
  const std::vector<uint8_t> blob = Blob(header, {7});  // the views alias it
  Result<Decoded> decoded = Decode(blob);
  ASSERT_TRUE(decoded.ok()) << decoded.status().ToString();
  EXPECT_EQ(decoded->tensors[0].data[0], 7);
}

TEST(SafetensorsDecodeTest, RefusesMalformedJson) {
  EXPECT_TRUE(Refused(Blob(R"({"a":})"), "header must be one JSON object"));
  EXPECT_TRUE(Refused(Blob(R"({"a":{"dtype":"F32",}})"), "header must be one JSON object"));
  EXPECT_TRUE(Refused(Blob(R"({/* comment */})"), "header must be one JSON object"));
  EXPECT_TRUE(Refused(Blob(R"({"a" 1})"), "header must be one JSON object"));
  EXPECT_TRUE(Refused(Blob("{'a':1}"), "header must be one JSON object"));
  EXPECT_TRUE(Refused(Blob("{\"a\":\"x\ty\"}"), "header must be one JSON object"));
}

TEST(SafetensorsDecodeTest, RefusesDuplicateTensorName) {
  const std::string header = R"({"a":{"dtype":"U8","shape":[1],"data_offsets":[0,1]},)"
                             R"("a":{"dtype":"U8","shape":[1],"data_offsets":[1,2]}})";
  EXPECT_TRUE(Refused(Blob(header, Bytes(2)), "duplicate key 'a' in header"));
}

TEST(SafetensorsDecodeTest, RefusesDuplicateMetadataKeyAndBlock) {
  EXPECT_TRUE(
      Refused(Blob(R"({"__metadata__":{"k":"1","k":"2"}})"), "duplicate key 'k' in __metadata__"));
  EXPECT_TRUE(Refused(Blob(R"({"__metadata__":{},"__metadata__":{}})"),
                      "duplicate key '__metadata__' in header"));
}

TEST(SafetensorsDecodeTest, RefusesDuplicateKeyInsideAnEntry) {
  EXPECT_TRUE(Refused(
      Blob(R"({"a":{"dtype":"F32","dtype":"F32","shape":[2],"data_offsets":[0,8]}})", Bytes(8)),
      "duplicate key 'dtype' in tensor 'a'"));
}

TEST(SafetensorsDecodeTest, NameLengthIsOneTo256Bytes) {
  auto named = [](const std::string& name) {
    return Blob(R"({")" + name + R"(":{"dtype":"U8","shape":[],"data_offsets":[0,1]}})", {1});
  };
  EXPECT_TRUE(Refused(named(""), "tensor name must be 1 to 256 bytes, got 0"));
  EXPECT_TRUE(Decode(named(std::string(256, 'n'))).ok());
  EXPECT_TRUE(Refused(named(std::string(257, 'n')), "tensor name must be 1 to 256 bytes, got 257"));
  // 128 two-byte characters are 256 bytes.
  std::string two_byte;
  for (int i = 0; i < 128; ++i) two_byte += "\xc3\xa9";
  EXPECT_TRUE(Decode(named(two_byte)).ok());
  EXPECT_TRUE(Refused(named(two_byte + "x"), "got 257"));
}

TEST(SafetensorsDecodeTest, NameMustBePrintableUtf8) {
  auto named = [](const std::string& name) {
    return Blob(R"({")" + name + R"(":{"dtype":"U8","shape":[],"data_offsets":[0,1]}})", {1});
  };
  EXPECT_TRUE(Refused(named(R"(a\u0001)"), "is not printable UTF-8"));
  EXPECT_TRUE(Refused(named(R"(a\n)"), "is not printable UTF-8"));
  EXPECT_TRUE(Refused(named(R"(a\u007f)"), "is not printable UTF-8"));
  EXPECT_TRUE(Refused(named(R"(a\u0085)"), "is not printable UTF-8"));  // C1 control
  EXPECT_TRUE(Decode(named("layer 1.weight")).ok());
  EXPECT_TRUE(Decode(named("\xe6\x9d\x83\xe9\x87\x8d")).ok());  // CJK
  EXPECT_TRUE(Decode(named(R"(\ud83d\ude00)")).ok());           // surrogate pair
  EXPECT_TRUE(Decode(named(R"(\u00e9)")).ok());
}

TEST(SafetensorsDecodeTest, EntryMustBeAnObjectWithExactlyThreeKeys) {
  EXPECT_TRUE(
      Refused(Blob(R"({"a":[1]})"),
              "tensor 'a' must be an object with keys dtype, shape, data_offsets, got a list"));
  EXPECT_TRUE(Refused(Blob(R"({"a":null})"), "tensor 'a' must be an object"));
  EXPECT_TRUE(Refused(Blob(R"({"a":"F32"})"), "tensor 'a' must be an object"));
  EXPECT_TRUE(Refused(Blob(R"({"a":{"shape":[2],"data_offsets":[0,8]}})", Bytes(8)),
                      "tensor 'a' is missing key 'dtype'"));
  EXPECT_TRUE(Refused(Blob(R"({"a":{"dtype":"F32","data_offsets":[0,8]}})", Bytes(8)),
                      "tensor 'a' is missing key 'shape'"));
  EXPECT_TRUE(Refused(Blob(R"({"a":{"dtype":"F32","shape":[2]}})", Bytes(8)),
                      "tensor 'a' is missing key 'data_offsets'"));
  EXPECT_TRUE(
      Refused(Blob(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8],"x":1}})", Bytes(8)),
              "tensor 'a' has key 'x'; an entry has exactly the keys dtype, shape, data_offsets"));
}

TEST(SafetensorsDecodeTest, DTypeMustBeAListedName) {
  for (const char* name : {"F32", "F16", "BF16", "F64", "I64", "I32", "U8", "BOOL"}) {
    const Result<DType> dtype = ParseDType(name);
    ASSERT_TRUE(dtype.ok()) << name;
    EXPECT_EQ(DTypeName(*dtype), name);
  }
  auto typed = [](const std::string& dtype) {
    return Blob(R"({"a":{"dtype":)" + dtype + R"(,"shape":[0],"data_offsets":[0,0]}})");
  };
  EXPECT_TRUE(Decode(typed(R"("BOOL")")).ok());
  EXPECT_TRUE(Refused(typed(R"("F8_E4M3")"),
                      "dtype 'F8_E4M3' is not one of F32, F16, BF16, F64, I64, I32, U8, BOOL"));
  EXPECT_TRUE(Refused(typed(R"("f32")"), "is not one of"));
  EXPECT_TRUE(Refused(typed(R"("U16")"), "is not one of"));
  EXPECT_TRUE(Refused(typed(R"("")"), "is not one of"));
  EXPECT_TRUE(Refused(typed("4"), "dtype must be a string, got a number"));
  EXPECT_TRUE(Refused(typed("null"), "dtype must be a string, got null"));
}

TEST(SafetensorsDecodeTest, ShapeHasAtMostEightDimensions) {
  EXPECT_TRUE(Decode(Blob(Entry("[1,1,1,1,1,1,1,2]", "[0,8]"), Bytes(8))).ok());
  EXPECT_TRUE(Refused(Blob(Entry("[1,1,1,1,1,1,1,1,2]", "[0,8]"), Bytes(8)),
                      "shape has more than 8 dimensions"));
}

TEST(SafetensorsDecodeTest, ShapeEntriesAreNonNegativeJsonIntegers) {
  const std::string rule = "shape entries must be JSON integers in [0, 2^63-1]";
  EXPECT_TRUE(Refused(Blob(Entry("[2.0]", "[0,8]"), Bytes(8)), rule + " (no sign, fraction or "
                                                                      "exponent), got '2.0'"));
  EXPECT_TRUE(Refused(Blob(Entry("[2e0]", "[0,8]"), Bytes(8)), rule));
  EXPECT_TRUE(Refused(Blob(Entry("[1e3]", "[0,4000]"), Bytes(4000)), rule));
  EXPECT_TRUE(Refused(Blob(Entry("[-1]", "[0,0]")), rule + " (no sign, fraction or exponent), got "
                                                           "'-1'"));
  EXPECT_TRUE(Refused(Blob(Entry("[-0]", "[0,0]")), "got '-0'"));
  EXPECT_TRUE(Refused(Blob(Entry("[0,-0]", "[0,0]")), "got '-0'"));
  EXPECT_TRUE(Refused(Blob(Entry("[-0.0]", "[0,0]")), rule));
  EXPECT_TRUE(Refused(Blob(Entry("[9223372036854775808,0]", "[0,0]")), rule));
  EXPECT_TRUE(Refused(Blob(Entry("[18446744073709551616,0]", "[0,0]")), rule));
  EXPECT_TRUE(Refused(Blob(Entry("[true]", "[0,4]"), Bytes(4)), "shape must be a list of"));
  EXPECT_TRUE(Refused(Blob(Entry("[[2]]", "[0,8]"), Bytes(8)), "shape must be a list of"));
  EXPECT_TRUE(Refused(Blob(Entry(R"(["2"])", "[0,8]"), Bytes(8)), "shape must be a list of"));
  EXPECT_TRUE(Refused(Blob(Entry("2", "[0,8]"), Bytes(8)),
                      "shape must be a list of at most 8 integers, got a number"));
  EXPECT_TRUE(Refused(Blob(Entry("null", "[0,8]"), Bytes(8)), "shape must be a list"));
  // The largest dimension is allowed when another one is zero.
  Result<Decoded> huge = Decode(Blob(Entry("[9223372036854775807,0]", "[0,0]")));
  ASSERT_TRUE(huge.ok()) << huge.status().ToString();
  EXPECT_EQ(huge->tensors[0].shape[0], INT64_MAX);
  EXPECT_EQ(huge->tensors[0].NumElements(), 0);
}

TEST(SafetensorsDecodeTest, DataOffsetsAreTwoOrderedJsonIntegers) {
  EXPECT_TRUE(Refused(Blob(Entry("[2]", "[8]"), Bytes(8)),
                      "data_offsets must be a list of two integers [begin, end], got 1"));
  EXPECT_TRUE(Refused(Blob(Entry("[2]", "[0,8,8]"), Bytes(8)),
                      "data_offsets must be a list of two integers [begin, end], got more"));
  EXPECT_TRUE(Refused(Blob(Entry("[0]", "[]")), "data_offsets must be a list of two integers"));
  EXPECT_TRUE(Refused(Blob(Entry("[2]", "8"), Bytes(8)), "data_offsets must be a list of two"));
  EXPECT_TRUE(Refused(Blob(Entry("[2]", "[0,8.0]"), Bytes(8)),
                      "data_offsets must be JSON integers in [0, 2^63-1] (no sign, fraction or "
                      "exponent), got '8.0'"));
  EXPECT_TRUE(
      Refused(Blob(Entry("[2]", "[0,8e0]"), Bytes(8)), "data_offsets must be JSON integers"));
  EXPECT_TRUE(Refused(Blob(Entry("[0]", "[-0,0]")), "got '-0'"));
  EXPECT_TRUE(Refused(Blob(Entry("[2]", "[-8,0]"), Bytes(8)), "got '-8'"));
  EXPECT_TRUE(Refused(Blob(Entry("[2]", R"(["0","8"])"), Bytes(8)), "data_offsets must be two"));
  EXPECT_TRUE(Refused(Blob(Entry("[0]", "[8,0]"), Bytes(8)), "data_offsets begin 8 > end 0"));
}

TEST(SafetensorsDecodeTest, ByteSizeMatchesShapeTimesItemSize) {
  EXPECT_TRUE(Refused(Blob(Entry("[3]", "[0,8]"), Bytes(8)),
                      "tensor 'a': data_offsets span 8 bytes but shape [3] of F32 needs 12"));
  EXPECT_TRUE(Refused(Blob(Entry("[]", "[0,8]"), Bytes(8)), "shape [] of F32 needs 4"));
  // 2^62 * 4 elements * 4 bytes wraps to 0 in 64 bits; it must not pass as an empty tensor.
  EXPECT_TRUE(Refused(Blob(Entry("[4611686018427387904,4]", "[0,0]")),
                      "shape [4611686018427387904, 4] of F32 overflows 64 bits"));
  EXPECT_TRUE(Refused(Blob(Entry("[4611686018427387904]", "[0,0]")), "overflows 64 bits"));
  EXPECT_TRUE(Decode(Blob(Entry("[]", "[0,4]"), Bytes(4))).ok());
}

TEST(SafetensorsDecodeTest, TensorsCoverTheDataBufferExactly) {
  const std::string two = R"({"a":{"dtype":"U8","shape":[4],"data_offsets":[0,4]},)"
                          R"("b":{"dtype":"U8","shape":[4],"data_offsets":[4,8]}})";
  EXPECT_TRUE(Decode(Blob(two, Bytes(8))).ok());
  EXPECT_TRUE(Refused(Blob(two, Bytes(9)), "1 trailing data bytes after the last tensor"));
  EXPECT_TRUE(
      Refused(Blob(two, Bytes(7)), "data_offsets [4, 8] go past the data buffer of 7 bytes"));

  const std::string gap = R"({"a":{"dtype":"U8","shape":[4],"data_offsets":[0,4]},)"
                          R"("b":{"dtype":"U8","shape":[4],"data_offsets":[6,10]}})";
  EXPECT_TRUE(Refused(Blob(gap, Bytes(10)), "data bytes [4, 6) belong to no tensor"));
  const std::string leading_gap = R"({"a":{"dtype":"U8","shape":[4],"data_offsets":[2,6]}})";
  EXPECT_TRUE(Refused(Blob(leading_gap, Bytes(6)), "data bytes [0, 2) belong to no tensor"));

  const std::string overlap = R"({"a":{"dtype":"U8","shape":[4],"data_offsets":[0,4]},)"
                              R"("b":{"dtype":"U8","shape":[4],"data_offsets":[2,6]}})";
  EXPECT_TRUE(
      Refused(Blob(overlap, Bytes(6)),
              "tensor 'b' (begin 2) overlaps tensor 'a' (end 4); tensors must not overlap"));
  const std::string same = R"({"a":{"dtype":"U8","shape":[4],"data_offsets":[0,4]},)"
                           R"("b":{"dtype":"U8","shape":[4],"data_offsets":[0,4]}})";
  EXPECT_TRUE(Refused(Blob(same, Bytes(4)), "overlaps"));
  EXPECT_TRUE(Refused(Blob(R"({})", Bytes(1)), "1 trailing data bytes"));
}

TEST(SafetensorsDecodeTest, ReturnsTensorsInOffsetOrder) {
  const std::string header = R"({"late":{"dtype":"U8","shape":[1],"data_offsets":[1,2]},)"
                             R"("early":{"dtype":"U8","shape":[1],"data_offsets":[0,1]}})";
  const std::vector<uint8_t> blob = Blob(header, {10, 20});  // the views alias it
  Result<Decoded> decoded = Decode(blob);
  ASSERT_TRUE(decoded.ok()) << decoded.status().ToString();
  ASSERT_EQ(decoded->tensors.size(), 2u);
  EXPECT_EQ(decoded->tensors[0].name, "early");
  EXPECT_EQ(decoded->tensors[0].data[0], 10);
  EXPECT_EQ(decoded->tensors[1].name, "late");
  EXPECT_EQ(decoded->tensors[1].data[0], 20);
}

TEST(SafetensorsDecodeTest, EmptyTensorsSitOnBoundariesAndOverlapNothing) {
  const std::string header = R"({"a":{"dtype":"U8","shape":[2],"data_offsets":[0,2]},)"
                             R"("e1":{"dtype":"F32","shape":[0,3],"data_offsets":[2,2]},)"
                             R"("e0":{"dtype":"F32","shape":[0],"data_offsets":[0,0]},)"
                             R"("b":{"dtype":"U8","shape":[2],"data_offsets":[2,4]},)"
                             R"("e2":{"dtype":"I64","shape":[5,0],"data_offsets":[4,4]}})";
  Result<Decoded> decoded = Decode(Blob(header, Bytes(4)));
  ASSERT_TRUE(decoded.ok()) << decoded.status().ToString();
  std::vector<std::string> names;
  for (const TensorView& t : decoded->tensors) names.push_back(t.name);
  EXPECT_EQ(names, (std::vector<std::string>{"e0", "a", "e1", "b", "e2"}));
  EXPECT_TRUE(decoded->tensors[0].data.empty());

  // An empty tensor inside another one's bytes is refused, and one past the end too.
  const std::string inside = R"({"a":{"dtype":"U8","shape":[4],"data_offsets":[0,4]},)"
                             R"("e":{"dtype":"U8","shape":[0],"data_offsets":[2,2]}})";
  EXPECT_TRUE(Refused(Blob(inside, Bytes(4)), "tensor 'e' (begin 2) overlaps tensor 'a'"));
  const std::string past = R"({"e":{"dtype":"U8","shape":[0],"data_offsets":[9,9]}})";
  EXPECT_TRUE(Refused(Blob(past, Bytes(0)), "go past the data buffer of 0 bytes"));
}

TEST(SafetensorsDecodeTest, BoolBytesAreZeroOrOne) {
  const std::string header = R"({"m":{"dtype":"BOOL","shape":[4],"data_offsets":[0,4]}})";
  Result<Decoded> decoded = Decode(Blob(header, {0, 1, 1, 0}));
  ASSERT_TRUE(decoded.ok()) << decoded.status().ToString();
  EXPECT_EQ(decoded->tensors[0].dtype, DType::kBool);
  EXPECT_TRUE(Refused(Blob(header, {0, 1, 2, 0}),
                      "BOOL tensor 'm' has byte 2 at element 2; BOOL bytes must be 0 or 1"));
  EXPECT_TRUE(Refused(Blob(header, {255, 0, 0, 0}), "BOOL bytes must be 0 or 1"));
  // The same bytes as U8 are fine.
  EXPECT_TRUE(
      Decode(Blob(R"({"m":{"dtype":"U8","shape":[4],"data_offsets":[0,4]}})", {0, 1, 2, 0})).ok());
}

TEST(SafetensorsDecodeTest, MetadataMapsStringsToStrings) {
  Result<Decoded> decoded =
      Decode(Blob(R"({"__metadata__":{"uid":"ffn.3.14","step":"7","":"","nl":"a\nb"}})"));
  ASSERT_TRUE(decoded.ok()) << decoded.status().ToString();
  EXPECT_EQ(decoded->metadata.size(), 4u);
  EXPECT_EQ(decoded->metadata.at("uid"), "ffn.3.14");
  EXPECT_EQ(decoded->metadata.at("step"), "7");
  EXPECT_EQ(decoded->metadata.at(""), "");
  EXPECT_EQ(decoded->metadata.at("nl"), "a\nb");
  EXPECT_TRUE(decoded->tensors.empty());

  const std::string rule = "__metadata__ must be an object mapping strings to strings";
  EXPECT_TRUE(Refused(Blob(R"({"__metadata__":null})"), rule + ", got null"));
  EXPECT_TRUE(Refused(Blob(R"({"__metadata__":[]})"), rule + ", got a list"));
  EXPECT_TRUE(Refused(Blob(R"({"__metadata__":"x"})"), rule + ", got a string"));
  EXPECT_TRUE(Refused(Blob(R"({"__metadata__":{"step":7}})"),
                      "__metadata__ value of key 'step' must be a string, got a number"));
  EXPECT_TRUE(Refused(Blob(R"({"__metadata__":{"k":null}})"), "must be a string, got null"));
  EXPECT_TRUE(Refused(Blob(R"({"__metadata__":{"k":{}}})"), "must be a string, got an object"));
  EXPECT_TRUE(Refused(Blob(R"({"__metadata__":{"k":["v"]}})"), "must be a string, got a list"));
  EXPECT_TRUE(Refused(Blob(R"({"__metadata__":{"k":true}})"), "must be a string, got a boolean"));
  EXPECT_TRUE(Decode(Blob(R"({"__metadata__":{}})")).ok());
}

TEST(SafetensorsDecodeTest, StringsMustBeValidUtf8) {
  const std::string rule = "header strings must be valid UTF-8";
  // Lone surrogate escapes, in a value, in a key, in a tensor name.
  EXPECT_TRUE(Refused(Blob(R"({"__metadata__":{"k":"\ud800"}})"), rule));
  EXPECT_TRUE(Refused(Blob(R"({"__metadata__":{"k":"\ud800"}})"), "surrogate"));
  EXPECT_TRUE(Refused(Blob(R"({"__metadata__":{"k":"\udc00"}})"), rule));
  EXPECT_TRUE(Refused(Blob(R"({"__metadata__":{"k":"\ud800x"}})"), rule));
  EXPECT_TRUE(Refused(Blob(R"({"__metadata__":{"k":"\ud800\u0041"}})"), rule));
  EXPECT_TRUE(Refused(Blob(R"({"__metadata__":{"\udbff":"v"}})"), rule));
  EXPECT_TRUE(Refused(Blob(R"({"\ud800":{"dtype":"U8","shape":[0],"data_offsets":[0,0]}})"), rule));
  // Raw bytes that are not UTF-8: stray continuation, overlong NUL, encoded surrogate, past
  // U+10FFFF.
  EXPECT_TRUE(Refused(Blob("{\"__metadata__\":{\"k\":\"\xff\"}}"), rule));
  EXPECT_TRUE(Refused(Blob("{\"__metadata__\":{\"k\":\"\x80\"}}"), rule));
  EXPECT_TRUE(Refused(Blob("{\"__metadata__\":{\"k\":\"\xc0\x80\"}}"), rule));
  EXPECT_TRUE(Refused(Blob("{\"__metadata__\":{\"k\":\"\xed\xa0\x80\"}}"), rule));
  EXPECT_TRUE(Refused(Blob("{\"__metadata__\":{\"k\":\"\xf4\x90\x80\x80\"}}"), rule));
  EXPECT_TRUE(Refused(Blob("{\"__metadata__\":{\"k\":\"\xe6\x9d\"}}"), rule));  // truncated
  // A proper pair decodes to one 4-byte character.
  Result<Decoded> decoded = Decode(Blob(R"({"__metadata__":{"k":"\ud83d\ude00"}})"));
  ASSERT_TRUE(decoded.ok()) << decoded.status().ToString();
  EXPECT_EQ(decoded->metadata.at("k"), "\xf0\x9f\x98\x80");
}

TEST(SafetensorsDecodeTest, MessagesAreValidUtf8WhateverTheInput) {
  // The message travels in JSON error bodies, so the invalid byte must be escaped in it.
  Result<Decoded> decoded = Decode(Blob("{\"__metadata__\":{\"k\":\"\xff\"}}"));
  ASSERT_FALSE(decoded.ok());
  const std::string message = decoded.status().message();
  for (unsigned char c : message) EXPECT_LT(c, 0x80);
}

}  // namespace
}  // namespace dmoe::safetensors
