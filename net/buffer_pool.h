// BufferPool: reuse of the large byte buffers that requests and answers travel in.
//
// Why: an expert's request and answer bodies are a MiB or more each (x of 256 x 1024 F32 is
// 1 MiB), and glibc gives each such buffer a fresh mapping (dmoe-server fixes its mmap threshold
// at 1 MiB, see expert_server/process_memory.h), so every body cost a page fault per 4 KiB page
// and a zero-fill on first touch, then an munmap. Measured with bench/server (ffn d=1024, forward
// at batch 256, 16 clients over HTTP), that was ~10% of the machine: remote/in-process 0.81 with
// fresh buffers, 0.90 with glibc reusing them. Letting glibc keep them (a high mmap threshold)
// costs 15 MiB of peak RSS in per-thread arenas; this pool keeps at most `max_idle_bytes`.
//
// Users take a buffer where a body is about to be written (a body read from a socket, an answer
// encoded) and give it back where the bytes are done with (written to a socket, decoded into
// tensors). A buffer never given back is simply freed by its vector; one given back that the pool
// cannot keep is freed at once. Thread-safe.
//
// Ownership: a process builds one pool in its wiring (its main) and lends it to its servers and
// clients (HttpServerOptions, HttpClientOptions and WsClientOptions::buffer_pool), so that a buffer
// taken by one is reused by another. The pool must outlive every server, client and connection it
// was lent to. A server or client given none keeps a private pool of its own.
#ifndef DMOE_NET_BUFFER_POOL_H_
#define DMOE_NET_BUFFER_POOL_H_

#include <cstddef>
#include <cstdint>
#include <mutex>
#include <vector>

#include "net/http_message.h"

namespace dmoe::net {

struct BufferPoolOptions {
  // Buffers of a smaller capacity are left to malloc (it reuses small blocks well on its own).
  size_t min_bytes = 64 << 10;
  // Idle buffers are kept while their capacities sum to at most this; past it, the least recently
  // given back are freed.
  size_t max_idle_bytes = 8 << 20;
};

struct BufferPoolStats {
  int64_t idle_bytes = 0;  // capacity of the buffers kept now
  int64_t idle_buffers = 0;
  int64_t reused = 0;  // Takes served from a kept buffer
  int64_t missed = 0;  // Takes of at least min_bytes that found none large enough
};

class BufferPool {
 public:
  explicit BufferPool(BufferPoolOptions options = {});
  BufferPool(const BufferPool&) = delete;
  BufferPool& operator=(const BufferPool&) = delete;

  // An empty buffer whose capacity is at least `bytes`: the smallest kept buffer that is large
  // enough, else a new one with that capacity reserved.
  Bytes Take(size_t bytes);
  // Keeps `buffer`'s memory for a later Take (its contents are dropped), or frees it when it is
  // below min_bytes or the idle bound does not allow it. `buffer` is left empty either way.
  void Give(Bytes&& buffer);

  BufferPoolStats stats() const;

 private:
  const BufferPoolOptions options_;
  mutable std::mutex mu_;
  std::vector<Bytes> idle_;  // least recently given back first
  BufferPoolStats stats_;
};

}  // namespace dmoe::net

#endif  // DMOE_NET_BUFFER_POOL_H_
