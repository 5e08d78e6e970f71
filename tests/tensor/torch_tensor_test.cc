// dmoe::tensor: torch tensors through the codec and back, for every dtype the protocol carries.
#include <gtest/gtest.h>
#include <torch/types.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <map>
#include <span>
#include <string>
#include <vector>

#include "tensor/safetensors.h"
#include "tensor/torch_tensor.h"

namespace dmoe::tensor {
namespace {

using safetensors::DType;

constexpr DType kAllDTypes[] = {DType::kF32, DType::kF16, DType::kBF16, DType::kF64,
                                DType::kI64, DType::kI32, DType::kU8,   DType::kBool};

// A tensor of the given dtype and shape with varied, exactly representable values.
at::Tensor Sample(DType dtype, at::IntArrayRef shape) {
  const int64_t n = c10::multiply_integers(shape);
  at::Tensor values = torch::arange(n, torch::kInt64).reshape(shape);
  if (dtype == DType::kBool) return (values % 3 == 0);
  if (dtype == DType::kU8) return (values % 251).to(torch::kUInt8);
  if (dtype == DType::kI64) return values * -1000003;
  return (values - n / 2).to(ToScalarType(dtype));
}

TEST(TorchTensorTest, MapsEveryDTypeBothWays) {
  const std::map<DType, c10::ScalarType> expected = {
      {DType::kF32, at::kFloat},  {DType::kF16, at::kHalf}, {DType::kBF16, at::kBFloat16},
      {DType::kF64, at::kDouble}, {DType::kI64, at::kLong}, {DType::kI32, at::kInt},
      {DType::kU8, at::kByte},    {DType::kBool, at::kBool}};
  for (const auto& [dtype, type] : expected) {
    EXPECT_EQ(ToScalarType(dtype), type);
    Result<DType> back = FromScalarType(type);
    ASSERT_TRUE(back.ok());
    EXPECT_EQ(*back, dtype);
  }
  for (c10::ScalarType other : {at::kChar, at::kShort, at::kComplexFloat, at::kQInt8}) {
    Result<DType> refused = FromScalarType(other);
    ASSERT_FALSE(refused.ok());
    EXPECT_EQ(refused.status().code(), Code::kInvalidArgument);
    EXPECT_NE(refused.status().message().find("has no safetensors dtype"), std::string::npos);
  }
}

TEST(TorchTensorTest, RoundTripsEveryDTypeAtSeveralRanks) {
  const std::vector<std::vector<int64_t>> shapes = {
      {}, {5}, {2, 3}, {2, 1, 3}, {0}, {3, 0, 2}, {1, 2, 1, 2, 1, 2, 1, 2}};
  for (DType dtype : kAllDTypes) {
    for (const std::vector<int64_t>& shape : shapes) {
      const at::Tensor original = Sample(dtype, shape);
      Result<std::vector<uint8_t>> blob =
          EncodeFromTorch({{"t", original}}, {{"dtype", std::string(DTypeName(dtype))}});
      ASSERT_TRUE(blob.ok()) << blob.status().ToString();
      Result<TorchPayload> payload = DecodeToTorch(*blob);
      ASSERT_TRUE(payload.ok()) << payload.status().ToString();
      ASSERT_EQ(payload->tensors.count("t"), 1u);
      const at::Tensor& t = payload->tensors.at("t");
      EXPECT_EQ(t.scalar_type(), ToScalarType(dtype));
      EXPECT_EQ(t.sizes(), original.sizes());
      EXPECT_TRUE(t.is_contiguous());
      EXPECT_TRUE(t.equal(original)) << DTypeName(dtype) << " shape " << original.sizes();
      EXPECT_EQ(payload->metadata.at("dtype"), DTypeName(dtype));
    }
  }
}

TEST(TorchTensorTest, KeepsFloatBitsExactly) {
  const at::Tensor x = torch::tensor({0.0f, -0.0f, 1e-40f, 3.5f, INFINITY, -INFINITY, NAN});
  Result<std::vector<uint8_t>> blob = EncodeFromTorch({{"x", x}});
  ASSERT_TRUE(blob.ok()) << blob.status().ToString();
  Result<TorchPayload> payload = DecodeToTorch(*blob);
  ASSERT_TRUE(payload.ok());
  const at::Tensor y = payload->tensors.at("x");
  EXPECT_TRUE(y.view(torch::kInt32).equal(x.view(torch::kInt32)));
}

TEST(TorchTensorTest, EncodesNonContiguousAndAutogradTensorsByValue) {
  const at::Tensor base = torch::arange(12, torch::kFloat32).reshape({3, 4});
  const at::Tensor transposed = base.t();                               // non-contiguous
  const at::Tensor sliced = base.index({torch::indexing::Slice(), 1});  // stride 4, offset 1
  const at::Tensor leaf = torch::ones({2}, torch::requires_grad());
  Result<std::vector<uint8_t>> blob =
      EncodeFromTorch({{"transposed", transposed}, {"sliced", sliced}, {"leaf", leaf * 2}});
  ASSERT_TRUE(blob.ok()) << blob.status().ToString();
  Result<TorchPayload> payload = DecodeToTorch(*blob);
  ASSERT_TRUE(payload.ok()) << payload.status().ToString();
  EXPECT_TRUE(payload->tensors.at("transposed").equal(transposed));
  EXPECT_TRUE(payload->tensors.at("sliced").equal(sliced));
  EXPECT_TRUE(payload->tensors.at("leaf").equal(torch::full({2}, 2.0f)));
  EXPECT_FALSE(payload->tensors.at("leaf").requires_grad());
}

TEST(TorchTensorTest, DecodedTensorsOwnTheirMemory) {
  Result<std::vector<uint8_t>> blob = EncodeFromTorch({{"x", torch::ones({4}, torch::kFloat32)}});
  ASSERT_TRUE(blob.ok());
  Result<TorchPayload> payload = DecodeToTorch(*blob);
  ASSERT_TRUE(payload.ok());
  const at::Tensor x = payload->tensors.at("x");
  const auto* begin = blob->data();
  const auto* data = static_cast<const uint8_t*>(x.data_ptr());
  EXPECT_TRUE(data < begin || data >= begin + blob->size());
  std::fill(blob->begin(), blob->end(), 0xff);
  EXPECT_TRUE(x.equal(torch::ones({4}, torch::kFloat32)));
}

TEST(TorchTensorTest, ToTorchCopiesFromAnUnalignedView) {
  // Five bytes of padding put the F32 data at an odd address.
  std::vector<uint8_t> storage(5 + 8);
  const float values[2] = {1.5f, -2.25f};
  std::memcpy(storage.data() + 5, values, 8);
  safetensors::TensorView view;
  view.name = "v";
  view.dtype = DType::kF32;
  view.shape = {2};
  view.data = std::span<const uint8_t>(storage.data() + 5, 8);
  Result<at::Tensor> t = ToTorch(view);
  ASSERT_TRUE(t.ok()) << t.status().ToString();
  EXPECT_TRUE(t->equal(torch::tensor({1.5f, -2.25f})));
}

TEST(TorchTensorTest, ToTorchRefusesAViewWhoseBytesDoNotMatch) {
  std::vector<uint8_t> storage(6);
  safetensors::TensorView view;
  view.name = "v";
  view.shape = {2};
  view.data = storage;
  Result<at::Tensor> t = ToTorch(view);
  ASSERT_FALSE(t.ok());
  EXPECT_EQ(t.status().code(), Code::kInvalidArgument);
  EXPECT_NE(t.status().message().find("does not match its shape and dtype"), std::string::npos);
}

TEST(TorchTensorTest, ToTorchHandlesAHugeDimensionNextToZero) {
  safetensors::TensorView view;
  view.name = "e";
  view.dtype = DType::kF32;
  view.shape = {INT64_MAX, 0};
  Result<at::Tensor> t = ToTorch(view);
  // Torch may or may not accept such sizes; either way the answer is a Status, never an exception.
  if (t.ok()) {
    EXPECT_EQ(t->numel(), 0);
  } else {
    EXPECT_EQ(t.status().code(), Code::kInvalidArgument);
  }
}

TEST(TorchTensorTest, DecodeToTorchPassesCodecRefusalsThrough) {
  std::vector<uint8_t> blob(4, 0);
  Result<TorchPayload> payload = DecodeToTorch(blob);
  ASSERT_FALSE(payload.ok());
  EXPECT_EQ(payload.status().code(), Code::kInvalidArgument);
  EXPECT_NE(payload.status().message().find("shorter than the 8-byte header length"),
            std::string::npos);
}

TEST(TorchTensorTest, EncodeRefusesWhatTheProtocolCannotCarry) {
  Result<std::vector<uint8_t>> undefined = EncodeFromTorch({{"u", at::Tensor()}});
  ASSERT_FALSE(undefined.ok());
  EXPECT_EQ(undefined.status().code(), Code::kInvalidArgument);
  EXPECT_NE(undefined.status().message().find("undefined"), std::string::npos);

  Result<std::vector<uint8_t>> int8 = EncodeFromTorch({{"c", torch::zeros({2}, torch::kInt8)}});
  ASSERT_FALSE(int8.ok());
  EXPECT_EQ(int8.status().code(), Code::kInvalidArgument);

  const at::Tensor sparse = torch::eye(3).to_sparse();
  Result<std::vector<uint8_t>> refused = EncodeFromTorch({{"s", sparse}});
  ASSERT_FALSE(refused.ok());
  EXPECT_EQ(refused.status().code(), Code::kInvalidArgument);
  EXPECT_NE(refused.status().message().find("not a dense"), std::string::npos);

  Result<std::vector<uint8_t>> bad_name = EncodeFromTorch({{"", torch::zeros({1})}});
  ASSERT_FALSE(bad_name.ok());
  EXPECT_NE(bad_name.status().message().find("tensor name must be 1 to 256 bytes"),
            std::string::npos);

  Result<std::vector<uint8_t>> dup =
      EncodeFromTorch({{"x", torch::zeros({1})}, {"x", torch::zeros({1})}});
  ASSERT_FALSE(dup.ok());
  EXPECT_NE(dup.status().message().find("duplicate key 'x'"), std::string::npos);
}

}  // namespace
}  // namespace dmoe::tensor
