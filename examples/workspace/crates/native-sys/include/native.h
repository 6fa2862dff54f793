#ifndef NATIVE_H
#define NATIVE_H

#include <stddef.h>
#include <stdint.h>

#define NATIVE_VERSION "1.2.3"

uint32_t native_checksum(const uint8_t *data, size_t len);
const char *native_version(void);

#endif
