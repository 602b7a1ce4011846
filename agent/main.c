#include <stdio.h>
int main(void) { puts("ocsp-agent: not built yet"); return 1; }
