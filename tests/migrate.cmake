# Live migration (issue 10): the stream, the daemon, and whole migrations between namespace hosts.
godwit_test(migrate_wire_test
  SOURCES ${CMAKE_CURRENT_SOURCE_DIR}/migrate_wire_test.cc
  LIBS godwit_migrate)
target_compile_definitions(migrate_wire_test PRIVATE GODWIT_SOURCE_DIR="${CMAKE_SOURCE_DIR}")
godwit_helper(mig_dirty ${CMAKE_CURRENT_SOURCE_DIR}/helpers/mig_dirty.c)
target_link_options(mig_dirty PRIVATE -static)
