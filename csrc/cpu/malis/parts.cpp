#include "parts.h"

#include <algorithm>

#include "split.h"
#include "tasks.h"
#include "tuning.h"

namespace seglosses {
namespace malis {
namespace {

struct Task {
  uint32_t part;
  int slab;  // -1: the whole part
  int64_t items;
  int64_t voxels;              // the part's voxels (in the slab, for a piece)
  std::vector<Segment> segs;   // a piece's items (a whole part's come from the rooms)
  Records rec;
  Event* events = nullptr;     // a piece's
  int64_t n_events = 0;
};

// The items of part p whose edge starts in another slab and ends in slab s: for each channel and
// other slab, the run of that room whose targets lie in slab s (a room is in index order, so its
// targets increase too).
Segment incoming(const Rooms& rooms, const uint64_t* first, const Slabs& slabs, const SweepState& st, uint32_t p,
                 int64_t c, int from, int s) {
  const Segment r = rooms.room(first, p, c, from);
  const int64_t d = st.g.delta[c];
  auto target = [&](uint64_t item) { return int64_t(static_cast<uint32_t>(item) & st.vmask) + d; };
  const uint64_t* b = std::partition_point(r.items, r.items + r.n, [&](uint64_t it) { return target(it) < slabs.voxel[s]; });
  const uint64_t* e = std::partition_point(b, r.items + r.n, [&](uint64_t it) { return target(it) < slabs.voxel[s + 1]; });
  return {b, e - b};
}

// Sorts a task's segments (scratch a, b) and sweeps them.
void run_task(const LabelParts& in, Task& t, Node* nodes, const SweepState& st, Count count, const SortPaths& paths,
              const char* fn) {
  Workspace& mine = workspace();
  std::vector<Segment>& segs = t.slab < 0 ? mine.segs : t.segs;
  if (t.slab < 0) in.rooms.part_segments(t.part, in.first, segs);
  const int64_t n = t.items;
  // a: the LSD sort of a part in cache writes all of it: the thread's scratch, hot from the last
  // part. The MSD sort of a bigger part does not use it (radix_sort.h).
  uint64_t* a = sorts_by_buckets(n, paths) ? nullptr : mine.task_a.get(n, fn);
  uint64_t* b = in.shared_scratch != nullptr && in.shared_scratch_items >= n ? in.shared_scratch : mine.task_b.get(n, fn);
  const bool in_cache = n <= kInCacheItems;
  if (in_cache) {
    int64_t at = 0;
    for (const Segment& s : segs) {
      prefetch_items(s.items, b + at, s.n);
      at += s.n;
    }
  }
  const uint64_t* sorted = sort_segments(segs, n, a, b, paths, mine.msd);
  if (in_cache) prefetch_nodes(nodes, st.g, sorted, n, st.shift, st.vmask);
  if (t.slab < 0) {
    single_label_sweep(nodes, st, sorted, n, count, t.rec);
  } else {
    t.n_events = piece_sweep(nodes, st, sorted, n, in.slabs.voxel[t.slab], in.slabs.voxel[t.slab + 1], count, t.rec,
                             t.events);
  }
}

}  // namespace

void sweep_label_parts(const LabelParts& in, Node* nodes, const SweepState& st, Count count, MergeArena& arena,
                       Workspace& ws, const char* fn, std::vector<Records>& out) {
  const Slabs& slabs = in.slabs;
  const int S = slabs.n;
  const Tuning tune = tuning();
  const int64_t V = st.g.V;
  const int64_t split_above = tune.split_voxels >= 0 ? tune.split_voxels : V / S;
  const bool can_split = S > 1 && V < (int64_t(1) << 31);  // the size's top bit is free (components.h)

  // The tasks: whole parts, and the pieces of split parts (with their incoming cut edges copied
  // out first, since a piece may sort in its own rooms).
  std::vector<Task> tasks;
  std::vector<uint32_t> split_parts;
  int64_t n_cut = 0;
  for (uint32_t p = 0; p < kParts; ++p) {
    const int64_t items = in.rooms.part_items(p);
    if (items == 0) continue;
    int64_t voxels = 0;
    for (int s = 0; s < S; ++s) voxels += in.part_voxels[s * kParts + p];
    if (!can_split || voxels <= split_above) {
      tasks.push_back({p, -1, items, voxels, {}, {}, nullptr, 0});
      continue;
    }
    split_parts.push_back(p);
    for (int s = 0; s < S; ++s) {
      for (int64_t c = 0; c < st.g.C; ++c) {
        for (int from = 0; from < S; ++from) n_cut += from == s ? 0 : incoming(in.rooms, in.first, slabs, st, p, c, from, s).n;
      }
    }
  }
  uint64_t* cut = ws.cut.get(std::max<int64_t>(1, n_cut), fn);
  int64_t cut_at = 0, event_room = 0;
  std::vector<size_t> first_piece(split_parts.size());
  for (size_t i = 0; i < split_parts.size(); ++i) {
    const uint32_t p = split_parts[i];
    first_piece[i] = tasks.size();
    for (int s = 0; s < S; ++s) {
      Task t{p, s, 0, in.part_voxels[s * kParts + p], {}, {}, nullptr, 0};
      for (int64_t c = 0; c < st.g.C; ++c) {  // index order: by channel, then by source slab
        for (int from = 0; from < S; ++from) {
          Segment seg = in.rooms.room(in.first, p, c, s);
          if (from != s) {
            const Segment run = incoming(in.rooms, in.first, slabs, st, p, c, from, s);
            std::copy(run.items, run.items + run.n, cut + cut_at);
            seg = {cut + cut_at, run.n};
            cut_at += run.n;
          }
          if (seg.n) t.segs.push_back(seg);
          t.items += seg.n;
        }
      }
      event_room += t.items;
      tasks.push_back(std::move(t));
    }
  }
  Event* events = ws.events.get(std::max<int64_t>(1, event_room), fn);
  for (Task& t : tasks) {
    if (t.slab >= 0) {
      t.events = events;
      events += t.items;
    }
    // Room for every record the branch-free sweeps write: one per merge, and fewer merges than
    // voxels (or items).
    t.rec = arena.take(std::min(t.items, t.voxels) + 1);
  }

  std::vector<size_t> order(tasks.size());
  for (size_t i = 0; i < order.size(); ++i) order[i] = i;
  std::stable_sort(order.begin(), order.end(), [&](size_t x, size_t y) { return tasks[x].items > tasks[y].items; });
  run_tasks(in.threads, static_cast<int64_t>(order.size()),
            [&](int64_t i) { run_task(in, tasks[order[i]], nodes, st, count, tune.sort, fn); });

  // The global passes of the split parts, one task each (their voxels are disjoint).
  std::vector<Records> global(split_parts.size());
  std::vector<std::vector<PieceEvents>> pieces(split_parts.size());
  Node* gnodes = split_parts.empty() ? nullptr : ws.gnodes.get(V, fn);
  for (size_t i = 0; i < split_parts.size(); ++i) {
    int64_t n_events = 0;
    for (int s = 0; s < S; ++s) {
      const Task& t = tasks[first_piece[i] + s];
      pieces[i].push_back({t.events, t.n_events});
      n_events += t.n_events;
    }
    global[i] = arena.take(n_events + 1);
  }
  run_tasks(in.threads, static_cast<int64_t>(split_parts.size()), [&](int64_t i) {
    std::vector<uint64_t> cut_merges;
    global_pass(pieces[i], slabs, st, count, gnodes, global[i], cut_merges);
    global[i].joined += join_cut_edges(nodes, st, cut_merges);
  });

  for (const Task& t : tasks) out.push_back(t.rec);
  for (const Records& r : global) out.push_back(r);
}

}  // namespace malis
}  // namespace seglosses
