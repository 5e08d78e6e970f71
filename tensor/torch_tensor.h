// dmoe::tensor: the one place where the safetensors wire format meets libtorch.
//
// Decoding copies: every at::Tensor returned here owns its memory (contiguous, CPU), so it outlives
// the blob and is aligned whatever the blob's alignment. Encoding copies each tensor's bytes once,
// into the blob. Errors are Status values; no c10::Error leaves this module. Decoding failures are
// kInvalidArgument (PROTOCOL section 2); encoding refuses undefined, sparse or unsupported-dtype
// tensors with kInvalidArgument. All functions are safe to call from any thread.
#ifndef DMOE_TENSOR_TORCH_TENSOR_H_
#define DMOE_TENSOR_TORCH_TENSOR_H_

#include <ATen/core/Tensor.h>
#include <c10/core/ScalarType.h>

#include <cstdint>
#include <map>
#include <span>
#include <string>
#include <vector>

#include "core/status.h"
#include "tensor/safetensors.h"

namespace dmoe::tensor {

// F32 = kFloat, F16 = kHalf, BF16 = kBFloat16, F64 = kDouble, I64 = kLong, I32 = kInt, U8 = kByte,
// BOOL = kBool.
c10::ScalarType ToScalarType(safetensors::DType dtype);
// The inverse of ToScalarType; kInvalidArgument for a scalar type the protocol does not carry.
Result<safetensors::DType> FromScalarType(c10::ScalarType type);

// Copies a view's bytes into a new contiguous CPU tensor of the view's dtype and shape.
Result<at::Tensor> ToTorch(const safetensors::TensorView& view);

struct TorchPayload {
  std::map<std::string, at::Tensor> tensors;
  std::map<std::string, std::string> metadata;
};

// Decode followed by ToTorch of every tensor.
Result<TorchPayload> DecodeToTorch(std::span<const uint8_t> blob);

struct NamedTensor {
  std::string name;
  at::Tensor tensor;
};

// Encodes tensors, laid out in the given order, and metadata into a blob. Each tensor is detached
// and made contiguous on the CPU first; its autograd history is ignored.
Result<std::vector<uint8_t>> EncodeFromTorch(
    const std::vector<NamedTensor>& tensors,
    const std::map<std::string, std::string>& metadata = {});
// The bytes of `tensors` plus room for a header with a few metadata entries: the capacity to take
// for a blob EncodeFromTorchInto will fill, so that it need not reallocate.
size_t EncodedSizeHint(const std::vector<NamedTensor>& tensors);
// The same into `blob`, replacing its contents; a blob with enough capacity is not reallocated
// (a server encodes its answers into reused buffers, see net/buffer_pool.h).
Status EncodeFromTorchInto(const std::vector<NamedTensor>& tensors,
                           const std::map<std::string, std::string>& metadata,
                           std::vector<uint8_t>* blob);

}  // namespace dmoe::tensor

#endif  // DMOE_TENSOR_TORCH_TENSOR_H_
