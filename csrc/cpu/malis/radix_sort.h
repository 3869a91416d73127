// Stage 4 of a pass: sorting items by key.
#pragma once

#include <cstdint>

namespace seglosses {
namespace malis {

// Sorts n items (key in the upper 32 bits, payload in the lower 32) by key, stably (ties keep
// their order, which is index order). tmp: n items of scratch; the result is left in items.
void sort_by_key(uint64_t* items, int64_t n, uint64_t* tmp);

// Asks for items (read) and the sort scratch (written) to be brought into cache before a sort of
// a part, whose scatter would otherwise miss the cache one item at a time.
void prefetch_items(const uint64_t* items, uint64_t* scratch, int64_t n);

}  // namespace malis
}  // namespace seglosses
