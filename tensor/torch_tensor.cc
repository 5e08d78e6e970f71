#include "tensor/torch_tensor.h"

#include <ATen/ops/empty.h>
#include <c10/util/Exception.h>

#include <bit>
#include <cstring>
#include <utility>

#include "tensor/utf8.h"

namespace dmoe::tensor {
namespace {

// The wire is little-endian and tensors are copied byte for byte.
static_assert(std::endian::native == std::endian::little,
              "dmoe::tensor assumes a little-endian host");

using safetensors::DType;

// c10::Error messages carry a C++ backtrace after the first line; a person needs the first line.
std::string FirstLine(const c10::Error& e) {
  std::string message = e.what_without_backtrace();
  if (const size_t newline = message.find('\n'); newline != std::string::npos) {
    message.resize(newline);
  }
  return message;
}

}  // namespace

c10::ScalarType ToScalarType(DType dtype) {
  switch (dtype) {
    case DType::kF32:
      return at::kFloat;
    case DType::kF16:
      return at::kHalf;
    case DType::kBF16:
      return at::kBFloat16;
    case DType::kF64:
      return at::kDouble;
    case DType::kI64:
      return at::kLong;
    case DType::kI32:
      return at::kInt;
    case DType::kU8:
      return at::kByte;
    case DType::kBool:
      return at::kBool;
  }
  return at::kFloat;  // Unreachable for a valid enumerator.
}

Result<DType> FromScalarType(c10::ScalarType type) {
  switch (type) {
    case at::kFloat:
      return DType::kF32;
    case at::kHalf:
      return DType::kF16;
    case at::kBFloat16:
      return DType::kBF16;
    case at::kDouble:
      return DType::kF64;
    case at::kLong:
      return DType::kI64;
    case at::kInt:
      return DType::kI32;
    case at::kByte:
      return DType::kU8;
    case at::kBool:
      return DType::kBool;
    default:
      return InvalidArgumentError(std::string("tensor: torch dtype ") + c10::toString(type) +
                                  " has no safetensors dtype; allowed: float32, float16, "
                                  "bfloat16, float64, int64, int32, uint8, bool");
  }
}

Result<at::Tensor> ToTorch(const safetensors::TensorView& view) {
  if (view.NumElements() < 0 ||
      static_cast<uint64_t>(view.NumElements()) * safetensors::ItemSize(view.dtype) !=
          view.data.size()) {
    return InvalidArgumentError(
        "tensor: view " + safetensors::internal::QuoteForMessage(view.name) + " holds " +
        std::to_string(view.data.size()) + " bytes, which does not match its shape and dtype");
  }
  try {
    at::Tensor out = at::empty(view.shape, at::TensorOptions().dtype(ToScalarType(view.dtype)));
    if (!view.data.empty()) std::memcpy(out.data_ptr(), view.data.data(), view.data.size());
    return out;
  } catch (const c10::Error& e) {
    return InvalidArgumentError("tensor: cannot make a torch tensor of " +
                                safetensors::internal::QuoteForMessage(view.name) + ": " +
                                FirstLine(e));
  }
}

Result<TorchPayload> DecodeToTorch(std::span<const uint8_t> blob) {
  DMOE_ASSIGN_OR_RETURN(safetensors::Decoded decoded, safetensors::Decode(blob));
  TorchPayload payload;
  for (const safetensors::TensorView& view : decoded.tensors) {
    DMOE_ASSIGN_OR_RETURN(at::Tensor t, ToTorch(view));
    payload.tensors.emplace(view.name, std::move(t));
  }
  payload.metadata = std::move(decoded.metadata);
  return payload;
}

Result<std::vector<uint8_t>> EncodeFromTorch(const std::vector<NamedTensor>& tensors,
                                             const std::map<std::string, std::string>& metadata) {
  std::vector<uint8_t> blob;
  DMOE_RETURN_IF_ERROR(EncodeFromTorchInto(tensors, metadata, &blob));
  return blob;
}

size_t EncodedSizeHint(const std::vector<NamedTensor>& tensors) {
  size_t bytes = 4096;
  for (const NamedTensor& t : tensors) bytes += t.tensor.defined() ? t.tensor.nbytes() : 0;
  return bytes;
}

Status EncodeFromTorchInto(const std::vector<NamedTensor>& tensors,
                           const std::map<std::string, std::string>& metadata,
                           std::vector<uint8_t>* blob) {
  // Keeps the contiguous copies alive until Encode has copied their bytes.
  std::vector<at::Tensor> contiguous;
  contiguous.reserve(tensors.size());
  std::vector<safetensors::TensorRef> refs;
  refs.reserve(tensors.size());
  try {
    for (const NamedTensor& named : tensors) {
      const at::Tensor& t = named.tensor;
      if (!t.defined()) {
        return InvalidArgumentError(
            "tensor: " + safetensors::internal::QuoteForMessage(named.name) +
            " is an undefined tensor");
      }
      if (t.layout() != at::kStrided) {
        return InvalidArgumentError(
            "tensor: " + safetensors::internal::QuoteForMessage(named.name) +
            " is not a dense (strided) tensor");
      }
      DMOE_ASSIGN_OR_RETURN(DType dtype, FromScalarType(t.scalar_type()));
      at::Tensor c = t.detach().cpu().contiguous();
      safetensors::TensorRef ref;
      ref.name = named.name;
      ref.dtype = dtype;
      ref.shape.assign(c.sizes().begin(), c.sizes().end());
      ref.data = std::span<const uint8_t>(static_cast<const uint8_t*>(c.data_ptr()), c.nbytes());
      refs.push_back(std::move(ref));
      contiguous.push_back(std::move(c));
    }
  } catch (const c10::Error& e) {
    return InternalError("tensor: cannot prepare tensors for encoding: " + FirstLine(e));
  }
  return safetensors::EncodeInto(refs, metadata, blob);
}

}  // namespace dmoe::tensor
