// emu/pool.cpp — kernels/pool.cu compiled for the CPU emulator (feature `emu`).
#include "../pool.cu"
EIA_EMU_FAMILY(pool)
