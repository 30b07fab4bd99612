# duet serve: libmicrohttpd, and the dashboard page embedded as a C array.
# Included by CMakeLists.txt after the duet-bin target is defined.
pkg_check_modules(MICROHTTPD REQUIRED IMPORTED_TARGET libmicrohttpd)
target_link_libraries(duet-bin PRIVATE PkgConfig::MICROHTTPD)

set(duet_dashboard_c ${CMAKE_BINARY_DIR}/generated/dashboard_html.c)
add_custom_command(
  OUTPUT ${duet_dashboard_c}
  COMMAND ${CMAKE_COMMAND} -DIN=${CMAKE_SOURCE_DIR}/tools/dashboard.html
          -DOUT=${duet_dashboard_c} -DNAME=duet_dashboard_html
          -P ${CMAKE_SOURCE_DIR}/tools/embed_file.cmake
  DEPENDS ${CMAKE_SOURCE_DIR}/tools/dashboard.html ${CMAKE_SOURCE_DIR}/tools/embed_file.cmake
  COMMENT "Embedding tools/dashboard.html")
target_sources(duet-bin PRIVATE ${duet_dashboard_c})
