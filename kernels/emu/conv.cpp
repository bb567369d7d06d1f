// emu/conv.cpp — kernels/conv.cu compiled for the CPU emulator (feature `emu`).
#include "../conv.cu"
EIA_EMU_FAMILY(conv)
