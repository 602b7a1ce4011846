/* Test-side PKI and OCSP response builder. Not written yet. */
#ifndef OA_TESTPKI_H
#define OA_TESTPKI_H
#endif
