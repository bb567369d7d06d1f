// emu/gemm.cpp — kernels/gemm.cu compiled for the CPU emulator (feature `emu`).
#include "../gemm.cu"
EIA_EMU_FAMILY(gemm)
