// The precompiled header of the torch translation units (cmake/Pch.cmake): the libtorch headers
// most of them include, parsed once per build instead of once per file (ATen/ATen.h and torch/nn
// cost 15-20 s of CPU each time). The build force-includes it; it is no part of any module's
// interface, and every source still includes what it uses (configure with -DDMOE_PCH=OFF to check
// that it compiles without).
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/nn/module.h>
#include <torch/nn/modules/linear.h>
#include <torch/nn/modules/normalization.h>
#include <torch/nn/pimpl.h>
#include <torch/utils.h>
