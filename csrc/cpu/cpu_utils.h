// CPU-only helpers of the kernels in csrc/cpu/.
#pragma once

#include <ATen/ATen.h>

#include <cstdint>

#if defined(__linux__)
#include <sys/mman.h>
#endif

namespace sbgan_fast {

// Ask the kernel to back a freshly allocated, not yet touched output with 2 MiB pages (Linux
// transparent huge pages in "madvise" mode). The kernels write every byte of their outputs, so the
// first-touch page faults of a large output (one per 4 KiB page, each zeroing the page) otherwise
// cost more than the kernel itself. torch's CPU allocator does the same under THP_MEM_ALLOC_ENABLE=1.
// A hint only: any error is ignored and the result is the same.
inline void advise_huge_pages(const at::Tensor& t) {
#if defined(__linux__) && defined(MADV_HUGEPAGE)
  constexpr uintptr_t kHuge = uintptr_t{2} << 20;
  const uintptr_t bytes = static_cast<uintptr_t>(t.nbytes());
  if (bytes < 4 * kHuge) return;
  const uintptr_t p = reinterpret_cast<uintptr_t>(t.data_ptr());
  const uintptr_t begin = (p + kHuge - 1) & ~(kHuge - 1);
  const uintptr_t end = (p + bytes) & ~(kHuge - 1);
  if (end > begin) (void)madvise(reinterpret_cast<void*>(begin), end - begin, MADV_HUGEPAGE);
#else
  (void)t;
#endif
}

}  // namespace sbgan_fast
