// Moving the tensors of an op that computes on the host (MALIS, connected components) between the
// GPU and the host: one trip each way, from pinned memory, on the caller's stream.
//
//   ToHost trip;                          // on the current stream of the current device
//   at::Tensor h = trip.copy(device_t);   // enqueues an asynchronous copy into a pinned buffer
//   ...                                   // more copies: all in flight together
//   trip.wait();                          // the one wait: the host blocks until all have landed
//   ... compute on the host, into pinned_empty / pin_result buffers ...
//   return to_device(result, device);     // asynchronous copy back, ordered on the same stream
//
// Pinned (page-locked) buffers come from torch's caching host allocator, so a training loop
// reuses them instead of pinning fresh memory every step. The copy back does not wait: work the
// caller queues on its stream runs after it, and the allocator keeps the pinned buffer until the
// copy is done. Every copy and wait is counted in transfer_log() for the tests.
#pragma once

#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <c10/cuda/CUDAFunctions.h>
#include <c10/cuda/CUDAStream.h>

#include <vector>

#include "transfer_log.h"

namespace seglosses {
namespace cuda {

// t with every broadcast dim (stride 0, size > 1: an expanded tensor) cut to size 1, so that
// expanded data crosses the bus once; the host side expands it back (ToHost::copy).
inline at::Tensor without_broadcast_dims(const at::Tensor& t) {
  at::Tensor c = t;
  for (int64_t d = 0; d < t.dim(); ++d) {
    if (t.stride(d) == 0 && t.size(d) > 1) c = c.narrow(d, 0, 1);
  }
  return c;
}

// An empty host tensor in pinned memory (for a result that goes back to the GPU).
inline at::Tensor pinned_empty(at::IntArrayRef sizes, at::ScalarType dtype) {
  return at::empty(sizes, at::TensorOptions().dtype(dtype).pinned_memory(true));
}

// The inputs of one call on their way to the host: copy() enqueues, wait() blocks once.
class ToHost {
 public:
  ToHost() : stream_(c10::cuda::getCurrentCUDAStream()) {}

  // A host tensor with t's sizes and dtype that holds t's values after wait(). t is on the
  // current device (any layout; broadcast dims cross once); the values are what t holds once the
  // work queued so far on the current stream is done.
  at::Tensor copy(const at::Tensor& t) {
    const at::Tensor compact = without_broadcast_dims(t).contiguous();
    at::Tensor host = pinned_empty(compact.sizes(), compact.scalar_type());
    if (compact.numel() > 0) {
      host.copy_(compact, /*non_blocking=*/true);  // cudaMemcpyAsync on the current stream
      record(host, compact.numel() * compact.element_size());
      pending_ = true;
    }
    return host.expand(t.sizes());
  }

  // Blocks until every copy has landed (one stream synchronisation; none if nothing was copied).
  // torch.cuda.set_sync_debug_mode sees it: it is the call's one documented host sync.
  void wait() {
    if (!pending_) return;
    c10::cuda::stream_synchronize(stream_.stream());
    ++transfer_log().host_waits;
    pending_ = false;
  }

 private:
  static void record(const at::Tensor& host, int64_t bytes) {
    TransferLog& log = transfer_log();
    ++log.to_host_copies;
    log.to_host_bytes += bytes;
    if (!host.is_pinned()) ++log.pageable_copies;
  }

  c10::cuda::CUDAStream stream_;
  bool pending_ = false;
};

// A host result (contiguous; pinned, from pinned_empty or a pin_result computation) as a tensor on
// device, copied asynchronously on the current stream: the host does not wait.
inline at::Tensor to_device(const at::Tensor& host, at::Device device) {
  at::Tensor out = at::empty(host.sizes(), at::TensorOptions().dtype(host.scalar_type()).device(device));
  if (host.numel() > 0) {
    out.copy_(host, /*non_blocking=*/true);
    TransferLog& log = transfer_log();
    ++log.to_device_copies;
    log.to_device_bytes += host.numel() * host.element_size();
    if (!host.is_pinned()) ++log.pageable_copies;
  }
  return out;
}

}  // namespace cuda
}  // namespace seglosses
