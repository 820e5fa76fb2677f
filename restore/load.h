// Everything read from the images before anything is forked: the tree, each live process's core,
// mm and pagemaps, the shared memory objects, and the files (files::FdRestorer); and the checks
// that the tree can be rebuilt at all. Every image is bounds-checked here (kBadImage naming the
// file), so the later steps trust what they get.
#pragma once

#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "files/files.h"
#include "restore/context.h"
#include "restore/lazy.h"

namespace godwit::restore {

// Page map images of pre-copy rounds (pagemap-PID-preN.img) parsed ahead: a migration's
// destination has them long before the final state arrives (each comes with its round), and
// parsing ~200k runs at 1 GiB after 8 rounds cost ~30 ms inside the blackout. The restore waiting
// to go (`restore --wait-fd`) preloads what is there after each round; LoadImages takes a
// preloaded record when the file's bytes are the ones the inventory lists (size and crc32c).
// One per process; not thread-safe (the restore's main thread uses it).
// lazy: the restore is lazy; the rounds are also resolved for its pager (TakeLazyAhead).
void PreloadPageMaps(const std::string& tree_dir, bool lazy = true);
// Drops every preloaded record (tests: a process normally preloads for one restore).
void ForgetPreloaded();
size_t PreloadedPageMaps();  // how many are held (tests)
size_t PreloadHits();        // how many LoadImages took from the preloaded ones (the report)
// A process's earlier rounds resolved for the lazy pager (LazyPager::Prepared), built by
// PreloadPageMaps as the rounds arrive (their map ready too: the blackout only adds the final
// dump's pages on top). Taken once, when `pagemaps` (the process's, oldest first, as LoadImages
// read them) holds exactly those rounds, each loaded from the preloaded bytes, and then its final
// dump; else nothing (the restore records the rounds itself).
std::optional<LazyPager::Prepared> TakeLazyAhead(pid_t image_pid,
                                                 const std::vector<img::PageMap>& pagemaps);

// pstree, core-<pid>, mm-<pid>, pagemap-<pid> (every round), shmem.img into ctx; fills
// ctx.procs, ctx.by_pid, ctx.shmem and the process counts of ctx.stats.
Result<void> LoadImages(RestoreContext& ctx);
// The tree can be rebuilt: root first, every parent in it, sessions (restore/sessions.h), nested
// pid namespaces created inside the tree. Sets ctx.inner_level for a tree whose root is the init
// of its own pid namespace (a container).
Result<void> CheckTree(RestoreContext& ctx);
// The files of the images, with the options that concern them (after PrepareShmem: a memfd both
// mapped and open stays one object).
Result<std::unique_ptr<files::FdRestorer>> LoadFiles(const RestoreContext& ctx);

}  // namespace godwit::restore
