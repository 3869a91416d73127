#include "kernels.h"

#include <c10/util/Exception.h>

#include <atomic>
#include <cstdlib>
#include <cstring>

namespace seglosses {
namespace malis {
namespace {

constexpr const char* kIsaNames[] = {"baseline", "avx2", "avx512"};
constexpr int kAuto = -1;

std::atomic<int> isa_override{kAuto};

bool cpu_has(Isa isa) {
#if SEGLOSSES_HAVE_X86_VARIANTS
  __builtin_cpu_init();
  switch (isa) {
    case Isa::kAvx512:
      return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
             __builtin_cpu_supports("avx512dq") && __builtin_cpu_supports("avx512vl");
    case Isa::kAvx2:
      return __builtin_cpu_supports("avx2");
    default:
      return true;
  }
#else
  return isa == Isa::kBaseline;
#endif
}

bool avx512_disabled_by_env() {
  const char* off = std::getenv("SEGLOSSES_DISABLE_AVX512");
  return off != nullptr && off[0] != '\0' && std::strcmp(off, "0") != 0;
}

Isa default_isa() {
  static const Isa best = [] {
    if (cpu_has(Isa::kAvx512) && !avx512_disabled_by_env()) return Isa::kAvx512;
    if (cpu_has(Isa::kAvx2)) return Isa::kAvx2;
    return Isa::kBaseline;
  }();
  return best;
}

}  // namespace

Isa current_isa() {
  const int o = isa_override.load(std::memory_order_relaxed);
  return o == kAuto ? default_isa() : static_cast<Isa>(o);
}

const char* isa_name(Isa isa) { return kIsaNames[static_cast<int>(isa)]; }

std::vector<std::string> available_isas() {
  std::vector<std::string> out;
  for (int i = 0; i < 3; ++i) {
    if (cpu_has(static_cast<Isa>(i))) out.emplace_back(kIsaNames[i]);
  }
  return out;
}

std::string set_kernel_isa(const std::string& name) {
  int want = kAuto;
  if (name != "auto") {
    for (int i = 0; i < 3; ++i) {
      if (name == kIsaNames[i] && cpu_has(static_cast<Isa>(i))) want = i;
    }
    TORCH_CHECK_VALUE(want != kAuto, "_malis_set_isa: isa must be \"auto\" or one of the variants this CPU runs (",
                      c10::Join(", ", available_isas()), "), got \"", name, "\"");
  }
  const int before = isa_override.exchange(want);
  return before == kAuto ? "auto" : kIsaNames[before];
}

}  // namespace malis
}  // namespace seglosses
