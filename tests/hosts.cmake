# Hosts on one machine (issue 10): per-host cgroup parents.
godwit_test(cgroup_parent_test
  SOURCES ${CMAKE_CURRENT_SOURCE_DIR}/cgroup_parent_test.cc
  LIBS godwit_container godwit_runtime nlohmann_json::nlohmann_json)
