// What the CUDA backend moves between the GPU and the host (the MALIS and connected-components
// ops compute on the host: csrc/cuda/host_staging.cuh). Counted for the tests, which check that a
// call makes one trip each way, from pinned memory, with one wait; read with the op
// seglosses::_transfer_counts (csrc/seglosses.cpp). A CPU-only build counts nothing.
#pragma once

#include <atomic>
#include <cstdint>
#include <vector>

namespace seglosses {

struct TransferLog {
  std::atomic<int64_t> to_host_copies{0}, to_host_bytes{0};      // device -> host
  std::atomic<int64_t> to_device_copies{0}, to_device_bytes{0};  // host -> device
  std::atomic<int64_t> pageable_copies{0};  // copies whose host side is not pinned (should stay 0)
  std::atomic<int64_t> host_waits{0};       // times the host blocked until the GPU caught up
};

// The process-wide counters (defined in csrc/seglosses.cpp).
TransferLog& transfer_log();

// The counters in the order above, for the op.
std::vector<int64_t> transfer_counts();

}  // namespace seglosses
