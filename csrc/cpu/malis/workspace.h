// Per-thread scratch memory, reused across calls: a training loop calls MALIS on same-sized
// volumes every step, and fresh buffers would cost a page fault per 4 KiB touched (measured,
// BENCHMARKS.md). Every thread's workspace is registered so that
// release_malis_workspace() can free them all; calls hold the registry lock shared
// (WorkspaceInUse), the release holds it exclusively.
#pragma once

#include <cstdint>
#include <cstdlib>
#include <memory>
#include <shared_mutex>
#include <vector>

#include "components.h"
#include "radix_sort.h"
#include "split.h"
#include "sweep.h"

namespace seglosses {
namespace malis {

// malloc, or for sizes >= 2 MiB an aligned allocation with a huge-page hint (huge_pages); raises
// (naming fn) when out of memory.
void* allocate(size_t bytes, const char* fn, bool huge_pages);

// A grow-only buffer of trivially copyable T, left uninitialised. Large buffers are 2 MiB aligned
// and, unless constructed with huge_pages false, asked to be backed by transparent huge pages
// (fewer TLB misses in the sweep, the radix scatters and the part scatter, which touch them at
// random).
template <typename T>
class Buffer {
 public:
  explicit Buffer(bool huge_pages = true) : huge_pages_(huge_pages) {}

  T* get(int64_t n, const char* fn) {
    if (n > cap_) {
      data_.reset();  // before the new allocation: the old buffer is not copied
      data_.reset(static_cast<T*>(allocate(static_cast<size_t>(n) * sizeof(T), fn, huge_pages_)));
      cap_ = n;
    }
    return data_.get();
  }

  int64_t release() {
    const int64_t bytes = cap_ * static_cast<int64_t>(sizeof(T));
    data_.reset();
    cap_ = 0;
    return bytes;
  }

 private:
  struct Free {
    void operator()(T* p) const { std::free(p); }
  };
  std::unique_ptr<T, Free> data_;
  int64_t cap_ = 0;
  bool huge_pages_;
};

// Merge records in regions of their own (one per task), from chunks that stay where they are
// while the sample's tasks fill them.
class MergeArena {
 public:
  MergeArena(std::vector<Buffer<Merge>>& chunks, const char* fn) : chunks_(chunks), fn_(fn) {}

  // Room for n records.
  Records take(int64_t n);

 private:
  std::vector<Buffer<Merge>>& chunks_;
  const char* fn_;
  size_t chunk_ = 0;
  Merge* at_ = nullptr;
  int64_t left_ = 0;
};

struct Workspace {
  // A sample's buffers (on the thread that runs the sample). The first-group rooms are written
  // and read in order, and filled in part: on 2 MiB pages every room would be resident to its
  // end (Voronoi 128^3: 50 MiB instead of 27, BENCHMARKS.md).
  Buffer<uint64_t> first{/*huge_pages=*/false};
  Buffer<uint64_t> second, cut;
  std::vector<Buffer<Merge>> merges;
  Buffer<Node> nodes, gnodes;
  Buffer<LabelInfo> info;
  Buffer<Event> events;
  Buffer<uint8_t> flags;
  Buffer<int32_t> labels;
  // A task's scratch (on the thread that runs the task, which may be the sample's).
  Buffer<uint64_t> task_a, task_b;
  MsdScratch msd;
  std::vector<Segment> segs;

  int64_t release();
};

// The calling thread's workspace.
Workspace& workspace();

// Held (shared) by a call while it uses workspaces.
class WorkspaceInUse {
 public:
  WorkspaceInUse();

 private:
  std::shared_lock<std::shared_mutex> lock_;
};

// Frees every thread's workspace (waits for running calls); returns the bytes freed.
int64_t release_all_workspaces();

// A sample's labels as int32: int32 labels as they are; int64 labels (whose values the op's input
// checks found to fit) narrowed into the thread's workspace (cheaper than a fresh int32 tensor, and
// than reading 8-byte labels in every pass; BENCHMARKS.md).
const int32_t* int32_labels(const int32_t* seg, int64_t V, const char* fn, int threads);
const int32_t* int32_labels(const int64_t* seg, int64_t V, const char* fn, int threads);

}  // namespace malis
}  // namespace seglosses
