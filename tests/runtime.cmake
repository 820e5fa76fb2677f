# The container runtime: spec parsing (fast, no kernel) and real containers (root).
godwit_test(runtime_test
  SOURCES ${CMAKE_CURRENT_SOURCE_DIR}/runtime_test.cc ${CMAKE_CURRENT_SOURCE_DIR}/runtime_spec_test.cc
          ${CMAKE_CURRENT_SOURCE_DIR}/runtime_cgroup_test.cc
  LIBS godwit_runtime)
