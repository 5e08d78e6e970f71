# Precompiled headers. The translation units that include libtorch share one precompiled
# cmake/torch_pch.h, and the command-line front ends share one of cmake/cli11_pch.h: a header that
# costs 6-20 s of CPU per file is parsed once per build. Each precompiled header is built by a small
# holder target; users take it with REUSE_FROM, which requires their compile flags to match the
# holder's (same warnings, definitions the header reads, debug level). CMake compiles users with
# -Winvalid-pch, so with -Werror a mismatch is a build error rather than a silent slowdown.
#
# -DDMOE_PCH=OFF builds without them, which checks that every source includes what it uses.
option(DMOE_PCH "Precompile the libtorch and CLI11 headers (cmake/Pch.cmake)" ON)

# Lets ccache cache files compiled with a precompiled header (it then hashes the header's .gch).
set(DMOE_CCACHE_PCH_FLAGS "")
if(CCACHE_PROGRAM)
  set(DMOE_CCACHE_PCH_FLAGS -fpch-preprocess)
endif()

function(dmoe_add_pch_holder name header)
  add_library(${name} OBJECT ${PROJECT_SOURCE_DIR}/cmake/pch_holder.cc)
  target_link_libraries(${name} PRIVATE ${ARGN})
  target_precompile_headers(${name} PRIVATE ${header})
  target_compile_options(${name} PRIVATE ${DMOE_CCACHE_PCH_FLAGS})
  dmoe_add_warnings(${name})
endfunction()

# dmoe_use_pch(HOLDER TARGET...): the targets that exist compile with HOLDER's precompiled header.
function(dmoe_use_pch holder)
  if(NOT DMOE_PCH OR NOT TARGET ${holder})
    return()
  endif()
  foreach(target ${ARGN})
    if(TARGET ${target})
      target_precompile_headers(${target} REUSE_FROM ${holder})
      target_compile_options(${target} PRIVATE ${DMOE_CCACHE_PCH_FLAGS})
    endif()
  endforeach()
endfunction()
