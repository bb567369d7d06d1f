// emu/softmax.cpp — kernels/softmax.cu compiled for the CPU emulator (feature `emu`).
#include "../softmax.cu"
EIA_EMU_FAMILY(softmax)
