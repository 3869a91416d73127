// Running the tasks of one sample on several threads (slabs.h, parts.h).
#pragma once

#include <ATen/Parallel.h>

#include <algorithm>
#include <atomic>
#include <cstdint>

namespace seglosses {
namespace malis {

// Runs task(i) for i in 0 .. n - 1 on up to `threads` threads of torch's intra-op pool, each
// thread taking the next task as it becomes free (so list big tasks first). Inside a parallel
// region (a batch that runs one sample per thread) the tasks run one after the other.
template <typename Task>
void run_tasks(int threads, int64_t n, Task&& task) {
  if (threads <= 1 || n <= 1) {
    for (int64_t i = 0; i < n; ++i) task(i);
    return;
  }
  std::atomic<int64_t> next{0};
  at::parallel_for(0, std::min<int64_t>(threads, n), 1, [&](int64_t begin, int64_t end) {
    for (int64_t worker = begin; worker < end; ++worker) {
      for (int64_t i = next.fetch_add(1); i < n; i = next.fetch_add(1)) task(i);
    }
  });
}

}  // namespace malis
}  // namespace seglosses
