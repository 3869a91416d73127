#include "passes.h"

namespace seglosses {
namespace malis {

Plan plan_passes(bool constrained, bool has_mask, bool constrain_masked) {
  Plan plan;
  plan.counted_only = has_mask;
  if (!constrained) {
    plan.pass[0] = {{{false, false}, {false, false}}, Count::kBoth, Count::kNothing};
  } else if (!has_mask || constrain_masked) {
    // GT-1 edges first, GT-0 edges second, whatever the mask.
    plan.pass[0] = {{{true, true}, {false, false}}, Count::kSamePairs, Count::kDifferentPairs};
  } else {
    // late[gt][in mask]
    plan.pass[0] = {{{false, true}, {false, false}}, Count::kSamePairs, Count::kNothing};
    plan.pass[1] = {{{true, true}, {true, false}}, Count::kNothing, Count::kDifferentPairs};
    plan.n_passes = 2;
  }
  return plan;
}

}  // namespace malis
}  // namespace seglosses
