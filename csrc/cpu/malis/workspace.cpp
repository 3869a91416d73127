#include "workspace.h"

#include "tasks.h"

#include <c10/util/Exception.h>

#if __has_include(<sys/mman.h>)
#include <sys/mman.h>  // madvise (huge pages for the scratch buffers)
#endif

#include <algorithm>
#include <mutex>
#include <vector>

namespace seglosses {
namespace malis {
namespace {

constexpr size_t kHugePage = size_t(1) << 21;

struct Registry {
  std::shared_mutex mutex;  // shared: a call is using workspaces; exclusive: release
  std::mutex list_mutex;
  std::vector<Workspace*> all;
};

Registry& registry() {
  static Registry* r = new Registry();  // never destroyed: thread-exit hooks may run after statics
  return *r;
}

}  // namespace

void* allocate(size_t bytes, const char* fn, bool huge_pages) {
  if (bytes < kHugePage || !huge_pages) {
    void* p = std::malloc(std::max<size_t>(bytes, 1));
    TORCH_CHECK(p != nullptr, fn, ": out of memory allocating ", bytes, " bytes of scratch");
    return p;
  }
  const size_t rounded = (bytes + kHugePage - 1) / kHugePage * kHugePage;
  void* p = std::aligned_alloc(kHugePage, rounded);
  TORCH_CHECK(p != nullptr, fn, ": out of memory allocating ", rounded, " bytes of scratch");
#if defined(MADV_HUGEPAGE)
  madvise(p, rounded, MADV_HUGEPAGE);  // a hint: failure only costs speed
#endif
  return p;
}

// Merge chunks hold at least this many records: a few chunks per sample.
constexpr int64_t kMergeChunk = int64_t(1) << 20;

Records MergeArena::take(int64_t n) {
  if (n > left_) {
    if (at_ != nullptr) ++chunk_;
    if (chunk_ == chunks_.size()) chunks_.emplace_back();
    left_ = std::max(n, kMergeChunk);
    at_ = chunks_[chunk_].get(left_, fn_);
  }
  Records r;
  r.merges = at_;
  at_ += n;
  left_ -= n;
  return r;
}

int64_t Workspace::release() {
  int64_t bytes = first.release() + second.release() + cut.release() + nodes.release() + gnodes.release() +
                  info.release() + events.release() + flags.release() + labels.release() + task_a.release() +
                  task_b.release();
  for (Buffer<Merge>& m : merges) bytes += m.release();
  merges.clear();
  bytes += static_cast<int64_t>(msd.hist.capacity() * sizeof(uint32_t) +
                                (msd.bucket.capacity() + msd.lines.capacity()) * sizeof(uint64_t) +
                                segs.capacity() * sizeof(Segment));
  std::vector<uint32_t>().swap(msd.hist);
  std::vector<uint64_t>().swap(msd.bucket);
  std::vector<uint64_t>().swap(msd.lines);
  std::vector<Segment>().swap(segs);
  return bytes;
}

Workspace& workspace() {
  struct Holder {
    Workspace ws;
    Holder() {
      std::lock_guard<std::mutex> lock(registry().list_mutex);
      registry().all.push_back(&ws);
    }
    ~Holder() {
      std::lock_guard<std::mutex> lock(registry().list_mutex);
      auto& all = registry().all;
      all.erase(std::remove(all.begin(), all.end(), &ws), all.end());
    }
  };
  thread_local Holder holder;
  return holder.ws;
}

WorkspaceInUse::WorkspaceInUse() : lock_(registry().mutex) {}

int64_t release_all_workspaces() {
  const std::unique_lock<std::shared_mutex> exclusive(registry().mutex);
  std::lock_guard<std::mutex> lock(registry().list_mutex);
  int64_t bytes = 0;
  for (Workspace* ws : registry().all) bytes += ws->release();
  return bytes;
}

const int32_t* int32_labels(const int32_t* seg, int64_t, const char*, int) { return seg; }

const int32_t* int32_labels(const int64_t* seg, int64_t V, const char* fn, int threads) {
  int32_t* out = workspace().labels.get(V, fn);
  run_tasks(threads, threads, [&](int64_t t) {
    const int64_t begin = V * t / threads, end = V * (t + 1) / threads;
    for (int64_t v = begin; v < end; ++v) out[v] = static_cast<int32_t>(seg[v]);
  });
  return out;
}

}  // namespace malis
}  // namespace seglosses
