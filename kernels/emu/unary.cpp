// emu/unary.cpp — kernels/unary.cu compiled for the CPU emulator (feature `emu`).
#include "../unary.cu"
EIA_EMU_FAMILY(unary)
