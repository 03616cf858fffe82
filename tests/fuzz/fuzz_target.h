/*
 * fuzz_target.h — the one entry point every fuzz target defines.
 *
 * A target is a .c file defining LLVMFuzzerTestOneInput. Built with clang it
 * links against libFuzzer (-fsanitize=fuzzer) for real fuzzing; built with
 * any compiler it links against standalone_main.c, which replays a corpus
 * directory so CI runs every seed under the sanitizers of the build.
 */
#ifndef DUN_FUZZ_TARGET_H
#define DUN_FUZZ_TARGET_H

#include <stddef.h>
#include <stdint.h>

/* Run one input. Must not keep data past the call; returns 0. */
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#endif
