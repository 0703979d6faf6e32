#ifndef CATENA_CXXHASH_SHIM_H
#define CATENA_CXXHASH_SHIM_H
#include <xxhash.h>
#endif
