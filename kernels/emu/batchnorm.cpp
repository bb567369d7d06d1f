// emu/batchnorm.cpp — kernels/batchnorm.cu compiled for the CPU emulator (feature `emu`).
#include "../batchnorm.cu"
EIA_EMU_FAMILY(batchnorm)
