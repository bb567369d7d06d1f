// emu/lrn.cpp — kernels/lrn.cu compiled for the CPU emulator (feature `emu`).
#include "../lrn.cu"
EIA_EMU_FAMILY(lrn)
