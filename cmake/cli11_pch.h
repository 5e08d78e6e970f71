// The precompiled header of the command-line front ends (cmake/Pch.cmake). Debian's CLI11 (2.1) is
// header-only with no precompiled mode, and CLI/CLI.hpp costs about 6 s of CPU in every file that
// includes it; this parses it once per build. Sources still include what they use.
#include <CLI/CLI.hpp>
