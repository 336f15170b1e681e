# ONNX Runtime's C API headers, for the native ONNX executor (csrc/src/onnx_executor.cc).
#
# The executor loads the onnxruntime library that the onnxruntime Python package ships at run
# time, so building it needs only the headers, which that package does not carry. They are taken
# from, in order: AIARCH_ONNXRUNTIME_INCLUDE_DIR; a system install (Debian's libonnxruntime-dev);
# Debian's libonnxruntime-dev package, downloaded once into the build folder and checked against
# its published SHA-256 (headers only: nothing is installed). Any header release with C API
# version >= 21 works with any newer library. Without headers the executor is compiled out and
# ONNX models run through the Python package, as before.
#
# Sets AIARCH_ONNXRUNTIME_INCLUDE (empty when not found).

set(AIARCH_ONNXRUNTIME_INCLUDE_DIR "" CACHE PATH "Folder holding onnxruntime_c_api.h")
set(AIARCH_ONNXRUNTIME_HEADERS_URL
    "http://deb.debian.org/debian/pool/main/o/onnxruntime/libonnxruntime-dev_1.21.0+dfsg-1_amd64.deb"
    CACHE STRING "Debian package to take ONNX Runtime's C API headers from")
set(AIARCH_ONNXRUNTIME_HEADERS_SHA256
    "14f7d959d5deacbcf1504830d4189f91fc67382b399ed9ae9d3aa9c4050ced08"
    CACHE STRING "SHA-256 of AIARCH_ONNXRUNTIME_HEADERS_URL")
option(AIARCH_FETCH_ONNXRUNTIME_HEADERS "Download ONNX Runtime's C API headers when not found" ON)

set(AIARCH_ONNXRUNTIME_INCLUDE "")
find_path(_aiarch_ort_include onnxruntime_c_api.h
  HINTS "${AIARCH_ONNXRUNTIME_INCLUDE_DIR}"
  PATH_SUFFIXES onnxruntime include/onnxruntime)
if(_aiarch_ort_include)
  set(AIARCH_ONNXRUNTIME_INCLUDE "${_aiarch_ort_include}")
elseif(AIARCH_FETCH_ONNXRUNTIME_HEADERS)
  set(_dir "${CMAKE_BINARY_DIR}/_deps/onnxruntime-headers")
  set(_header "${_dir}/usr/include/onnxruntime/onnxruntime_c_api.h")
  if(NOT EXISTS "${_header}")
    message(STATUS "aiarch: fetching ONNX Runtime's C API headers (${AIARCH_ONNXRUNTIME_HEADERS_URL})")
    file(MAKE_DIRECTORY "${_dir}")
    file(DOWNLOAD "${AIARCH_ONNXRUNTIME_HEADERS_URL}" "${_dir}/headers.deb"
      EXPECTED_HASH SHA256=${AIARCH_ONNXRUNTIME_HEADERS_SHA256}
      TIMEOUT 120 STATUS _status)
    list(GET _status 0 _code)
    if(_code EQUAL 0)
      # A .deb is an ar archive holding data.tar.xz; CMake's tar reads both.
      execute_process(COMMAND "${CMAKE_COMMAND}" -E tar xf headers.deb
        WORKING_DIRECTORY "${_dir}" RESULT_VARIABLE _ar)
      if(_ar EQUAL 0)
        execute_process(COMMAND "${CMAKE_COMMAND}" -E tar xf data.tar.xz
          WORKING_DIRECTORY "${_dir}" RESULT_VARIABLE _tar)
      endif()
    else()
      list(GET _status 1 _why)
      message(STATUS "aiarch: download failed: ${_why}")
    endif()
  endif()
  if(EXISTS "${_header}")
    set(AIARCH_ONNXRUNTIME_INCLUDE "${_dir}/usr/include/onnxruntime")
  endif()
endif()

if(AIARCH_ONNXRUNTIME_INCLUDE)
  message(STATUS "aiarch: native ONNX Runtime executor: headers in ${AIARCH_ONNXRUNTIME_INCLUDE}")
else()
  message(STATUS "aiarch: ONNX Runtime C API headers not found; the native ONNX executor is not built")
endif()
