# fd kinds (files/): the kind table, per-kind round trips through FdDumper/FdRestorer, sockets.
godwit_test(files_table_test
  SOURCES ${CMAKE_CURRENT_SOURCE_DIR}/files_table_test.cc
  LIBS godwit_files)
godwit_test(files_kinds_test
  SOURCES ${CMAKE_CURRENT_SOURCE_DIR}/files_kinds_test.cc
  LIBS godwit_files)
target_include_directories(files_kinds_test PRIVATE ${CMAKE_SOURCE_DIR})
