// Copy-on-write private memory (zdtm cow00, cow01): a parent's private pages that its children
// still share with it (unwritten by either since the fork) come back shared, one physical page,
// as they were, instead of one copy per process.
//
// How: the tree is forked by the coordinator and its copies (restore/fork.cc), and every
// process's memory is built from outside afterwards (restore/mm.cc): no restored process forks
// after its memory is in place, as the original's children were. So the coordinator maps, before
// the fork, each private VMA (anonymous, or of a file) that a parent and at least one child both
// have at the same range, at that range in its own address space, and fills it with the parent's
// pages. Every process of the tree inherits those pages copy-on-write through the fork. Each
// process's mm step then keeps the ranges it has (same range, kind and file) instead of mapping
// them again, writes only its pages that differ from what it inherited (a page written by it or
// its parent after their fork), and drops (MADV_DONTNEED) the inherited pages it did not have:
// an anonymous page reads zeros again, a file page the file's. The rest of its pages are filled
// as before. The coordinator unmaps its own copies once the tree is forked.
//
// Not done (each falls back to private copies, as before): a range taken in the coordinator's
// own address space (MAP_FIXED_NOREPLACE fails: the restorer's libraries, heap or stacks are
// there), growsdown, hugetlb, droppable and deleted-file VMAs, lazy restores, pre-copied images
// (several page maps per process), restores into a container's namespaces (the pages would be
// charged to the restorer's memory cgroup, not the container's), and sharing between a child and
// a grandchild of pages the parent does not share (only the highest process's content is
// premapped; descendants whose pages differ write their own).
#pragma once

#include <vector>

#include "common/result.h"
#include "restore/context.h"

namespace godwit::restore {

// Before the fork: picks the shared ranges and maps and fills them in the coordinator.
Result<void> PremapInherited(RestoreContext& ctx);
// After the fork (and on failure): the coordinator's own mappings go.
void DropPremaps(RestoreContext& ctx);
// p's VMAs that match a premapped range exactly (inherited through the fork).
std::vector<const img::Vma*> InheritedVmas(const RestoreContext& ctx, const ProcessRestore& p);
// In p's mm step, once its other VMAs are mapped: corrects the pages of the inherited VMAs
// (writes those that differ, drops those it did not have, sets their protection) and returns
// pagemap without the runs inside them, for the ordinary fill.
Result<img::PageMap> FixInherited(RestoreContext& ctx, ProcessRestore& p,
                                  const std::vector<const img::Vma*>& inherited,
                                  const img::PageMap& pagemap);

}  // namespace godwit::restore
