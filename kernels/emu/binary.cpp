// emu/binary.cpp — kernels/binary.cu compiled for the CPU emulator (feature `emu`).
#include "../binary.cu"
EIA_EMU_FAMILY(binary)
