// Union-find over voxels (path halving, union by size) and the label data of each component.
// The hot state of a voxel, parent and size, is one 8-byte node; the label data of a root — its
// labelled-voxel count and its single label or histogram — sits in a second array, read only when
// two components merge.
#pragma once

#include <cstdint>
#include <unordered_map>
#include <utility>
#include <vector>

#include "../cpu_clones.h"
#include "emission.h"

namespace seglosses {
namespace malis {

struct Node {
  uint32_t parent;
  uint32_t size;  // voxels
};

struct LabelInfo {
  uint32_t nlab;  // labelled voxels
  int32_t lab;    // > 0: the only label; 0: no labelled voxel; < 0: -(histogram + 1)
};

// The top bit of a root's size is free (a sample has at most 2^31 voxels, and a part is split only
// below that, split.h): the split sweep marks components with it. kSizeBits masks it off.
constexpr uint32_t kSizeBits = 0x7fffffffu;

// The union-find init kernel: every voxel v0 .. v1 - 1 a singleton (nodes, info), and
// part_voxels[part_of(l)] += the voxels of label l among them (v1 > v0; part_voxels: kParts zeros).
using InitKernel = void (*)(int64_t v0, int64_t v1, const int32_t* seg, Node* nodes, LabelInfo* info,
                            int64_t* part_voxels);

SEGLOSSES_ALWAYS_INLINE void init_components_portable(int64_t v0, int64_t v1, const int32_t* seg, Node* nodes,
                                                      LabelInfo* info, int64_t* part_voxels) {
  int32_t run_label = seg[v0];
  int64_t run_start = v0;
  for (int64_t v = v0; v < v1; ++v) {
    nodes[v] = {static_cast<uint32_t>(v), 1u};
    info[v] = {seg[v] != 0 ? 1u : 0u, seg[v]};
    if (seg[v] != run_label) {
      part_voxels[part_of(run_label)] += v - run_start;
      run_label = seg[v];
      run_start = v;
    }
  }
  part_voxels[part_of(run_label)] += v1 - run_start;
}

class Components {
 public:
  // nodes / info: initialised by an InitKernel.
  Components(Node* nodes, LabelInfo* info) : nodes_(nodes), info_(info) {}

  uint32_t find(uint32_t x) {
    while (nodes_[x].parent != x) {
      const uint32_t gp = nodes_[nodes_[x].parent].parent;
      nodes_[x].parent = gp;
      x = gp;
    }
    return x;
  }

  const Node* nodes() const { return nodes_; }
  Node* nodes() { return nodes_; }
  uint64_t labelled(uint32_t r) const { return info_[r].nlab; }

  // The label data of the roots among voxels v0 .. v1 - 1 after merges that bypassed unite()
  // (single_label_sweep, split.h, which may also have used info as scratch): every component holds
  // voxels of its root's label only. Clears the top bit of the roots' sizes.
  void restore_single_label_info(int64_t v0, int64_t v1, const int32_t* seg);

  // sum_l hA[l] hB[l] for roots a != b.
  uint64_t same_label_pairs(uint32_t a, uint32_t b) const;

  // Joins roots a != b (union by size) and merges their label data into the new root.
  void unite(uint32_t a, uint32_t b);

 private:
  using Hist = std::unordered_map<int32_t, uint32_t>;

  static int32_t hist_index(int32_t lab) { return -lab - 1; }
  static uint32_t count(const Hist& h, int32_t label) {
    const auto it = h.find(label);
    return it == h.end() ? 0u : it->second;
  }
  int32_t new_hist();

  Node* nodes_;
  LabelInfo* info_;
  std::vector<Hist> hists_;
  std::vector<int32_t> free_;
};

}  // namespace malis
}  // namespace seglosses
