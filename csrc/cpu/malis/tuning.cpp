#include "tuning.h"

#include <c10/util/Exception.h>

#include <mutex>

namespace seglosses {
namespace malis {
namespace {

std::mutex& tuning_mutex() {
  static std::mutex m;
  return m;
}

Tuning& current() {
  static Tuning t;
  return t;
}

}  // namespace

Tuning tuning() {
  std::lock_guard<std::mutex> lock(tuning_mutex());
  return current();
}

int64_t set_tuning(const std::string& name, int64_t value) {
  std::lock_guard<std::mutex> lock(tuning_mutex());
  Tuning& t = current();
  int64_t* field = name == "slabs" ? &t.slabs
                   : name == "split_voxels" ? &t.split_voxels
                   : name == "msd_items" ? &t.sort.msd_items
                   : name == "line_scatter_buckets" ? &t.sort.line_scatter_buckets
                   : nullptr;
  if (name == "reset") {
    t = Tuning();
    return 0;
  }
  TORCH_CHECK_VALUE(field != nullptr,
                    "_malis_set_tuning: name must be \"slabs\", \"split_voxels\", \"msd_items\", "
                    "\"line_scatter_buckets\" or \"reset\", got \"",
                    name, "\"");
  TORCH_CHECK_VALUE(value >= (name == "split_voxels" ? -1 : 0), "_malis_set_tuning: ", name, " out of range: ", value);
  const int64_t before = *field;
  *field = value;
  return before;
}

}  // namespace malis
}  // namespace seglosses
