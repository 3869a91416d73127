#include "components.h"

namespace seglosses {
namespace malis {

void Components::restore_single_label_info(int64_t v0, int64_t v1, const int32_t* seg) {
  for (int64_t v = v0; v < v1; ++v) {
    if (nodes_[v].parent != v) continue;
    const uint32_t size = nodes_[v].size & kSizeBits;
    nodes_[v].size = size;
    info_[v] = {seg[v] != 0 ? size : 0u, seg[v]};
  }
}

uint64_t Components::same_label_pairs(uint32_t a, uint32_t b) const {
  const LabelInfo& A = info_[a];
  const LabelInfo& B = info_[b];
  if (A.nlab == 0 || B.nlab == 0) return 0;
  if (A.lab > 0 && B.lab > 0) return A.lab == B.lab ? uint64_t(A.nlab) * B.nlab : 0;
  if (A.lab > 0) return uint64_t(A.nlab) * count(hists_[hist_index(B.lab)], A.lab);
  if (B.lab > 0) return uint64_t(B.nlab) * count(hists_[hist_index(A.lab)], B.lab);
  const Hist& ha = hists_[hist_index(A.lab)];
  const Hist& hb = hists_[hist_index(B.lab)];
  const Hist& small = ha.size() <= hb.size() ? ha : hb;
  const Hist& large = ha.size() <= hb.size() ? hb : ha;
  uint64_t total = 0;
  for (const auto& kv : small) total += uint64_t(kv.second) * count(large, kv.first);
  return total;
}

void Components::unite(uint32_t a, uint32_t b) {
  if (nodes_[a].size < nodes_[b].size) std::swap(a, b);  // a: the new root
  nodes_[b].parent = a;
  nodes_[a].size += nodes_[b].size;
  LabelInfo& A = info_[a];
  LabelInfo& B = info_[b];
  if (B.nlab == 0) return;
  if (A.nlab == 0) {
    A = B;
    return;
  }
  if (A.lab > 0 && B.lab > 0) {
    if (A.lab != B.lab) {
      const int32_t h = new_hist();
      hists_[h][A.lab] = A.nlab;
      hists_[h][B.lab] = B.nlab;
      A.lab = -(h + 1);
    }
  } else if (A.lab > 0) {  // B holds a histogram
    hists_[hist_index(B.lab)][A.lab] += A.nlab;
    A.lab = B.lab;
  } else if (B.lab > 0) {
    hists_[hist_index(A.lab)][B.lab] += B.nlab;
  } else {  // merge the smaller histogram into the larger
    int32_t ha = hist_index(A.lab), hb = hist_index(B.lab);
    if (hists_[ha].size() < hists_[hb].size()) std::swap(ha, hb);
    for (const auto& kv : hists_[hb]) hists_[ha][kv.first] += kv.second;
    Hist().swap(hists_[hb]);
    free_.push_back(hb);
    A.lab = -(ha + 1);
  }
  A.nlab += B.nlab;
}

int32_t Components::new_hist() {
  if (!free_.empty()) {
    const int32_t h = free_.back();
    free_.pop_back();
    return h;
  }
  hists_.emplace_back();
  return static_cast<int32_t>(hists_.size()) - 1;
}

}  // namespace malis
}  // namespace seglosses
