#include "sweep.h"

#include "flags.h"

namespace seglosses {
namespace malis {
namespace {

// How single_label_sweep_impl keeps the merges' counts.
enum class Record { kNone, kAll, kCountedOnly };

// Branch-free: a non-merging edge (same root) runs the same code as a no-op, so the unpredictable
// outcome costs no mispredicted branch (the outcome enters as masks, which compilers keep as data;
// written as selects, GCC made a branch of them).
template <Record kRecord, bool kPrefetch>
void single_label_sweep_impl(Node* nodes, const SweepState& st, const uint64_t* items, int64_t n, Records& rec) {
  auto find = [nodes](uint32_t x) {
    uint32_t r = nodes[nodes[x].parent].parent;
    while (nodes[r].parent != r) r = nodes[nodes[r].parent].parent;
    nodes[x].parent = r;
    return r;
  };
  const int64_t* delta = st.g.delta.data();
  const int shift = st.shift;
  const uint32_t vmask = st.vmask;
  const uint32_t V = static_cast<uint32_t>(st.g.V);
  const uint8_t* counted = st.counted;
  Merge* const merges = rec.merges;
  int64_t nm = rec.n, nj = 0;
  uint64_t sum = 0;
  for (int64_t i = 0; i < n; ++i) {
    if constexpr (kPrefetch) prefetch_ahead(nodes, delta, items, i, n, shift, vmask);
    const uint32_t payload = static_cast<uint32_t>(items[i]);
    const uint32_t c = payload >> shift, v = payload & vmask;
    const uint32_t ra = find(v), rb = find(static_cast<uint32_t>(v + delta[c]));
    const uint32_t sa = nodes[ra].size, sb = nodes[rb].size;
    const uint32_t merge = ra != rb;
    const uint32_t all = 0u - merge;  // all ones when the edge merges
    const bool a_big = sa >= sb;
    const uint32_t big = a_big ? ra : rb, small = a_big ? rb : ra;
    const uint32_t s_big = a_big ? sa : sb, s_small = a_big ? sb : sa;
    if constexpr (kRecord != Record::kNone) {
      const uint32_t e = c * V + v;  // < 2^32 (checked by the op's input checks)
      const uint64_t count = uint64_t(sa) * (sb & all);
      uint32_t keep = merge;
      if constexpr (kRecord == Record::kCountedOnly) keep &= static_cast<uint32_t>(counted[e] >> 2);
      merges[nm] = {count, e};
      nm += keep;
      sum += count & (0ull - keep);
    }
    nodes[small].parent = big;
    nodes[big].size = s_big + (s_small & all);
    nj += merge;
  }
  rec.n = nm;
  rec.total_pos += sum;
  rec.joined += nj;
}

static_assert(kCounted == 4, "single_label_sweep_impl reads kCounted as bit 2");

template <bool kPrefetch>
void single_label_sweep_as(Node* nodes, const SweepState& st, const uint64_t* items, int64_t n, Count count,
                           Records& rec) {
  if (count == Count::kNothing) {
    single_label_sweep_impl<Record::kNone, kPrefetch>(nodes, st, items, n, rec);
  } else if (st.counted != nullptr) {
    single_label_sweep_impl<Record::kCountedOnly, kPrefetch>(nodes, st, items, n, rec);
  } else {
    single_label_sweep_impl<Record::kAll, kPrefetch>(nodes, st, items, n, rec);
  }
}

}  // namespace

uint64_t SampleResult::total_pos() const {
  uint64_t t = 0;
  for (const Records& r : records) t += r.total_pos;
  return t;
}

uint64_t SampleResult::total_neg() const {
  uint64_t t = 0;
  for (const Records& r : records) t += r.total_neg;
  return t;
}

void single_label_sweep(Node* nodes, const SweepState& st, const uint64_t* items, int64_t n, Count count,
                        Records& rec) {
  if (n > kInCacheItems) {
    single_label_sweep_as<true>(nodes, st, items, n, count, rec);
  } else {
    single_label_sweep_as<false>(nodes, st, items, n, count, rec);
  }
}

int64_t sweep(Components& comp, const SweepState& st, const uint64_t* items, int64_t n, Count count, Records& rec,
              int64_t n_components) {
  const Node* nodes = comp.nodes();
  const int64_t V = st.g.V;
  const int64_t* delta = st.g.delta.data();
  const bool count_pos = count == Count::kSamePairs || count == Count::kBoth;
  const bool count_neg = count == Count::kDifferentPairs || count == Count::kBoth;
  for (int64_t i = 0; i < n && n_components > 1; ++i) {
    prefetch_ahead(nodes, delta, items, i, n, st.shift, st.vmask);
    const uint32_t payload = static_cast<uint32_t>(items[i]);
    const uint32_t c = payload >> st.shift, v = payload & st.vmask;
    const uint32_t a = comp.find(v);
    const uint32_t b = comp.find(static_cast<uint32_t>(v + delta[c]));
    if (a == b) continue;
    const uint64_t na = comp.labelled(a), nb = comp.labelled(b);
    if (na != 0 && nb != 0 && count != Count::kNothing) {
      const int64_t e = int64_t(c) * V + v;
      if (st.counted == nullptr || (st.counted[e] & kCounted)) {
        const uint64_t same = comp.same_label_pairs(a, b);
        const uint64_t pos = count_pos ? same : 0;
        const uint64_t neg = count_neg ? na * nb - same : 0;
        if (pos != 0) rec.merges[rec.n++] = {pos, static_cast<uint32_t>(e)};
        if (neg != 0) rec.merges[rec.n++] = {neg | Merge::kNeg, static_cast<uint32_t>(e)};
        rec.total_pos += pos;
        rec.total_neg += neg;
      }
    }
    comp.unite(a, b);
    --n_components;
    ++rec.joined;
  }
  return n_components;
}

void prefetch_nodes(const Node* nodes, const Geometry& g, const uint64_t* items, int64_t n, int shift, uint32_t vmask) {
  for (int64_t i = 0; i < n; ++i) {
    const uint32_t payload = static_cast<uint32_t>(items[i]);
    const uint32_t v = payload & vmask;
    __builtin_prefetch(nodes + v);
    __builtin_prefetch(nodes + v + g.delta[payload >> shift]);
  }
}

}  // namespace malis
}  // namespace seglosses
