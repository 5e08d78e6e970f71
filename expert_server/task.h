// What a request to the compute runtime carries (expert_server/runtime.h): the tensors of one
// forward or backward call, and where its answer goes. Includes libtorch; only the parts that make
// or read tensors (the API's handlers, the runtime itself, its tests) include it.
#ifndef DMOE_EXPERT_SERVER_TASK_H_
#define DMOE_EXPERT_SERVER_TASK_H_

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <functional>
#include <optional>

#include "core/status.h"
#include "expert_server/runtime.h"

namespace dmoe::expert_server {

struct TaskResult {
  at::Tensor output;  // y for forward, grad_x for backward
  int64_t step = 0;   // the expert's optimizer step when it computed
};

struct Task {
  TaskKind kind = TaskKind::kForward;
  at::Tensor x;
  at::Tensor grad_y;  // backward only
  std::optional<at::Tensor> mask;
  std::optional<int64_t> step_seen;  // backward only
  std::function<void(Result<TaskResult>)> done;
};

}  // namespace dmoe::expert_server

#endif  // DMOE_EXPERT_SERVER_TASK_H_
