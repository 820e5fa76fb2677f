godwit_test(cli_test SOURCES ${CMAKE_CURRENT_SOURCE_DIR}/cli_test.cc)
