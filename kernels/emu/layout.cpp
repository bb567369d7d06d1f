// emu/layout.cpp — kernels/layout.cu compiled for the CPU emulator (feature `emu`).
#include "../layout.cu"
EIA_EMU_FAMILY(layout)
