# Checkpoint/restore engine tests (dump/, restore/): real processes dumped, killed, restored.
godwit_helper(cr_loop ${CMAKE_CURRENT_SOURCE_DIR}/helpers/cr_loop.c Threads::Threads)
godwit_helper(cr_tree ${CMAKE_CURRENT_SOURCE_DIR}/helpers/cr_tree.c)
godwit_helper(cr_state ${CMAKE_CURRENT_SOURCE_DIR}/helpers/cr_state.c Threads::Threads)
godwit_helper(cr_bigmem ${CMAKE_CURRENT_SOURCE_DIR}/helpers/cr_bigmem.c)
godwit_helper(cr_pidns ${CMAKE_CURRENT_SOURCE_DIR}/helpers/cr_pidns.c)

godwit_test(cr_engine_test
  SOURCES ${CMAKE_CURRENT_SOURCE_DIR}/cr_engine_test.cc ${CMAKE_CURRENT_SOURCE_DIR}/cr_util.cc
  LIBS godwit_dump godwit_restore godwit_files godwit_images godwit_common)
add_dependencies(cr_engine_test cr_loop cr_tree cr_state cr_bigmem cr_pidns)

# Single processes in states that need care (tests/cr_process_test.cc).
godwit_helper(cr_blocked ${CMAKE_CURRENT_SOURCE_DIR}/helpers/cr_blocked.c)
godwit_helper(cr_memfd_maps ${CMAKE_CURRENT_SOURCE_DIR}/helpers/cr_memfd_maps.c)
godwit_helper(cr_session ${CMAKE_CURRENT_SOURCE_DIR}/helpers/cr_session.c)
godwit_test(cr_process_test
  SOURCES ${CMAKE_CURRENT_SOURCE_DIR}/cr_process_test.cc ${CMAKE_CURRENT_SOURCE_DIR}/cr_util.cc
  LIBS godwit_common)
add_dependencies(cr_process_test cr_blocked cr_memfd_maps cr_session)

# The page dump/fill paths (dump/pages.*, restore/pages.*, restore/fill.cc): fast paths and
# fallbacks.
godwit_helper(cr_pages ${CMAKE_CURRENT_SOURCE_DIR}/helpers/cr_pages.c)
godwit_test(cr_pages_test
  SOURCES ${CMAKE_CURRENT_SOURCE_DIR}/cr_pages_test.cc ${CMAKE_CURRENT_SOURCE_DIR}/cr_util.cc
  LIBS godwit_common)
add_dependencies(cr_pages_test cr_pages cr_bigmem)

# Driven pre-copy (dump/precopy.h): rounds on demand, then a final dump of what changed.
godwit_helper(c_precopy ${CMAKE_CURRENT_SOURCE_DIR}/helpers/c_precopy.c)
target_link_options(c_precopy PRIVATE -static)
godwit_test(cr_precopy_test
  SOURCES ${CMAKE_CURRENT_SOURCE_DIR}/cr_precopy_test.cc ${CMAKE_CURRENT_SOURCE_DIR}/cr_util.cc
  LIBS godwit_dump godwit_restore godwit_files godwit_images godwit_common
       nlohmann_json::nlohmann_json)
add_dependencies(cr_precopy_test c_precopy)

# Lazy restore (restore/lazy.h): faults from several threads, fork/mremap/madvise/munmap while
# pages are owed, kernel reads of owed pages, a killed process, damaged pages.
godwit_helper(lazy_mem ${CMAKE_CURRENT_SOURCE_DIR}/helpers/lazy_mem.c Threads::Threads)
godwit_test(cr_lazy_test
  SOURCES ${CMAKE_CURRENT_SOURCE_DIR}/cr_lazy_test.cc ${CMAKE_CURRENT_SOURCE_DIR}/cr_util.cc
  LIBS godwit_dump godwit_common nlohmann_json::nlohmann_json)
godwit_helper(lazy_churn ${CMAKE_CURRENT_SOURCE_DIR}/helpers/lazy_churn.c)
add_dependencies(cr_lazy_test lazy_mem lazy_churn)
