# fd kinds (files/): the kind table, per-kind round trips through FdDumper/FdRestorer, sockets.
godwit_test(files_table_test
  SOURCES ${CMAKE_CURRENT_SOURCE_DIR}/files_table_test.cc
  LIBS godwit_files)
godwit_test(files_kinds_test
  SOURCES ${CMAKE_CURRENT_SOURCE_DIR}/files_kinds_test.cc
  LIBS godwit_files)
target_include_directories(files_kinds_test PRIVATE ${CMAKE_SOURCE_DIR})
godwit_test(files_unix_test
  SOURCES ${CMAKE_CURRENT_SOURCE_DIR}/files_unix_test.cc
  LIBS godwit_files)
target_include_directories(files_unix_test PRIVATE ${CMAKE_SOURCE_DIR})
godwit_test(files_inet_test
  SOURCES ${CMAKE_CURRENT_SOURCE_DIR}/files_inet_test.cc
  LIBS godwit_files)
target_include_directories(files_inet_test PRIVATE ${CMAKE_SOURCE_DIR})
godwit_helper(fd_kinds ${CMAKE_CURRENT_SOURCE_DIR}/helpers/fd_kinds.c util)
godwit_test(files_zdtm_test
  SOURCES ${CMAKE_CURRENT_SOURCE_DIR}/files_zdtm_test.cc ${CMAKE_CURRENT_SOURCE_DIR}/cr_util.cc
  LIBS godwit_files godwit_images godwit_common)
add_dependencies(files_zdtm_test fd_kinds)
