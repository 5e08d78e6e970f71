// dmoe::tensor::CachingCpuAllocator: large tensors reuse freed blocks, small ones bypass it, and
// the idle cache stays within its bound. Install is process-wide, so every test installs the same
// options (a test binary may run them in any order, in one process or one each).
#include "tensor/cpu_allocator.h"

#include <ATen/ATen.h>
#include <c10/core/CPUAllocator.h>
#include <gtest/gtest.h>

#include <thread>
#include <vector>

namespace dmoe::tensor {
namespace {

constexpr size_t kMin = 256 << 10;
constexpr size_t kMaxIdle = 4 << 20;
constexpr size_t kOverPeak = 1 << 20;

CachingCpuAllocator* Allocator() {
  return CachingCpuAllocator::Install(
      {.min_block_bytes = kMin, .max_idle_bytes = kMaxIdle, .max_idle_over_peak_bytes = kOverPeak});
}

// A float tensor of exactly `bytes` bytes.
at::Tensor OfBytes(size_t bytes) {
  return at::empty({static_cast<int64_t>(bytes / sizeof(float))}, at::kFloat);
}

TEST(CachingCpuAllocatorTest, InstallIsOnceAndBecomesTorchsCpuAllocator) {
  CachingCpuAllocator* a = Allocator();
  EXPECT_EQ(CachingCpuAllocator::Installed(), a);
  EXPECT_EQ(c10::GetCPUAllocator(), a);
  // A second install keeps the first allocator and its options.
  CachingCpuAllocator* b = CachingCpuAllocator::Install(
      {.min_block_bytes = 1, .max_idle_bytes = 1, .max_idle_over_peak_bytes = 1});
  EXPECT_EQ(b, a);
  EXPECT_EQ(b->options().max_idle_bytes, kMaxIdle);
}

TEST(CachingCpuAllocatorTest, FreedBlockIsReusedForTheSameSize) {
  CachingCpuAllocator* a = Allocator();
  a->ReleaseIdle();
  const CpuAllocatorStats before = a->stats();
  void* first = nullptr;
  {
    at::Tensor t = OfBytes(1 << 20);
    first = t.data_ptr();
    t.fill_(1.0f);
    EXPECT_EQ(a->stats().live_bytes, before.live_bytes + (1 << 20));
    EXPECT_EQ(a->stats().mapped, before.mapped + 1);
  }
  EXPECT_EQ(a->stats().live_bytes, before.live_bytes);
  EXPECT_EQ(a->stats().idle_bytes, 1 << 20);
  at::Tensor again = OfBytes(1 << 20);
  EXPECT_EQ(again.data_ptr(), first);
  EXPECT_EQ(a->stats().mapped, before.mapped + 1);
  EXPECT_EQ(a->stats().reused, before.reused + 1);
  EXPECT_EQ(a->stats().idle_bytes, 0);
}

TEST(CachingCpuAllocatorTest, NearbySizesShareASizeClass) {
  CachingCpuAllocator* a = Allocator();
  a->ReleaseIdle();
  { at::Tensor t = OfBytes((1 << 20) + (100 << 10)); }  // Mapped as 1 MiB + 128 KiB.
  const CpuAllocatorStats before = a->stats();
  at::Tensor t = OfBytes((1 << 20) + (64 << 10));
  EXPECT_EQ(a->stats().reused, before.reused + 1);
  EXPECT_EQ(a->stats().live_bytes, before.live_bytes + (1 << 20) + (128 << 10));
}

TEST(CachingCpuAllocatorTest, SmallTensorsBypassTheCache) {
  CachingCpuAllocator* a = Allocator();
  const CpuAllocatorStats before = a->stats();
  at::Tensor t = OfBytes(kMin - 4096);
  t.fill_(2.0f);
  EXPECT_EQ(a->stats().live_bytes, before.live_bytes);
  EXPECT_EQ(a->stats().mapped, before.mapped);
  EXPECT_FLOAT_EQ(t.sum().item<float>(), 2.0f * static_cast<float>(t.numel()));
}

TEST(CachingCpuAllocatorTest, IdleBlocksStayWithinTheBoundOldestUnmappedFirst) {
  CachingCpuAllocator* a = Allocator();
  a->ReleaseIdle();
  {
    std::vector<at::Tensor> many;
    for (int i = 0; i < 6; ++i) many.push_back(OfBytes(1 << 20));
  }
  // Six 1 MiB blocks freed into a 4 MiB cache: two are unmapped.
  EXPECT_EQ(a->stats().idle_bytes, static_cast<int64_t>(kMaxIdle));
  a->ReleaseIdle();
  { at::Tensor big = OfBytes(kMaxIdle + (1 << 20)); }  // Larger than the whole cache: never kept.
  EXPECT_EQ(a->stats().idle_bytes, 0);
}

// Idle blocks never lift live + idle more than kOverPeak above the most ever live: a block mapped
// at a new peak pushes idle blocks out.
TEST(CachingCpuAllocatorTest, IdleBlocksNeverLiftMemoryPastThePeakBound) {
  CachingCpuAllocator* a = Allocator();
  a->ReleaseIdle();
  // Live tensors up to a new peak, in 1 MiB blocks.
  std::vector<at::Tensor> held;
  const int64_t target = a->stats().peak_live_bytes + (3 << 20);
  while (a->stats().live_bytes < target) held.push_back(OfBytes(1 << 20));
  const int64_t peak = a->stats().peak_live_bytes;
  held.resize(held.size() - 3);  // 3 MiB idle: live + idle is the peak.
  EXPECT_EQ(a->stats().idle_bytes, 3 << 20);
  // A 2 MiB block is a new size: mapped, live + idle would be peak + 2 MiB, so 1 MiB goes.
  at::Tensor other = OfBytes(2 << 20);
  const CpuAllocatorStats s = a->stats();
  EXPECT_EQ(s.peak_live_bytes, peak);
  EXPECT_EQ(s.idle_bytes, 2 << 20);
  EXPECT_EQ(s.live_bytes + s.idle_bytes, peak + static_cast<int64_t>(kOverPeak));
}

TEST(CachingCpuAllocatorTest, TensorsMadeOnOneThreadAndFreedOnAnotherAreReused) {
  CachingCpuAllocator* a = Allocator();
  a->ReleaseIdle();
  at::Tensor made;
  std::thread([&] { made = OfBytes(2 << 20).fill_(3.0f); }).join();
  void* ptr = made.data_ptr();
  std::thread([&] { made.reset(); }).join();
  at::Tensor again = OfBytes(2 << 20);
  EXPECT_EQ(again.data_ptr(), ptr);
}

TEST(CachingCpuAllocatorTest, TorchOpsComputeTheSameThroughIt) {
  Allocator();
  at::manual_seed(7);
  at::Tensor x = at::randn({256, 1024});
  at::Tensor w = at::randn({1024, 1024});
  at::Tensor y = at::mm(x, w);
  // The same product in double precision on the default path: the allocator changes nothing.
  at::Tensor ref = at::mm(x.to(at::kDouble), w.to(at::kDouble)).to(at::kFloat);
  EXPECT_TRUE(at::allclose(y, ref, 1e-3, 1e-3));
}

}  // namespace
}  // namespace dmoe::tensor
