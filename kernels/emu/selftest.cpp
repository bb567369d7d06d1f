// emu/selftest.cpp — the emulator's self-test kernels (selftest.cu) for the CPU.
#include "selftest.cu"
EIA_EMU_FAMILY(selftest)
