// What our CPU kernels (engines/*/cpu_attention.cc) share: running independent units of work
// on the calling thread and XLA's intra-op thread pool.
#pragma once

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <memory>
#include <thread>

#include "xla/ffi/api/ffi.h"

namespace hyperbatch {

// Runs fn(unit) for unit in [0, total) on the calling thread and pool helpers; returns when all
// are done. Work is claimed from an atomic counter; the caller waits only for work already
// claimed, never for a helper to start, so a busy pool cannot deadlock it.
template <typename Fn>
void ParallelFor(xla::ffi::ThreadPool& pool, int64_t total, Fn fn) {
  struct State {
    std::atomic<int64_t> next{0};
    std::atomic<int64_t> done{0};
  };
  auto state = std::make_shared<State>();
  auto work = [state, total, fn] {
    for (int64_t u; (u = state->next.fetch_add(1, std::memory_order_relaxed)) < total;) {
      fn(u);
      state->done.fetch_add(1, std::memory_order_release);
    }
  };
  const int64_t helpers = std::min<int64_t>(pool.num_threads(), total) - 1;
  for (int64_t h = 0; h < helpers; ++h) pool.Schedule(decltype(work)(work));  // late: no work
  work();
  while (state->done.load(std::memory_order_acquire) < total) std::this_thread::yield();
}

}  // namespace hyperbatch
