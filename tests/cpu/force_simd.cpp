// Compiled by CTest with -DISM_SIMD=<something this target cannot do>; the
// test passes only if the compiler stops with the selector's #error.
#include "ism/cpu/simd/select.hpp"
int main() { return ism::cpu::simd::Native::width; }
