#include "split.h"

#include <c10/util/Exception.h>

#include "flags.h"

namespace seglosses {
namespace malis {
namespace {

enum class Record { kNone, kAll, kCountedOnly };

inline uint32_t find_root(Node* nodes, uint32_t x) {
  while (nodes[x].parent != x) {
    const uint32_t gp = nodes[nodes[x].parent].parent;
    nodes[x].parent = gp;
    x = gp;
  }
  return x;
}

// single_label_sweep_impl with marks: branch-free on the merge outcome and on whether it is
// counted here. The events (merges of marked components) and the rare cut edges take a branch:
// events are a small share of the edges, and an event stored on every edge, kept or not, cost
// more than the branch.
template <Record kRecord, bool kPrefetch>
int64_t piece_sweep_impl(Node* nodes, const SweepState& st, const uint64_t* items, int64_t n, uint32_t lo,
                         uint32_t span, Records& rec, Event* events) {
  const int64_t* delta = st.g.delta.data();
  const int shift = st.shift;
  const uint32_t vmask = st.vmask;
  const uint32_t V = static_cast<uint32_t>(st.g.V);
  const uint8_t* counted = st.counted;
  Merge* const merges = rec.merges;
  int64_t nm = rec.n, ne = 0, nj = 0;
  uint64_t sum = 0;
  for (int64_t i = 0; i < n; ++i) {
    if constexpr (kPrefetch) prefetch_ahead(nodes, delta, items, i, n, shift, vmask);
    const uint64_t item = items[i];
    const uint32_t payload = static_cast<uint32_t>(item);
    const uint32_t c = payload >> shift, v = payload & vmask;
    const uint32_t w = static_cast<uint32_t>(v + delta[c]);
    const bool v_in = v - lo < span, w_in = w - lo < span;
    if (__builtin_expect(!(v_in && w_in), 0)) {  // a cut edge: mark its end's component
      const uint32_t r = find_root(nodes, v_in ? v : w);
      events[ne++] = {item, r, kCutEnd, nodes[r].size, 0};
      nodes[r].size |= kMarked;
      continue;
    }
    const uint32_t ra = find_root(nodes, v), rb = find_root(nodes, w);
    const uint32_t wa = nodes[ra].size, wb = nodes[rb].size;
    const uint32_t marks = (wa | wb) & kMarked;
    const uint32_t sa = wa & kSizeBits, sb = wb & kSizeBits;
    const uint32_t merge = ra != rb;
    const uint32_t all = 0u - merge;
    const uint32_t dirty = merge & (marks >> 31);
    if constexpr (kRecord != Record::kNone) {
      const uint32_t e = c * V + v;
      const uint64_t count = uint64_t(sa) * (sb & all);
      uint32_t keep = merge & ~dirty;
      if constexpr (kRecord == Record::kCountedOnly) keep &= static_cast<uint32_t>(counted[e] >> 2);
      merges[nm] = {count, e};
      nm += keep;
      sum += count & (0ull - keep);
    }
    if (dirty) events[ne++] = {item, ra, rb, wa, wb};
    const bool a_big = sa >= sb;
    const uint32_t big = a_big ? ra : rb, small = a_big ? rb : ra;
    const uint32_t s_big = a_big ? sa : sb, s_small = a_big ? sb : sa;
    nodes[small].parent = big;
    nodes[big].size = (s_big + (s_small & all)) | marks;
    nj += merge;
  }
  rec.n = nm;
  rec.total_pos += sum;
  rec.joined += nj;
  return ne;
}

static_assert(kCounted == 4, "piece_sweep_impl reads kCounted as bit 2");

template <bool kPrefetch>
int64_t piece_sweep_as(Node* nodes, const SweepState& st, const uint64_t* items, int64_t n, uint32_t lo, uint32_t span,
                       Count count, Records& rec, Event* events) {
  if (count == Count::kNothing) {
    return piece_sweep_impl<Record::kNone, kPrefetch>(nodes, st, items, n, lo, span, rec, events);
  } else if (st.counted != nullptr) {
    return piece_sweep_impl<Record::kCountedOnly, kPrefetch>(nodes, st, items, n, lo, span, rec, events);
  }
  return piece_sweep_impl<Record::kAll, kPrefetch>(nodes, st, items, n, lo, span, rec, events);
}

}  // namespace

int64_t piece_sweep(Node* nodes, const SweepState& st, const uint64_t* items, int64_t n, int64_t lo, int64_t hi,
                    Count count, Records& rec, Event* events) {
  const uint32_t l = static_cast<uint32_t>(lo), span = static_cast<uint32_t>(hi - lo);
  if (n > kInCacheItems) return piece_sweep_as<true>(nodes, st, items, n, l, span, count, rec, events);
  return piece_sweep_as<false>(nodes, st, items, n, l, span, count, rec, events);
}

// The global pass asks for the nodes of the event this many events ahead in the same piece, as
// far ahead as the sweep's own prefetch (sweep.h).
constexpr int64_t kGlobalPrefetchAhead = 16;

void global_pass(const std::vector<PieceEvents>& pieces, const Slabs& slabs, const SweepState& st, Count count,
                 Node* gnodes, Records& rec, std::vector<uint64_t>& cut_merges) {
  const int n_pieces = static_cast<int>(pieces.size());
  std::vector<int64_t> next(n_pieces, 0);
  // The global root of a piece's root, entering it when first met (unmarked).
  auto enter = [gnodes](uint32_t r, uint32_t size) {
    if ((size & kMarked) == 0) {
      gnodes[r] = {r, size};
      return r;
    }
    return find_root(gnodes, r);
  };
  const int64_t V = st.g.V;
  const bool record = count != Count::kNothing;
  for (;;) {
    int s = -1;  // the piece whose next event comes first
    for (int p = 0; p < n_pieces; ++p) {
      if (next[p] < pieces[p].n && (s < 0 || pieces[p].events[next[p]].item < pieces[s].events[next[s]].item)) s = p;
    }
    if (s < 0) break;
    if (next[s] + kGlobalPrefetchAhead < pieces[s].n) {
      const Event& ahead = pieces[s].events[next[s] + kGlobalPrefetchAhead];
      __builtin_prefetch(gnodes + ahead.a);
      if (ahead.b != kCutEnd) __builtin_prefetch(gnodes + ahead.b);
    }
    const Event& ev = pieces[s].events[next[s]++];
    const uint32_t payload = static_cast<uint32_t>(ev.item);
    const uint32_t c = payload >> st.shift, v = payload & st.vmask;
    const int64_t e = int64_t(c) * V + v;
    const bool counted = record && (st.counted == nullptr || (st.counted[e] & kCounted));
    uint32_t ga, gb;
    if (ev.b == kCutEnd) {  // the other end's event is next in the other end's piece
      const uint32_t w = static_cast<uint32_t>(v + st.g.delta[c]);
      const int s2 = slabs.slab_of(slabs.slab_of(v) == s ? w : v);
      TORCH_INTERNAL_ASSERT(next[s2] < pieces[s2].n && pieces[s2].events[next[s2]].item == ev.item,
                            "MALIS split pass: a cut edge without its other end");
      const Event& other = pieces[s2].events[next[s2]++];
      ga = enter(ev.a, ev.size_a);
      gb = enter(other.a, other.size_a);
    } else if ((ev.size_a ^ ev.size_b) & kMarked) {
      // A merge of an unmarked component into a marked one (the common event): the unmarked
      // root needs a node only if it stays the piece's root (the bigger of the two).
      const bool a_clean = (ev.size_a & kMarked) == 0;
      const uint32_t clean = a_clean ? ev.a : ev.b, marked = a_clean ? ev.b : ev.a;
      const uint32_t clean_size = a_clean ? ev.size_a : ev.size_b;
      const uint32_t marked_local = (a_clean ? ev.size_b : ev.size_a) & kSizeBits;
      const uint32_t g = find_root(gnodes, marked);
      const uint32_t sg = gnodes[g].size;
      if (counted) {
        const uint64_t pairs = uint64_t(sg) * clean_size;
        rec.merges[rec.n++] = {pairs, static_cast<uint32_t>(e)};
        rec.total_pos += pairs;
      }
      gnodes[g].size = sg + clean_size;
      if (clean_size >= marked_local && (a_clean || clean_size > marked_local)) gnodes[clean] = {g, 0};
      continue;
    } else {
      ga = find_root(gnodes, ev.a);
      gb = find_root(gnodes, ev.b);
    }
    if (ga == gb) continue;
    const uint32_t sa = gnodes[ga].size, sb = gnodes[gb].size;
    if (counted) {
      const uint64_t pairs = uint64_t(sa) * sb;
      rec.merges[rec.n++] = {pairs, static_cast<uint32_t>(e)};
      rec.total_pos += pairs;
    }
    if (ev.b == kCutEnd) cut_merges.push_back(ev.item);
    const uint32_t big = sa >= sb ? ga : gb, small = sa >= sb ? gb : ga;
    gnodes[small].parent = big;
    gnodes[big].size = sa + sb;
  }
}

int64_t join_cut_edges(Node* nodes, const SweepState& st, const std::vector<uint64_t>& cut_merges) {
  int64_t joined = 0;
  for (const uint64_t item : cut_merges) {
    const uint32_t payload = static_cast<uint32_t>(item);
    const uint32_t v = payload & st.vmask;
    const uint32_t ra = find_root(nodes, v), rb = find_root(nodes, static_cast<uint32_t>(v + st.g.delta[payload >> st.shift]));
    if (ra == rb) continue;
    const uint32_t sa = nodes[ra].size & kSizeBits, sb = nodes[rb].size & kSizeBits;
    const uint32_t big = sa >= sb ? ra : rb, small = sa >= sb ? rb : ra;
    nodes[small].parent = big;
    nodes[big].size = sa + sb;
    ++joined;
  }
  return joined;
}

}  // namespace malis
}  // namespace seglosses
