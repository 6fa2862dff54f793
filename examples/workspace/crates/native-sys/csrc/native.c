#include "native.h"

#ifndef NATIVE_SEED
#error "NATIVE_SEED is defined by build.rs"
#endif

uint32_t native_checksum(const uint8_t *data, size_t len) {
    uint32_t h = NATIVE_SEED;
    for (size_t i = 0; i < len; i++) {
        h = h * 31u + data[i];
    }
    return h;
}

const char *native_version(void) { return NATIVE_VERSION; }
