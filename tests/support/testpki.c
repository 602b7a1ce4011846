#include "testpki.h"
typedef int oa_testpki_placeholder_t;
