# cmake/vulkan.cmake — the Vulkan backend: host sources, and the compute
# shaders compiled by glslc into SPIR-V that is embedded in the binary.
#
# Included by CMakeLists.txt when glslc is found, after duet_sources and
# duet_include_dirs are set. Adds to duet_sources, duet_include_dirs,
# duet_extra_defs and duet_extra_libs. The Vulkan loader is dlopen()ed at
# run time (never -lvulkan), so only the headers are needed here.

find_path(DUET_VULKAN_INCLUDE_DIR vulkan/vulkan.h)
if(NOT DUET_VULKAN_INCLUDE_DIR)
  if(DUET_VULKAN STREQUAL "ON")
    message(FATAL_ERROR "DUET_VULKAN=ON but <vulkan/vulkan.h> was not found (apt-get install libvulkan-dev)")
  endif()
  message(STATUS "duet: Vulkan backend: OFF (no <vulkan/vulkan.h>)")
  return()
endif()
find_program(SPIRV_VAL spirv-val)

file(GLOB duet_vulkan_sources CONFIGURE_DEPENDS ${CMAKE_SOURCE_DIR}/backends/vulkan/*.c)
file(GLOB duet_shader_sources CONFIGURE_DEPENDS ${CMAKE_SOURCE_DIR}/shaders/*.comp)

set(duet_spirv_dir ${CMAKE_BINARY_DIR}/shaders)
file(MAKE_DIRECTORY ${duet_spirv_dir})
set(duet_spirv_files "")
foreach(comp ${duet_shader_sources})
  get_filename_component(name ${comp} NAME_WE)
  set(spv ${duet_spirv_dir}/${name}.spv)
  # glslc writes a make-style depfile naming every #include, so editing a
  # shared .glsl recompiles the shaders that use it.
  set(validate "")
  if(SPIRV_VAL)
    set(validate COMMAND ${SPIRV_VAL} --target-env vulkan1.2 ${spv})
  endif()
  add_custom_command(
    OUTPUT ${spv}
    COMMAND ${GLSLC} --target-env=vulkan1.2 -O -Werror -I ${CMAKE_SOURCE_DIR}/shaders
            -MD -MF ${spv}.d -o ${spv} ${comp}
    ${validate}
    DEPENDS ${comp}
    DEPFILE ${spv}.d
    COMMENT "glslc ${name}.comp"
    VERBATIM)
  list(APPEND duet_spirv_files ${spv})
endforeach()

# One generated C file holds every shader as a uint32_t array plus a table
# by name (shaders/embed_spirv.cmake writes it; no xxd needed).
set(duet_spirv_c ${CMAKE_BINARY_DIR}/duet_spirv.c)
add_custom_command(
  OUTPUT ${duet_spirv_c}
  COMMAND ${CMAKE_COMMAND} -DOUT=${duet_spirv_c} "-DINPUTS=${duet_spirv_files}"
          -P ${CMAKE_SOURCE_DIR}/shaders/embed_spirv.cmake
  DEPENDS ${duet_spirv_files} ${CMAKE_SOURCE_DIR}/shaders/embed_spirv.cmake
  COMMENT "embedding SPIR-V into duet_spirv.c"
  VERBATIM)
# Two libraries (duet, duet_testing) compile duet_spirv.c. With the
# commands above only in their sources, each would get its own copy of the
# rules and a parallel build would run glslc twice on one .spv at once (one
# run's spirv-val then reads the other's half-written file). One target
# owns them; the libraries wait for it.
add_custom_target(duet_spirv DEPENDS ${duet_spirv_c})
list(APPEND duet_extra_deps duet_spirv)

list(APPEND duet_sources ${duet_vulkan_sources} ${duet_spirv_c})
list(APPEND duet_include_dirs ${CMAKE_SOURCE_DIR}/backends/vulkan ${DUET_VULKAN_INCLUDE_DIR})
list(APPEND duet_extra_defs DUET_HAVE_VULKAN=1)
list(APPEND duet_extra_libs dl)
set(DUET_HAVE_VULKAN ON)
list(LENGTH duet_shader_sources duet_n_shaders)
message(STATUS "duet: Vulkan backend: ON (${duet_n_shaders} shaders, ${GLSLC})")
