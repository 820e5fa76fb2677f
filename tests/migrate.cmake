# Live migration (issue 10): the stream, the daemon, and whole migrations between namespace hosts.
godwit_test(migrate_wire_test
  SOURCES ${CMAKE_CURRENT_SOURCE_DIR}/migrate_wire_test.cc
  LIBS godwit_migrate)
target_compile_definitions(migrate_wire_test PRIVATE GODWIT_SOURCE_DIR="${CMAKE_SOURCE_DIR}")
godwit_helper(mig_dirty ${CMAKE_CURRENT_SOURCE_DIR}/helpers/mig_dirty.c)
target_link_options(mig_dirty PRIVATE -static)
godwit_test(migrate_test
  SOURCES ${CMAKE_CURRENT_SOURCE_DIR}/migrate_test.cc
  LIBS godwit_migrate godwit_container godwit_runtime nlohmann_json::nlohmann_json Threads::Threads)
target_compile_definitions(migrate_test PRIVATE GODWIT_SCRIPTS="${CMAKE_SOURCE_DIR}/scripts"
                           GODWITD_BIN="$<TARGET_FILE:godwitd>")
add_dependencies(migrate_test godwitd mig_dirty)
add_executable(migrate_bench ${PROJECT_SOURCE_DIR}/bench/migrate_bench.cc)
target_link_libraries(migrate_bench PRIVATE godwit_migrate godwit_common)
set_target_properties(migrate_bench PROPERTIES RUNTIME_OUTPUT_DIRECTORY ${PROJECT_BINARY_DIR}/bench)
