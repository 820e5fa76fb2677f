godwit_test(cli_test SOURCES ${CMAKE_CURRENT_SOURCE_DIR}/cli_test.cc)
# The everyday tooling (issue 12): logs, exec flags, ps, --json, exit codes, help, progress.
godwit_test(tooling_test
  SOURCES ${CMAKE_CURRENT_SOURCE_DIR}/tooling_test.cc
  LIBS godwit_container godwit_runtime nlohmann_json::nlohmann_json)
